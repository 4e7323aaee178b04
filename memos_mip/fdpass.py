"""Same-host transfers: the descriptor socket's protocol, which the daemon serves and the client speaks.

The daemon answers OpenLocal (over gRPC, with the usual token and grants) with a one-time ticket; the client
presents it on the descriptor socket, a SOCK_SEQPACKET Unix socket beside the gRPC one, and receives the
blob's read-only descriptor (SCM_RIGHTS). One request and one reply per connection:

    client -> daemon   b"T" + ticket (16 bytes)
    daemon -> client   b"K" with the descriptor attached, or b"E" + a UTF-8 message
"""

from __future__ import annotations

from pathlib import Path

TAKE, OK, ERROR = b"T", b"K", b"E"
TICKET_BYTES = 16
# A reply is one message: the status byte and, for an error, a short text.
MAX_REPLY = 4096


def exchange_path(socket_path: Path) -> Path:
    """Where the daemon listening on socket_path keeps its descriptor socket."""
    return socket_path.with_name(socket_path.name + ".fd")
