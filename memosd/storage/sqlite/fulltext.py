"""MemVault's full-text search on SQLite: BM25 ranking with FTS5 under a CubeFilter, and word counts."""

from __future__ import annotations

import heapq
import json
import math
import re
import sqlite3
import threading
from collections.abc import Sequence

from memosd.cube import CubeFilter, MemoryKind
from memosd.errors import InvalidArgument
from memosd.storage.fts5 import B, FIELD_WEIGHTS, FTS_TOKEN, K1, OPERATORS, WORD, column_problem, fts5_syntax_problem
from memosd.storage.records import ScopeStats
from memosd.storage.scope_counts import ScopeCounts
from memosd.storage.sqlite.filters import filter_sql, readable_sql, sized_sql
from memosd.vault.rows import COLUMNS, NAMES, row_dict

_CUBE_COLUMNS = ", ".join(f"c.{c.strip()}" for c in COLUMNS.split(","))
# The ranking function for `rank`, given with each query (text, context and metadata columns, schema m0009).
_RANK = f"bm25({', '.join(map(str, FIELD_WEIGHTS))})"


def size(conn: sqlite3.Connection) -> int:
    """How large the vault has grown, cheaply: the highest seq a cube was given (deleted ones count)."""
    (found,) = conn.execute("SELECT coalesce(max(seq), 0) FROM cubes").fetchone()
    return found


def upkeep(conn: sqlite3.Connection) -> list[str]:
    """Nothing to do on SQLite: FTS5 merges its index segments as it writes (automerge), and no search plan here
    depends on planner statistics (see the PostgreSQL engine's upkeep)."""
    return []


def doc_counts(conn: sqlite3.Connection, words: Sequence[str]) -> dict[str, int]:
    """How many cubes hold each word (in text, search context or metadata), in any state."""
    return {w: conn.execute("SELECT count(*) FROM cubes_fts WHERE cubes_fts MATCH ?", (_quoted(w),)).fetchone()[0]
            for w in words}


def ranked(conn: sqlite3.Connection, words: Sequence[str], f: CubeFilter, now: float, limit: int, *,
           one_of: Sequence[str] = (), stats: ScopeStats | None = None,
           top: int | None = None) -> list[tuple[dict, float]]:
    """The best `limit` plaintext cubes passing the filter whose text holds any of the words (and, if one_of, some
    of the words, is given, one of those), ranked by BM25 over all the words, each once (_matches): (row as a dict
    of rows.COLUMNS, score), higher scores first. With stats (scope_stats() of the words), BM25 is scored with the
    statistics of the caller's readable cubes; without, with the whole vault's (FTS5's bm25(), for a caller who
    may read everything). With top (below limit), only the best `top` need be those a search for `top` finds:
    the candidate lists are sized for them, and the rest are the next best of those lists (hybrid search's
    further candidates for fusion)."""
    if stats is not None:  # scored here, each word once: the match only says which cubes
        return _scoped(conn, _any(one_of or words), words, f, now, limit, stats)
    return _ranked(conn, _matches(words, one_of), f, now, limit, top)


def _matches(words: Sequence[str], one_of: Sequence[str]) -> list[str]:
    """Match expressions that together hold the cubes ranked() ranks, each naming every word at most once: FTS5's
    bm25() adds a phrase's score as often as the expression names it, and "(rare) AND (rare OR common)" scored
    the rare words twice (it returned 79% of the exact top 10 at 100k bench cubes, 61% for six words; 98.6% this
    way). With one_of: the cubes holding one of those and another word, scored on all the words; and every cube
    holding one of those, scored on those alone, which is its whole score if it holds no other word. No word
    scores below zero, so a cube's best score of the two is its score (_ranked keeps it). As fast as the old
    expression: the second reads only the rare words' lists."""
    if not one_of:
        return [_any(words)]
    rest = [w for w in words if w not in one_of]
    return [f"({_any(one_of)}) AND ({_any(rest)})", _any(one_of)] if rest else [_any(one_of)]


def ranked_query(conn: sqlite3.Connection, query: str, f: CubeFilter, now: float, limit: int, *,
                 scoped: bool = False) -> list[tuple[dict, float]]:
    """As ranked(), for a query in this engine's own full-text syntax (FTS5's); InvalidArgument says what is
    wrong with a query that cannot be read. scoped: scored with the statistics of the caller's readable cubes
    (the query's words, phrases split into words, and prefixes, are what BM25 counts)."""
    try:
        if scoped:
            units = _query_units(query)
            return _scoped(conn, query, units, f, now, limit, scope_stats(conn, units, f))
        return _ranked(conn, [query], f, now, limit)
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


def _ranked(conn: sqlite3.Connection, matches: Sequence[str], f: CubeFilter, now: float, limit: int,
            top: int | None = None) -> list[tuple[dict, float]]:
    """The best `limit` cubes passing the filter among those the match expressions match (a cube matching several:
    its least rank, its best score). Ranking (bm25 for every match) is the cost: when the caller narrowed the
    search (tags, kinds, time, a namespace under WIDE_SHARE), join first so that only cubes passing the filter
    are scored; otherwise rank inside FTS5 and look up only each expression's best candidates, which usually pass
    (live cubes, the caller's readable scope, a wide namespace's share of them). That answer stands only where no
    unread match could outrank it: each expression's list either held all its matches or ends at a rank no
    better than the last hit kept. Else join first after all (as when too few candidates pass). With top, the
    lists are sized for the best `top` and the answer stands on them alone (see ranked)."""
    if limit <= 0:
        return []
    where, params = filter_sql(f, now)
    keep = f"c.kind = {int(MemoryKind.PLAINTEXT)} AND {where}"
    narrowed = bool(f.tags or f.kinds or f.created_after is not None or f.created_before is not None)
    share = _share(conn, f) if f.namespace_prefix and not narrowed else 1.0
    if not narrowed and share >= WIDE_SHARE:
        top = min(limit, top or limit)
        depth = math.ceil(max(top * 4, 64) / share)  # about as many pass as without the namespace
        lists = [conn.execute("SELECT rowid, rank FROM cubes_fts WHERE cubes_fts MATCH ? AND rank MATCH ?"
                              " ORDER BY rank LIMIT ?", (m, _RANK, depth)).fetchall() for m in matches]
        best: dict[int, float] = {}
        for found in lists:
            for seq, rank in found:
                best[seq] = min(rank, best.get(seq, rank))
        passing = {seq for (seq,) in conn.execute(
            f"SELECT c.seq FROM cubes c WHERE c.seq IN (SELECT value FROM json_each(?)) AND {keep}",
            [json.dumps(list(best)), *params])}
        chosen = [seq for seq in sorted(best, key=lambda q: (best[q], q)) if seq in passing][:limit]
        last = best[chosen[top - 1]] if len(chosen) >= top else None
        if all(len(found) < depth or (last is not None and last <= found[-1][1]) for found in lists):
            rows = {r["seq"]: r for r in map(row_dict, conn.execute(
                f"SELECT {_CUBE_COLUMNS} FROM cubes c WHERE c.seq IN (SELECT value FROM json_each(?))",
                [json.dumps(chosen)]))}
            return [(rows[seq], -best[seq]) for seq in chosen if seq in rows]
    # Each in a subquery of its own (LIMIT -1: never flattened, bm25() needs its FTS5 cursor).
    each = (f"SELECT * FROM (SELECT {_CUBE_COLUMNS}, bm25(cubes_fts, {', '.join(map(str, FIELD_WEIGHTS))}) AS rank"
            f" FROM cubes_fts JOIN cubes c ON c.seq = cubes_fts.rowid WHERE cubes_fts MATCH ? AND {keep} LIMIT -1)")
    # rank is bm25() negated: a cube's least is its best score (see _matches)
    sql = (f"SELECT {', '.join(NAMES)}, min(rank) AS best FROM ({' UNION ALL '.join(each for _ in matches)})"
           " GROUP BY seq ORDER BY best, seq LIMIT ?")
    found = conn.execute(sql, [*(v for m in matches for v in (m, *params)), limit]).fetchall()
    return [(row_dict(r[:-1]), -r[-1]) for r in found]


# A namespace holding at least this share of the plaintext cubes is searched as the whole vault is, its lists
# deeper by the inverse of the share (for a top 10, at most 1,280 seqs each): FTS5 ranks every match either way,
# and joining each match to its row to filter it first made the slowest searches a third slower (p95 13.8 against
# 10.3 ms in process, a namespace of a quarter of 100k cubes; the same mean). A narrower one would need lists
# too deep to stand: join first.
WIDE_SHARE = 0.05


def _share(conn: sqlite3.Connection, f: CubeFilter) -> float:
    """The share of the plaintext cubes (any state) that the filter's namespace holds (search_sizes)."""
    sized, params = sized_sql(CubeFilter(namespace_prefix=f.namespace_prefix), "s")
    within, every = conn.execute(f"SELECT coalesce(sum(s.docs) FILTER (WHERE {sized}), 0), coalesce(sum(s.docs), 0)"
                                 f" FROM search_sizes s WHERE s.kind = {int(MemoryKind.PLAINTEXT)}", params).fetchone()
    return within / every if every else 0.0


# -- BM25 within the caller's readable cubes --------------------------------------------------------------------
# FTS5's bm25() counts N, the average length and each phrase's matches over the whole table: a caller who may
# read only some cubes would learn, from scores and order, how common its words are in the others. For such a
# caller the score is computed here with FTS5's formula and constants, over statistics of the readable cubes
# alone: occurrences per cube and column from cubes_fts_instances (m0011_fts_instances), weighted by column as
# bm25() weighs them; a cube's length in characters of its three fields (the index keeps token counts in a form
# SQL cannot sum), which BM25 only compares with the readable cubes' average.
_DL = "(length(c.text) + coalesce(length(c.search_context), 0) + coalesce(length(c.metadata), 0))"
_WEIGHTS = dict(zip(("text", "context", "meta"), FIELD_WEIGHTS, strict=True))


def scope_stats(conn: sqlite3.Connection, words: Sequence[str], f: CubeFilter) -> ScopeStats:
    """BM25's statistics over the plaintext cubes the filter's scope and viewer admit (in any state but
    deleted, whatever else the filter asks): how many, their length (search_sizes), and how many hold each word
    (a word ending in "*": a prefix; see scope_counts for when a count is remembered)."""
    where, params = readable_sql(f, "s")
    docs, length = conn.execute("SELECT coalesce(sum(s.docs), 0), coalesce(sum(s.length), 0) FROM search_sizes s"
                                f" WHERE s.kind = {int(MemoryKind.PLAINTEXT)} AND {where}", params).fetchone()
    (database,) = conn.execute("SELECT file FROM pragma_database_list WHERE name = 'main'").fetchone()

    def count(todo: list[str]) -> dict[str, int]:
        where, params = _readable(f)
        return {w: conn.execute(f"SELECT count(*) FROM cubes_fts JOIN cubes c ON c.seq = cubes_fts.rowid"
                                f" WHERE cubes_fts MATCH ? AND {where}", [_unit_match(w), *params]).fetchone()[0]
                for w in todo}

    counts = _counts.counts((database, f.scope, f.viewer), docs, words, count)
    return ScopeStats(docs=docs, length=length, counts=counts, terms=counts)


_counts = ScopeCounts()


def _readable(f: CubeFilter) -> tuple[str, list]:
    where, params = readable_sql(f)
    return f"c.kind = {int(MemoryKind.PLAINTEXT)} AND c.text IS NOT NULL AND {where}", params


def _unit_match(word: str) -> str:
    return _quoted(word[:-1]) + "*" if word.endswith("*") else _quoted(word)


def _scoped(conn: sqlite3.Connection, match: str, words: Sequence[str], f: CubeFilter, now: float, limit: int,
            stats: ScopeStats) -> list[tuple[dict, float]]:
    """The best `limit` matches passing the filter, scored by BM25 over the words with the scope's statistics."""
    where, params = filter_sql(f, now)
    lengths = dict(conn.execute(
        f"SELECT c.seq, {_DL} FROM cubes_fts JOIN cubes c ON c.seq = cubes_fts.rowid WHERE cubes_fts MATCH ?"
        f" AND c.kind = {int(MemoryKind.PLAINTEXT)} AND {where}", [match, *params]).fetchall())
    if not lengths:
        return []
    n = max(stats.docs, 1)
    avgdl = max(stats.length, 1) / n
    scores = dict.fromkeys(lengths, 0.0)
    cubes = json.dumps(list(lengths))
    for word in dict.fromkeys(words):
        hits = stats.terms.get(word, 0)
        idf = max(math.log((n - hits + 0.5) / (hits + 0.5)), 1e-6)
        for seq, tf in _frequencies(conn, word, cubes).items():
            scores[seq] += idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * lengths[seq] / avgdl))
    best = heapq.nsmallest(limit, scores.items(), key=lambda kv: (-kv[1], kv[0]))
    marks = ",".join("?" * len(best))
    found = {r[0]: r[1:] for r in conn.execute(
        f"SELECT c.seq, {_CUBE_COLUMNS} FROM cubes c WHERE c.seq IN ({marks})", [seq for seq, _ in best])}
    return [(row_dict(found[seq]), score) for seq, score in best if seq in found]


def _frequencies(conn: sqlite3.Connection, word: str, cubes: str) -> dict[int, float]:
    """The word's occurrences in each of the cubes (a JSON list of seqs), each weighing its column's FIELD_WEIGHTS
    share (a word the tokenizer makes several terms of: the least of theirs; a prefix: every term it begins)."""
    if word.endswith("*"):
        # A prefix is not stemmed (as FTS5 reads "word*"): the range of terms beginning with it, lower-cased.
        start = word[:-1].lower()
        return _occurrences(conn, "term >= ? AND term < ?", [start, start + "\U0010ffff"], cubes)
    per_term = [_occurrences(conn, "term = ?", [term], cubes) for term in dict.fromkeys(_terms([word])[0])]
    if not per_term:
        return {}
    first, *rest = per_term
    return {seq: min([tf, *(other.get(seq, 0.0) for other in rest)]) for seq, tf in first.items()
            if all(seq in other for other in rest)}


_WEIGHTED = f"sum(CASE col WHEN 'text' THEN {_WEIGHTS['text']} WHEN 'context' THEN {_WEIGHTS['context']}" \
            f" ELSE {_WEIGHTS['meta']} END)"


def _occurrences(conn: sqlite3.Connection, terms: str, params: list, cubes: str) -> dict[int, float]:
    # Every occurrence of the terms in the vault is read (by term), those of other cubes dropped in SQLite.
    return dict(conn.execute(f"SELECT doc, {_WEIGHTED} FROM cubes_fts_instances WHERE {terms}"
                             " AND doc IN (SELECT value FROM json_each(?)) GROUP BY doc", [*params, cubes]))


# The tokenizer cubes_fts was made with (m0009_search_fields): a query word is read into the index's terms by
# an index of its own with the same tokenizer, in memory (the daemon's readers may not write, not even to temp).
TOKENIZE = "porter unicode61 remove_diacritics 2"
_tokenizer_lock = threading.Lock()
_tokenizer: sqlite3.Connection | None = None


def _terms(words: Sequence[str]) -> list[list[str]]:
    """Each word's terms as cubes_fts holds them (lower-cased, stemmed; none for punctuation)."""
    global _tokenizer
    with _tokenizer_lock:
        if _tokenizer is None:
            _tokenizer = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            _tokenizer.execute(f"CREATE VIRTUAL TABLE words USING fts5(w, tokenize='{TOKENIZE}')")
            _tokenizer.execute("CREATE VIRTUAL TABLE words_terms USING fts5vocab(words, instance)")
        _tokenizer.execute("DELETE FROM words")
        _tokenizer.executemany("INSERT INTO words (rowid, w) VALUES (?, ?)", enumerate(words, 1))
        found: list[list[str]] = [[] for _ in words]
        for doc, term in _tokenizer.execute("SELECT doc, term FROM words_terms ORDER BY doc, offset"):
            found[doc - 1].append(term)
        _tokenizer.execute("DELETE FROM words")
    return found


# As many words as a plain query keeps (memosd.vault.fulltext.MAX_TERMS): each costs a count and a read of its
# occurrences, so a long query must not multiply them; words past these still match, they only add no score.
MAX_UNITS = 64


def _query_units(query: str) -> list[str]:
    """What BM25 counts of a query in FTS5's syntax: its words (a phrase's one by one) and prefixes ("word*")."""
    units: list[str] = []
    for tok in FTS_TOKEN.findall(query):
        if tok in OPERATORS or tok in ("(", ")"):
            continue
        if tok.endswith("*") and not tok.startswith('"') and WORD.fullmatch(tok[:-1]):
            units.append(tok.lower())
            continue
        units += [w.lower() for w in WORD.findall(tok)]
    return list(dict.fromkeys(units))[:MAX_UNITS]



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
