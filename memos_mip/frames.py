"""Same-host delivery of a subscription: its SubscribeResponse messages as frames on a Unix stream socket,
which the daemon writes and the client reads (protos/memos/v1/store.proto, LocalDelivery).

    frame = length (4 bytes, big-endian) + an encoded SubscribeResponse (events, or a heartbeat)

The daemon closes the socket when the subscription ends; the Subscribe call then ends with its status.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct(">I")
# The largest frame a reader accepts: the largest gRPC message either side allows (a batch of events fits).
MAX_FRAME = 64 * 1024 * 1024


def frame(message: bytes) -> bytes:
    """One frame: the message behind its length."""
    return HEADER.pack(len(message)) + message


def frame_length(header: bytes) -> int:
    """The length a frame's header announces; ValueError past MAX_FRAME (a daemon never writes one)."""
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ValueError(f"a frame of {length} bytes announced, more than the {MAX_FRAME} a message may hold")
    return length
