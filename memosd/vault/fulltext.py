"""BM25 full-text search over plaintext cubes: which query words decide the matches, ranked by the engine."""

from __future__ import annotations

import threading

from memosd.cube import CubeFilter
from memosd.storage import Conn
from memosd.storage import segment
from memosd.storage.fts5 import FTS_TOKEN

MAX_TERMS = 64
# Function words that match nearly every cube: dropping them from plain queries keeps BM25 fast
# and its ranking about the words that matter. Kept when a query has nothing else.
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had
    has have having he her here hers herself him himself his how i if in into is it its itself just
    me more most my myself no nor not now of off on once only or other our ours ourselves out over
    own same she should so some such than that the their theirs them themselves then there these
    they this those through to too under until up very was we were what when where which while who
    whom why will with would you your yours yourself yourselves""".split()
)
# On vaults this large, the rarest query words (together matching at most COMMON_SHARE of the cubes)
# decide what matches and the commoner ones only add to those cubes' scores, after Elasticsearch's
# "common terms" cut-off: ranking every cube that holds a common word is what makes BM25 slow.
# Smaller vaults, and queries whose words are all rare, are ranked exactly.
LARGE_VAULT = 20_000
COMMON_SHARE = 0.02
MIN_BUDGET = 500


def words(text: str) -> list[str]:
    """The query's words to search for: lower-cased, deduplicated, without stopwords (unless that is all); a
    run of Chinese, Japanese, Thai, ... as its character pairs (memosd.storage.segment)."""
    found = list(dict.fromkeys(w.lower() for w in segment.words(text)))
    return ([w for w in found if w not in STOPWORDS] or found)[:MAX_TERMS]


class FullText:
    """Ranks cubes by BM25; remembers how common each query word is (recounted as the vault grows)."""

    def __init__(self, *, large_vault: int = LARGE_VAULT, common_share: float = COMMON_SHARE):
        self.large_vault, self.common_share = large_vault, common_share
        self._docs: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    async def search(self, db, query: str, fts_syntax: bool, f: CubeFilter, now: float, limit: int,
                     top: int | None = None) -> list[tuple[dict, float]]:
        """Rows and BM25 scores (higher is better) of the best `limit` matches, in one read of the database. With
        top (below limit: hybrid search's lexical side), the best `top` are a BM25 search's for `top` and the rest
        further candidates: on a large vault, the next best of the cubes the cut-off reached, fewer than limit
        when the rarest words match fewer (see the engines' ranked())."""
        return await db.read(lambda conn: self._search(db.sql.fulltext, conn, query, fts_syntax, f, now, limit,
                                                       min(limit, top or limit)))

    def _search(self, fulltext, conn: Conn, query: str, fts_syntax: bool, f: CubeFilter, now: float,
                limit: int, top: int) -> list[tuple[dict, float]]:
        # A caller who may not read everything is ranked with the statistics of what it may read: from the
        # whole vault's, its scores, its order and which of its words decide would tell how common each word
        # is in cubes it may not read.
        scoped = f.scope is not None or f.viewer is not None
        if fts_syntax:
            query = segment.fts_query(query, FTS_TOKEN.findall(query))
            return fulltext.ranked_query(conn, query, f, now, limit, scoped=scoped)
        terms = words(query)
        if not terms:
            return []
        stats = fulltext.scope_stats(conn, terms, f) if scoped else None
        size = stats.docs if stats else fulltext.size(conn)
        if size < self.large_vault or len(terms) == 1:
            return fulltext.ranked(conn, terms, f, now, limit, stats=stats, top=top)
        # The rarest words decide what matches, as long as the cubes they match stay within a budget;
        # the others (common in this vault) only add to those cubes' scores.
        counts = stats.counts if stats else self._doc_counts(fulltext, conn, terms, size)
        rare: list[str] = []
        budget, used = max(self.common_share * size, MIN_BUDGET), 0
        for t in sorted(terms, key=counts.__getitem__):
            if rare and used + counts[t] > budget:
                break  # the rarest word always decides, even when it is common itself
            rare.append(t)
            used += counts[t]
        if len(rare) == len(terms):
            return fulltext.ranked(conn, terms, f, now, limit, stats=stats, top=top)
        hits = fulltext.ranked(conn, terms, f, now, limit, one_of=rare, stats=stats, top=top)
        if len(hits) < top:
            seen = {row["seq"] for row, _ in hits}
            more = fulltext.ranked(conn, terms, f, now, limit + len(hits), stats=stats, top=top + len(hits))
            hits += [(row, score) for row, score in more if row["seq"] not in seen][: limit - len(hits)]
        return hits

    def _doc_counts(self, fulltext, conn: Conn, terms: list[str], size: int) -> dict[str, int]:
        with self._lock:
            known = {t: self._docs.get(t) for t in terms}
        found = {t: k[0] for t, k in known.items() if k is not None and k[1] * 1.1 >= size}
        todo = [t for t in terms if t not in found]
        if todo:
            counted = fulltext.doc_counts(conn, todo)
            with self._lock:
                if len(self._docs) > 50_000:
                    self._docs.clear()
                self._docs.update((t, (counted[t], size)) for t in todo)
            found.update(counted)
        return found
