"""Bytes to upload, as the caller's buffers, and their chunks at the protocol's limit: the daemon writes the
payloads it builds the same way clients do."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

# Every message carries at most this much data (the protocol's limit), far below gRPC's 4 MiB default.
CHUNK_BYTES = 1 << 20


class Payload:
    """Bytes to upload, kept as the caller's buffers (tensors' memory, a header...) without joining them."""

    def __init__(self, parts: Sequence):
        self.parts = [memoryview(p).cast("B") for p in parts]
        self.size = sum(len(p) for p in self.parts)
        self._sha256: str | None = None

    @classmethod
    def of(cls, data) -> Payload:
        return data if isinstance(data, Payload) else cls([data])

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            h = hashlib.sha256()
            for part in self.parts:
                step = 16 << 20
                for start in range(0, len(part), step):
                    h.update(part[start:start + step])
            self._sha256 = h.hexdigest()
        return self._sha256

    def chunks(self, offset: int = 0) -> Iterator[tuple[int, memoryview | bytes]]:
        """(offset, data) pieces of at most CHUNK_BYTES from `offset` to the end: views of the parts where a
        piece lies within one, joined copies where it spans two."""
        position, pending, pending_size = 0, [], 0
        for part in self.parts:
            end = position + len(part)
            if end <= offset:
                position = end
                continue
            view = part[max(offset - position, 0):]
            position = end
            while view:
                take = min(CHUNK_BYTES - pending_size, len(view))
                pending.append(view[:take])
                pending_size += take
                view = view[take:]
                if pending_size == CHUNK_BYTES:
                    yield offset, b"".join(pending) if len(pending) > 1 else pending[0]
                    offset += pending_size
                    pending, pending_size = [], 0
        if pending_size:
            yield offset, b"".join(pending) if len(pending) > 1 else pending[0]
