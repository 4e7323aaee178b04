"""Same-host delivery of a subscription: the frames the daemon writes on a socket of the subscription's own
(memos_mip.frames), read as the messages of a response stream (memos_client.steps.Next): next() for
MemosClient, read() for AsyncMemosClient. The socket ends when the subscription does; the Subscribe call's
status then says why."""

from __future__ import annotations

import asyncio
import socket

import grpc

from memos_client.errors import InternalError
from memos_client.fdpass import take, unix_path
from memos_mip.frames import HEADER, frame_length
from memos_mip.v1 import store_pb2

_BUFFER = 256 * 1024


def collect(target: str, local: store_pb2.LocalDelivery) -> LocalFrames:
    """The subscription's socket, taken from the descriptor socket beside the daemon's gRPC socket;
    memos_client.FailedPrecondition when it cannot be reached (another host or mount namespace)."""
    return LocalFrames(take(unix_path(target).with_name(local.exchange_socket), local.ticket))


def _message(body: bytes) -> store_pb2.SubscribeResponse:
    try:
        return store_pb2.SubscribeResponse.FromString(body)
    except Exception as exc:  # DecodeError: a daemon writes only whole, encoded messages
        raise InternalError(f"the daemon's same-host subscription socket carried an unreadable frame: {exc}") from None


def _length(header: bytes) -> int:
    try:
        return frame_length(header)
    except ValueError as exc:
        raise InternalError(f"the daemon's same-host subscription socket: {exc}") from None


class LocalFrames:
    """The messages on a same-host subscription's socket, until the daemon closes it (a frame cut short, as a
    daemon killed mid-write leaves it, ends them too: the call's status tells the rest)."""

    def __init__(self, fd: int):
        self._sock = socket.socket(fileno=fd)
        self._file = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    def __iter__(self) -> LocalFrames:
        return self

    def __next__(self) -> store_pb2.SubscribeResponse:
        if self._file is None:
            self._file = self._sock.makefile("rb", buffering=_BUFFER)
        try:
            header = self._file.read(HEADER.size)
            if len(header) < HEADER.size:
                raise StopIteration
            length = _length(header)
            body = self._file.read(length)
        except (OSError, ValueError):  # closed (by close(), from another thread) or reset
            raise StopIteration from None
        if len(body) < length:
            raise StopIteration
        return _message(body)

    async def read(self):
        """The next message, or grpc.aio.EOF once the socket is over."""
        if self._reader is None:
            self._sock.setblocking(False)
            self._reader, self._writer = await asyncio.open_unix_connection(sock=self._sock, limit=_BUFFER)
        try:
            length = _length(await self._reader.readexactly(HEADER.size))
            return _message(await self._reader.readexactly(length))
        except (asyncio.IncompleteReadError, OSError):
            return grpc.aio.EOF

    def interrupt(self) -> None:
        """End a read blocked on the socket, from any thread: it returns the end (close() then, from the
        reading side, frees the socket)."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # closed already, or not connected any more

    def close(self) -> None:
        """Close the socket (the daemon's next write then fails, ending the subscription)."""
        if self._writer is not None:
            self._writer.close()
            return
        self.interrupt()
        if self._file is not None:
            self._file.close()
        self._sock.close()
