"""MemVault's full-text search on SQLite: BM25 ranking with FTS5 under a CubeFilter, and word counts."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence

from memosd.cube import CubeFilter, MemoryKind
from memosd.errors import InvalidArgument
from memosd.storage.fts5 import FIELD_WEIGHTS, column_problem, fts5_syntax_problem
from memosd.storage.sqlite.filters import filter_sql
from memosd.vault.rows import COLUMNS, row_dict

_CUBE_COLUMNS = ", ".join(f"c.{c.strip()}" for c in COLUMNS.split(","))
# The ranking function for `rank`, given with each query (text, context and metadata columns, schema m0009).
_RANK = f"bm25({', '.join(map(str, FIELD_WEIGHTS))})"


def size(conn: sqlite3.Connection) -> int:
    """How large the vault has grown, cheaply: the highest seq a cube was given (deleted ones count)."""
    (found,) = conn.execute("SELECT coalesce(max(seq), 0) FROM cubes").fetchone()
    return found


def doc_count(conn: sqlite3.Connection, word: str) -> int:
    """How many cubes hold the word (in text, search context or metadata), in any state."""
    (count,) = conn.execute("SELECT count(*) FROM cubes_fts WHERE cubes_fts MATCH ?", (_quoted(word),)).fetchone()
    return count


def ranked(conn: sqlite3.Connection, words: Sequence[str], f: CubeFilter, now: float, limit: int, *,
           one_of: Sequence[str] = ()) -> list[tuple[dict, float]]:
    """The best `limit` plaintext cubes passing the filter whose text holds any of the words (and, if one_of is
    given, one of those too), ranked by BM25 over all the words: (row as a dict of rows.COLUMNS, score), higher
    scores first."""
    match = _any(words) if not one_of else f"({_any(one_of)}) AND ({_any(words)})"
    return _ranked(conn, match, f, now, limit)


def ranked_query(conn: sqlite3.Connection, query: str, f: CubeFilter, now: float, limit: int) -> list[tuple[dict, float]]:
    """As ranked(), for a query in this engine's own full-text syntax (FTS5's); InvalidArgument says what is
    wrong with a query that cannot be read."""
    try:
        return _ranked(conn, query, f, now, limit)
    except sqlite3.OperationalError as exc:
        # The statements are fixed; only the MATCH expression varies, so a parse failure is the user's.
        if "database" in str(exc) or "disk" in str(exc):
            raise
        raise InvalidArgument(f"the FTS5 query cannot be read: {explain_fts_error(query, str(exc))}; fix it, or"
                              " search without --fts (plain words)") from None


def _quoted(word: str) -> str:
    return f'"{word}"'


def _any(words: Sequence[str]) -> str:
    return " OR ".join(map(_quoted, words))


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
               f" AND rank MATCH ? ORDER BY rank LIMIT ?) r JOIN cubes c ON c.seq = r.rowid WHERE {keep}"
               " ORDER BY r.rank LIMIT ?")
        rows = conn.execute(sql, [match, _RANK, depth, *params, limit]).fetchall()
        if len(rows) >= limit or len(rows) == conn.execute(
                "SELECT count(*) FROM (SELECT rowid FROM cubes_fts WHERE cubes_fts MATCH ? LIMIT ?)", (match, depth)
        ).fetchone()[0]:
            return [(row_dict(r[:-1]), -r[-1]) for r in rows]
    sql = (f"SELECT {_CUBE_COLUMNS}, bm25(cubes_fts, {', '.join(map(str, FIELD_WEIGHTS))}) AS rank FROM cubes_fts"
           f" JOIN cubes c ON c.seq = cubes_fts.rowid WHERE cubes_fts MATCH ? AND {keep} ORDER BY rank LIMIT ?")
    return [(row_dict(r[:-1]), -r[-1]) for r in conn.execute(sql, [match, *params, limit]).fetchall()]


def explain_fts_error(query: str, sqlite_message: str) -> str:
    """What is wrong with an FTS5 query, in the words of its syntax rather than SQLite's parser."""
    problem = fts5_syntax_problem(query)
    if problem:
        return problem
    column = re.search(r"no such column: (\S+)", sqlite_message)
    if column:
        return column_problem(column[1])
    near = re.search(r'near "(.*)"', sqlite_message)
    if near and near[1]:
        return (f'it cannot be read from "{near[1][:40]}" on (AND, OR, NOT go between terms; put punctuation'
                ' in "quotes")')
    return "it ends before an expression is complete"
