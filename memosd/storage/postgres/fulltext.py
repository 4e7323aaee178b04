"""MemVault's full-text search on PostgreSQL: BM25 as SQLite's FTS5 computes it, over the GIN-indexed tsvector.

PostgreSQL's ts_rank is not BM25, so the score is computed here, with FTS5's formula and constants: per query
lexeme, idf = ln((N - n + 0.5) / (n + 0.5)) (at least 1e-6), times tf (k1 + 1) / (tf + k1 (1 - b + b dl / avgdl)).
n is counted with the GIN index, tf read from the cube's tsvector, dl is cubes.text_len and N and avgdl come from
search_stats (schema m0006_search_stats). Words are lexemes of the english configuration (stemmed, without its
stopwords), as SQLite's porter tokenizer stems them.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from memosd.cube import CubeFilter, MemoryKind
from memosd.errors import InvalidArgument
from memosd.storage.postgres.filters import filter_sql
# The FTS5 query syntax is read the same way on both engines (see ranked_query): its tokens and its error messages.
from memosd.storage.sqlite import fulltext as _fts5
from memosd.vault.rows import COLUMNS, row_dict

_CUBE_COLUMNS = ", ".join(f"c.{c.strip()}" for c in COLUMNS.split(","))
# FTS5's bm25() defaults.
K1, B = 1.2, 0.75


def _scalar(cur: psycopg.Cursor) -> Any:
    row = cur.fetchone()
    assert row is not None  # an aggregate or a function call: always one row
    return row[0]


def size(conn: psycopg.Connection) -> int:
    """How large the vault has grown, cheaply: the highest seq a cube was given (deleted ones count)."""
    return _scalar(conn.execute("SELECT coalesce(max(seq), 0) FROM cubes"))


def doc_count(conn: psycopg.Connection, word: str) -> int:
    """How many cubes' texts hold the word, in any state."""
    (lexemes,) = _lexemes(conn, [word])
    if not lexemes:
        return 0
    return _scalar(conn.execute("SELECT count(*) FROM cubes WHERE text_tsv @@ %s::tsquery", (_all(lexemes),)))


def ranked(conn: psycopg.Connection, words: Sequence[str], f: CubeFilter, now: float, limit: int, *,
           one_of: Sequence[str] = ()) -> list[tuple[dict, float]]:
    """The best `limit` plaintext cubes passing the filter whose text holds any of the words (and, if one_of is
    given, one of those too), ranked by BM25 over all the words: (row as a dict of rows.COLUMNS, score), higher
    scores first."""
    found = _lexemes(conn, [*words, *one_of])
    per_word, per_one_of = found[:len(words)], found[len(words):]
    match = _any(per_word)
    if one_of:
        match = f"({_any(per_one_of)}) & ({match})" if _any(per_one_of) and match else ""
    terms = list(dict.fromkeys(lex for lexemes in per_word for lex in lexemes))
    if not match:
        return []
    return _ranked(conn, "%s::tsquery", [match], terms, f, now, limit)


def ranked_query(conn: psycopg.Connection, query: str, f: CubeFilter, now: float,
                 limit: int) -> list[tuple[dict, float]]:
    """As ranked(), for a query in FTS5's syntax ("phrases", AND, OR, NOT, parentheses, prefix*), read into a
    tsquery so that one query means the same on both engines; InvalidArgument says what is wrong with a query
    that cannot be read."""
    problem = _fts5.fts5_syntax_problem(query)
    if problem:  # told as SQLite tells it: one query means the same, or fails the same, on both engines
        raise InvalidArgument(f"the FTS5 query cannot be read: {problem}; fix it, or search without --fts"
                              " (plain words)")
    tsquery, words = _from_fts5(query)
    if not tsquery:
        return []
    (lexemes,) = _lexemes(conn, [" ".join(words)])
    try:
        return _ranked(conn, "to_tsquery('english', %s)", [tsquery], lexemes, f, now, limit)
    except pg_errors.SyntaxError:
        raise InvalidArgument(f"the FTS5 query cannot be read: {explain_fts_error(query, '')}; fix it, or"
                              " search without --fts (plain words)") from None


def _lexemes(conn: psycopg.Connection, words: Sequence[str]) -> list[list[str]]:
    """Each word's lexemes (none for a stopword; several for a word the parser splits, like "e-mail")."""
    if not words:
        return []
    found = conn.execute(
        "SELECT array(SELECT lexeme FROM unnest(to_tsvector('english', w))) FROM unnest(%s::text[])"
        " WITH ORDINALITY AS u(w, i) ORDER BY i", (list(words),)).fetchall()
    return [list(lexemes) for (lexemes,) in found]


def _quoted(text: str) -> str:
    # A tsquery operand, taken as it is (the lexemes are normalised already, or to_tsquery normalises them).
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def _all(lexemes: Sequence[str]) -> str:
    return "(" + " & ".join(map(_quoted, lexemes)) + ")"


def _any(per_word: Sequence[Sequence[str]]) -> str:
    return " | ".join(_all(lexemes) for lexemes in per_word if lexemes)


def _ranked(conn: psycopg.Connection, match_sql: str, match_params: list, terms: Sequence[str], f: CubeFilter,
            now: float, limit: int) -> list[tuple[dict, float]]:
    """The best `limit` matches passing the filter, scored by BM25 over the terms (lexemes). The filter is in
    the same query as the match, so only readable cubes are scored; each term's document count is a GIN
    index lookup over all cubes with text, as FTS5 counts it (remembered on large vaults, see _doc_counts)."""
    where, params = filter_sql(f, now)
    terms = list(terms)
    database, n, tokens = conn.execute(
        "SELECT (SELECT oid FROM pg_database WHERE datname = current_database()), coalesce(sum(docs), 0),"
        " coalesce(sum(tokens), 0) FROM search_stats").fetchone() or (0, 0, 0)
    n, avgdl = max(int(n), 1), max(int(tokens), 1) / max(int(n), 1)
    counts = _doc_counts(conn, (conn.info.host, conn.info.port, int(database)), terms, n)
    idf = [max(math.log((n - counts[t] + 0.5) / (counts[t] + 0.5)), 1e-6) for t in terms]
    sql = f"""
        WITH w AS (SELECT * FROM unnest(%s::text[], %s::float8[]) AS w(term, idf)),
        m AS (SELECT c.seq, c.text_tsv, c.text_len FROM cubes c
              WHERE c.text_tsv @@ {match_sql} AND c.kind = {int(MemoryKind.PLAINTEXT)} AND {where}),
        s AS (SELECT m.seq, sum(w.idf * (u.tf * {K1 + 1}) / (u.tf + {K1} * (1 - {B} + {B} * m.text_len / %s::float8)))
                     AS score
              FROM m,
              LATERAL (SELECT lexeme, cardinality(positions) AS tf
                       FROM unnest(ts_filter(setweight(m.text_tsv, 'A', %s::text[]), '{{a}}'))) u
              JOIN w ON w.term = u.lexeme
              GROUP BY m.seq ORDER BY score DESC, m.seq LIMIT %s)
        SELECT {_CUBE_COLUMNS}, s.score FROM s JOIN cubes c ON c.seq = s.seq ORDER BY s.score DESC, c.seq"""
    found = conn.execute(sql, [terms, idf, *match_params, *params, avgdl, terms, limit]).fetchall()
    return [(row_dict(r[:-1]), float(r[-1])) for r in found]


# Document counts of common words cost a GIN scan of every cube holding them: on vaults this large, a count is
# reused until the vault has changed by a tenth (idf barely moves), as the core's FullText does for its counts.
# Smaller vaults count every time, exactly.
LARGE_VAULT = 20_000
_counts: dict[tuple[tuple, str], tuple[int, int]] = {}
_counts_lock = threading.Lock()


def _doc_counts(conn: psycopg.Connection, database: tuple, terms: list[str], n: int) -> dict[str, int]:
    found: dict[str, int] = {}
    if n >= LARGE_VAULT:
        with _counts_lock:
            for t in terms:
                known = _counts.get((database, t))
                if known is not None and abs(n - known[1]) <= 0.1 * known[1]:
                    found[t] = known[0]
    todo = [t for t in terms if t not in found]
    if todo:
        rows = conn.execute("SELECT t.term, (SELECT count(*) FROM cubes x WHERE x.text_tsv @@ t.q)"
                            " FROM unnest(%s::text[], %s::tsquery[]) AS t(term, q)",
                            [todo, [_quoted(t) for t in todo]]).fetchall()
        found.update((t, int(c)) for t, c in rows)
        if n >= LARGE_VAULT:
            with _counts_lock:
                if len(_counts) > 50_000:
                    _counts.clear()
                _counts.update(((database, t), (found[t], n)) for t in todo)
    return found


def explain_fts_error(query: str, sqlite_message: str) -> str:
    """What is wrong with an FTS5 query, in the words of its syntax (as on SQLite: the query is read the same way;
    the message, SQLite's or PostgreSQL's, only adds where the syntax alone does not tell)."""
    return _fts5.explain_fts_error(query, sqlite_message)


_OPERATORS = {"AND": "&", "OR": "|", "NOT": "& !"}


def _from_fts5(query: str) -> tuple[str, list[str]]:
    """The tsquery text (for to_tsquery('english', ...)) an FTS5 query means, and its words. An implicit AND
    joins adjacent terms as in FTS5; FTS5's NOT is binary ("a NOT b") and binds tightest, as "a & !b" does."""
    out: list[str] = []
    words: list[str] = []
    for tok in _fts5._FTS_TOKEN.findall(query):
        if tok in _OPERATORS:
            out.append(_OPERATORS[tok])
            continue
        if tok == ")":
            out.append(tok)
            continue
        if out and out[-1] not in ("(", "&", "|", "& !"):
            out.append("&")  # adjacent terms
        if tok == "(":
            out.append(tok)
        elif tok.startswith('"'):
            if len(tok) == 1 or not tok.endswith('"') or (tok.endswith('""') and len(tok) % 2):
                raise InvalidArgument("the FTS5 query cannot be read: a phrase is not closed: every \" needs"
                                      " a closing \"")
            phrase = tok[1:-1].replace('""', '"')
            out.append(_quoted(phrase))  # several words in one operand: to_tsquery makes them a phrase (<->)
            words.append(phrase)
        elif tok.endswith("*") and len(tok) > 1:
            out.append(_quoted(tok[:-1]) + ":*")
            words.append(tok[:-1])
        else:
            out.append(_quoted(tok))
            words.append(tok)
    return " ".join(out), words
