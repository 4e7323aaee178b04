"""BM25 full-text search over plaintext cubes with SQLite FTS5."""

from __future__ import annotations

import re
import sqlite3

from memosd.cube import CubeFilter, MemoryKind
from memosd.errors import InvalidArgument
from memosd.vault.query import filter_sql
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


def plain_query(text: str) -> str | None:
    """An FTS5 expression matching any of the query's words; None if it has no words."""
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(text)))
    content = [w for w in words if w not in STOPWORDS] or words
    if not content:
        return None
    return " OR ".join(f'"{w}"' for w in content[:MAX_TERMS])


def bm25_search(
    conn: sqlite3.Connection, match: str, f: CubeFilter, now: float, limit: int
) -> list[tuple[dict, float]]:
    """Rows and BM25 scores (higher is better) of the best `limit` matches."""
    where, params = filter_sql(f, now)
    cols = ", ".join(f"c.{c.strip()}" for c in COLUMNS.split(","))
    sql = (
        f"SELECT {cols}, bm25(cubes_fts) AS rank FROM cubes_fts JOIN cubes c ON c.seq = cubes_fts.rowid"
        f" WHERE cubes_fts MATCH ? AND c.kind = {int(MemoryKind.PLAINTEXT)} AND {where}"
        " ORDER BY rank LIMIT ?"
    )
    try:
        rows = conn.execute(sql, [match, *params, limit]).fetchall()
    except sqlite3.OperationalError as exc:
        # The statement is fixed; only the MATCH expression varies, so a parse failure is the user's.
        if "database" in str(exc) or "disk" in str(exc):
            raise
        raise InvalidArgument(
            f"query is not valid FTS5 syntax ({exc}); fix it or search with the plain query syntax"
        ) from None
    return [(row_dict(r[:-1]), -r[-1]) for r in rows]
