"""BM25 full-text search over plaintext cubes with SQLite FTS5."""

from __future__ import annotations

import re
import sqlite3
import threading

from memosd.cube import CubeFilter, MemoryKind
from memosd.errors import InvalidArgument
from memosd.storage.sqlite.filters import filter_sql
from memosd.vault.rows import COLUMNS, row_dict

_WORD = re.compile(r"\w+", re.UNICODE)
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
_CUBE_COLUMNS = ", ".join(f"c.{c.strip()}" for c in COLUMNS.split(","))


def words(text: str) -> list[str]:
    """The query's words to search for: lower-cased, deduplicated, without stopwords (unless that is all)."""
    found = list(dict.fromkeys(w.lower() for w in _WORD.findall(text)))
    return ([w for w in found if w not in STOPWORDS] or found)[:MAX_TERMS]


def _any(terms) -> str:
    return " OR ".join(f'"{t}"' for t in terms)


class FullText:
    """Ranks cubes by BM25; remembers how common each query word is (recounted as the vault grows)."""

    def __init__(self, *, large_vault: int = LARGE_VAULT, common_share: float = COMMON_SHARE):
        self.large_vault, self.common_share = large_vault, common_share
        self._docs: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def search(self, conn: sqlite3.Connection, query: str, fts_syntax: bool, f: CubeFilter, now: float,
               limit: int) -> list[tuple[dict, float]]:
        """Rows and BM25 scores (higher is better) of the best `limit` matches."""
        if fts_syntax:
            return _checked(query, lambda: _ranked(conn, query, f, now, limit))
        terms = words(query)
        if not terms:
            return []
        (size,) = conn.execute("SELECT coalesce(max(seq), 0) FROM cubes").fetchone()
        if size < self.large_vault or len(terms) == 1:
            return _ranked(conn, _any(terms), f, now, limit)
        # The rarest words decide what matches, as long as the cubes they match stay within a budget;
        # the others (common in this vault) only add to those cubes' scores.
        counts = {t: self._doc_count(conn, t, size) for t in terms}
        rare: list[str] = []
        budget, used = max(self.common_share * size, MIN_BUDGET), 0
        for t in sorted(terms, key=counts.__getitem__):
            if rare and used + counts[t] > budget:
                break  # the rarest word always decides, even when it is common itself
            rare.append(t)
            used += counts[t]
        if len(rare) == len(terms):
            return _ranked(conn, _any(terms), f, now, limit)
        hits = _ranked(conn, f"({_any(rare)}) AND ({_any(terms)})", f, now, limit)
        if len(hits) < limit:
            seen = {row["seq"] for row, _ in hits}
            more = _ranked(conn, _any(terms), f, now, limit + len(hits))
            hits += [(row, score) for row, score in more if row["seq"] not in seen][: limit - len(hits)]
        return hits

    def _doc_count(self, conn: sqlite3.Connection, term: str, size: int) -> int:
        with self._lock:
            known = self._docs.get(term)
        if known is not None and known[1] * 1.1 >= size:
            return known[0]
        (count,) = conn.execute("SELECT count(*) FROM cubes_fts WHERE cubes_fts MATCH ?", (f'"{term}"',)).fetchone()
        with self._lock:
            if len(self._docs) > 50_000:
                self._docs.clear()
            self._docs[term] = (count, size)
        return count


def _ranked(conn: sqlite3.Connection, match: str, f: CubeFilter, now: float, limit: int) -> list[tuple[dict, float]]:
    """The best `limit` matches passing the filter. Ranking (bm25 for every match) is the cost: when
    the caller narrowed the search (namespace, tags, kinds, time), join first so that only cubes
    passing the filter are scored; otherwise rank inside FTS5 and join only the best candidates, which
    usually pass (live cubes, the caller's readable scope); if too few do, join first after all."""
    where, params = filter_sql(f, now)
    keep = f"c.kind = {int(MemoryKind.PLAINTEXT)} AND {where}"
    narrowed = bool(f.namespace_prefix or f.tags or f.kinds or f.created_after is not None
                    or f.created_before is not None)
    if not narrowed:
        depth = max(limit * 4, 64)
        sql = (f"SELECT {_CUBE_COLUMNS}, r.rank FROM (SELECT rowid, rank FROM cubes_fts WHERE cubes_fts MATCH ?"
               f" ORDER BY rank LIMIT ?) r JOIN cubes c ON c.seq = r.rowid WHERE {keep} ORDER BY r.rank LIMIT ?")
        rows = conn.execute(sql, [match, depth, *params, limit]).fetchall()
        if len(rows) >= limit or len(rows) == conn.execute(
                "SELECT count(*) FROM (SELECT rowid FROM cubes_fts WHERE cubes_fts MATCH ? LIMIT ?)", (match, depth)
        ).fetchone()[0]:
            return [(row_dict(r[:-1]), -r[-1]) for r in rows]
    sql = (f"SELECT {_CUBE_COLUMNS}, bm25(cubes_fts) AS rank FROM cubes_fts JOIN cubes c ON c.seq = cubes_fts.rowid"
           f" WHERE cubes_fts MATCH ? AND {keep} ORDER BY rank LIMIT ?")
    return [(row_dict(r[:-1]), -r[-1]) for r in conn.execute(sql, [match, *params, limit]).fetchall()]


def _checked(query: str, run):
    try:
        return run()
    except sqlite3.OperationalError as exc:
        # The statements are fixed; only the MATCH expression varies, so a parse failure is the user's.
        if "database" in str(exc) or "disk" in str(exc):
            raise
        raise InvalidArgument(f"the FTS5 query cannot be read: {explain_fts_error(query, str(exc))}; fix it, or"
                              " search without --fts (plain words)") from None


_FTS_TOKEN = re.compile(r'"(?:[^"]|"")*"?|[()]|[^\s()"]+')
_OPERATORS = ("AND", "OR", "NOT")


def explain_fts_error(query: str, sqlite_message: str) -> str:
    """What is wrong with an FTS5 query, in the words of its syntax rather than SQLite's parser."""
    tokens = _FTS_TOKEN.findall(query)
    depth = 0
    for tok in tokens:
        if tok.startswith('"') and (len(tok) == 1 or not tok.endswith('"') or tok.endswith('""') and len(tok) % 2):
            return 'a phrase is not closed: every " needs a closing "'
        depth += (tok == "(") - (tok == ")")
        if depth < 0:
            return 'a ")" has no "(" before it'
    if depth > 0:
        return 'a "(" is not closed with ")"'
    for before, tok, after in zip([None, *tokens], tokens, [*tokens[1:], None]):
        if tok in _OPERATORS:
            if before is None or before == "(" or before in _OPERATORS:
                return f'"{tok}" needs a term before it'
            if after is None or after == ")" or after in _OPERATORS:
                return f'"{tok}" needs a term after it'
        if tok == "(" and after == ")":
            return '"()" holds no terms'
    column = re.search(r"no such column: (\S+)", sqlite_message)
    if column:
        return (f'"{column[1]}" reads as a column name (a word before ":" or after "-"); put words with'
                ' punctuation in "quotes"')
    near = re.search(r'near "(.*)"', sqlite_message)
    if near and near[1]:
        return (f'it cannot be read from "{near[1][:40]}" on (AND, OR, NOT go between terms; put punctuation'
                ' in "quotes")')
    return "it ends before an expression is complete"
