"""AsyncMemosClient: the asyncio Python client of memosd, with the same methods (the same bodies) as MemosClient."""

from __future__ import annotations

import grpc

from memos_client.channel import aio_channel
from memos_client.client import ClientMethods
from memos_client.steps import AsyncSteps
from memos_client.subscription import AsyncSubscription, _Position
from memos_mip.v1 import governance_pb2 as gpb


class AsyncMemosClient(AsyncSteps, ClientMethods):
    """Talks to memosd at `addr` (else $MEMOS_ADDR, else the default socket; several are failed over in
    order, as by MemosClient) as the agent whose key is `key` (else $MEMOS_KEY, else the default data
    directory's admin key). Use with `async with`.
    Its methods are MemosClient's: each returns an awaitable of what MemosClient's returns, and those
    that iterate (list, audit, watch_job, subscribe) return async iterators."""

    _open_channel = staticmethod(aio_channel)

    def _subscription(self, position: _Position, **options) -> AsyncSubscription:
        return AsyncSubscription(self, position, **options)

    async def close(self) -> None:
        """Close the channels; calls in progress end."""
        for channel in self._members.close():
            await channel.close()

    async def __aenter__(self) -> AsyncMemosClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _stale(self, exc: grpc.RpcError) -> bool:
        """True when a call was refused only for a stale token; the current epoch is then adopted for
        a retry. grpc.aio reports a client stream refused while it was writing a request as INTERNAL
        ("Internal error from Core"), hiding the daemon's status: WhoAmI tells whether the epoch moved on."""
        if self.tokens is None or self.tokens.learn_epoch(exc):
            return self.tokens is not None
        if exc.code() is not grpc.StatusCode.INTERNAL or "memos-error" in dict(exc.trailing_metadata() or ()):
            return False
        try:
            epoch = (await self._gov.WhoAmI(gpb.WhoAmIRequest(), timeout=self.timeout)).policy_epoch
        except grpc.RpcError:
            return False
        if epoch == self.tokens.epoch:
            return False
        self.tokens.adopt_epoch(epoch)
        return True
