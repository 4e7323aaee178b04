"""Same-host delivery of a subscription (LocalDelivery in protos/memos/v1/store.proto): the events go as frames
(memos_mip.frames) on a Unix stream socket whose other end the client collects from the descriptor socket,
not as gRPC messages. One socket write per message instead of gRPC's per-message path, which was a third of
the daemon's CPU per event with many subscribers (#18). The subscription is MemStore's, unchanged: the same
checks, views, bounded queue and guard; only where its messages are written differs."""

from __future__ import annotations

import asyncio
import socket

from memos_mip.frames import frame
from memos_mip.v1 import store_pb2 as pb
from memosd.errors import Unavailable
from memosd.server.fd_exchange import FdExchange

# After the subscription ends, how long the socket may take to hand the client what was written before it is
# cut: a client that stopped reading cannot keep it (and its buffer) open.
CLOSE_GRACE = 5.0


class SameHostStream:
    """One subscription's socket: opened once the subscription is (its first gRPC message names the ticket),
    written to for each message, closed when the subscription ends."""

    def __init__(self, exchange: FdExchange, agent: str):
        self.exchange, self.agent = exchange, agent
        self._writer: asyncio.StreamWriter | None = None

    async def open(self, context) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            ticket = self.exchange.deposit(theirs.detach(), self.agent)  # the exchange owns (and closes) it
            _, self._writer = await asyncio.open_unix_connection(sock=ours)
        except BaseException:
            ours.close()
            raise
        await context.write(pb.SubscribeResponse(local=pb.LocalDelivery(
            ticket=ticket, exchange_socket=self.exchange.path.name,
            ticket_ttl_ms=int(self.exchange.ttl * 1000))).SerializeToString())

    async def send(self, message: bytes) -> None:
        assert self._writer is not None  # MemStore opens the subscription before its first message
        try:
            self._writer.write(frame(message))
            await self._writer.drain()
        except ConnectionError:
            raise Unavailable("the same-host subscription's socket was closed; subscribe again") from None

    def close(self) -> None:
        if self._writer is None:
            return
        transport = self._writer.transport
        transport.close()  # after what is buffered is written
        asyncio.get_running_loop().call_later(CLOSE_GRACE, transport.abort)
