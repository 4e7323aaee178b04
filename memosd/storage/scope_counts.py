"""How many of a caller's readable cubes hold a word, remembered per scope while that scope stays about as large.

Counting a word within a scope reads the index entry of every cube holding it (all of the vault's) and checks each
against the scope: the cost of a search. A count is reused while the scope's own number of cubes with text stays
within a tenth of what it was when counted (idf barely moves), as the whole vault's counts are. What is remembered
and when it is recounted depend only on cubes the scope admits, so the cache tells no caller anything of others.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence

DRIFT = 0.1
MAX_ENTRIES = 50_000


class ScopeCounts:
    def __init__(self) -> None:
        self._known: dict[Hashable, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def counts(self, scope: Hashable, docs: int, words: Sequence[str],
               count: Callable[[list[str]], dict[str, int]]) -> dict[str, int]:
        """Each word's count within the scope (which holds `docs` cubes now): remembered, or count(words) for the
        others."""
        found: dict[str, int] = {}
        with self._lock:
            for w in words:
                known = self._known.get((scope, w))
                if known is not None and abs(docs - known[1]) <= DRIFT * known[1]:
                    found[w] = known[0]
        todo = [w for w in dict.fromkeys(words) if w not in found]
        if todo:
            fresh = count(todo)
            found.update(fresh)
            with self._lock:
                if len(self._known) + len(fresh) > MAX_ENTRIES:
                    self._known.clear()
                self._known.update(((scope, w), (c, docs)) for w, c in fresh.items())
        return found
