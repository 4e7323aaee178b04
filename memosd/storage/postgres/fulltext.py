"""MemVault's full-text search on PostgreSQL: BM25 as SQLite's FTS5 computes it, over the GIN-indexed tsvector.

PostgreSQL's ts_rank is not BM25, so the score is computed here, with FTS5's formula and constants: per query
lexeme, idf = ln((N - n + 0.5) / (n + 0.5)) (at least 1e-6), times tf (k1 + 1) / (tf + k1 (1 - b + b dl / avgdl)).
n is counted with the GIN index, tf read from the cube's tsvector, dl is cubes.text_len and N and avgdl come from
search_stats (schema m0006_search_stats). A common word is ranked over a bounded candidate set rather than
match by match (_walked, over cube_repeats and cubes_text_len, schema m0009_search_ingest). Words are lexemes
of the english configuration (stemmed, without its stopwords), as SQLite's porter tokenizer stems them. The
tsvector holds the cube's search context and metadata strings too (schema m0010_search_fields): tf weighs each
occurrence by its field (FIELD_WEIGHTS), and dl counts all three fields, as FTS5 does with column weights.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from memosd.cube import CubeFilter, MemoryKind
from memosd.errors import InvalidArgument
from memosd.storage.postgres.filters import filter_sql, readable_sql, sized_sql
from memosd.storage.records import ScopeStats
from memosd.storage.scope_counts import ScopeCounts
# The FTS5 query syntax is read the same way on both engines (see ranked_query): its tokens and its error messages.
from memosd.storage.fts5 import B, FIELD_WEIGHTS, FTS_TOKEN, K1, fts5_syntax_problem
from memosd.vault.rows import COLUMNS, row_dict

_CUBE_COLUMNS = ", ".join(f"c.{c.strip()}" for c in COLUMNS.split(","))
# A term's tf as FTS5 counts it with column weights: each occurrence weighs its field's FIELD_WEIGHTS share. The
# text's lexemes carry tsvector weight D, the search context's B and the metadata's C (schema m0010_search_fields).
# _QUERY_LEXEMES keeps the query's lexemes of a cube's tsvector with their weights, in C (deleting all the others,
# which the setweight/ts_filter pair names): about half the cost of unnesting the whole vector to pick them.
_W_TEXT, _W_CONTEXT, _W_META = map(float, FIELD_WEIGHTS)
_WEIGHTED_TF = (f"{_W_TEXT}::float8 * cardinality(u.positions)"
                f" - {_W_TEXT - _W_CONTEXT}::float8 * cardinality(array_positions(u.weights, 'B'))"
                f" - {_W_TEXT - _W_META}::float8 * cardinality(array_positions(u.weights, 'C'))")
_QUERY_LEXEMES = ("ts_delete(m.text_tsv, tsvector_to_array(ts_filter(setweight(m.text_tsv, 'A', %s::text[]),"
                  " '{b,c,d}')))")


def _score_sql(terms: Sequence[str], idf: Sequence[float], avgdl: float) -> str:
    """A candidate's BM25 over the terms, as an expression over m (text_tsv, text_repeats, text_len; its one
    parameter: the terms). A term a cube holds once weighs its field's share: a weight-restricted match of the
    lexeme tells which field (0.2 us; the text's lexemes carry D, the context's B, the metadata's C), rather than
    unnesting the cube's vector (about 9 us a cube). A cube repeating a query term (text_repeats holds the
    lexemes a cube has more than once) is scored from its vector, each occurrence weighed by its field."""
    # In float8 throughout: with numeric constants and an integer length, PostgreSQL computes in numeric, about
    # a sixth of a search's time at 100k cubes.
    def bm25(i: int, tf: float | str) -> str:
        return f"{idf[i]!r} * ({tf} * {K1 + 1}) / ({tf} + {K1} * (1 - {B} + {B} * m.text_len::float8 / {avgdl!r}))"

    once = " + ".join(
        f"CASE WHEN m.text_tsv @@ {_literal(_quoted(t) + ':D')}::tsquery THEN {bm25(i, _W_TEXT)}"
        f" WHEN m.text_tsv @@ {_literal(_quoted(t) + ':B')}::tsquery THEN {bm25(i, _W_CONTEXT)}"
        f" WHEN m.text_tsv @@ {_literal(_quoted(t) + ':C')}::tsquery THEN {bm25(i, _W_META)} ELSE 0 END"
        for i, t in enumerate(terms))
    idfs = "ARRAY[" + ", ".join(map(repr, idf)) + "]::float8[]"
    term_list = "ARRAY[" + ", ".join(_literal(t) for t in terms) + "]::text[]"
    repeated = (f"(SELECT sum(({idfs})[array_position({term_list}, t.lexeme)] * (t.tf * {K1 + 1})"
                f" / (t.tf + {K1} * (1 - {B} + {B} * m.text_len::float8 / {avgdl!r})))"
                f" FROM (SELECT u.lexeme, {_WEIGHTED_TF} AS tf FROM unnest({_QUERY_LEXEMES}) u) t)")
    any_term = _literal(" | ".join(map(_quoted, terms)))
    return f"(CASE WHEN m.text_repeats @@ {any_term}::tsquery THEN {repeated} ELSE {once} END)"


def _scalar(cur: psycopg.Cursor) -> Any:
    row = cur.fetchone()
    assert row is not None  # an aggregate or a function call: always one row
    return row[0]


def size(conn: psycopg.Connection) -> int:
    """How large the vault has grown, cheaply: the highest seq a cube was given (deleted ones count)."""
    return _scalar(conn.execute("SELECT coalesce(max(seq), 0) FROM cubes"))


def doc_counts(conn: psycopg.Connection, words: Sequence[str]) -> dict[str, int]:
    """How many cubes' texts hold each word, in any state."""
    per_word = _lexemes(conn, words)
    single = [lexemes[0] for lexemes in per_word if len(lexemes) == 1]
    # A word of one lexeme, as most are: counted (or remembered) as _ranked counts it.
    counts = _doc_counts(conn, _database(conn), single, size(conn)) if single else {}
    found = {}
    for word, lexemes in zip(words, per_word, strict=True):
        if len(lexemes) > 1:
            found[word] = _scalar(conn.execute("SELECT count(*) FROM cubes WHERE text_tsv @@ %s::tsquery",
                                               (_all(lexemes),)))
        else:
            found[word] = counts[lexemes[0]] if lexemes else 0
    return found


def scope_stats(conn: psycopg.Connection, words: Sequence[str], f: CubeFilter) -> ScopeStats:
    """BM25's statistics over the plaintext cubes the filter's scope and viewer admit (in any state but
    deleted, whatever else the filter asks): how many, their length in lexemes, and how many hold each word
    (all of its lexemes) and each of the words' lexemes."""
    per_word = _lexemes(conn, words)
    docs, length, terms = _scope_counts(conn, f, [lex for lexemes in per_word for lex in lexemes])
    counts = {}
    for word, lexemes in zip(words, per_word, strict=True):
        if len(lexemes) > 1:
            where, params = _readable(f)
            counts[word] = _scalar(conn.execute(f"SELECT count(*) FROM cubes c WHERE c.text_tsv @@ %s::tsquery"
                                                f" AND {where}", [_all(lexemes), *params]))
        else:
            counts[word] = terms[lexemes[0]] if lexemes else 0
    return ScopeStats(docs=docs, length=length, counts=counts, terms=terms)


def _readable(f: CubeFilter) -> tuple[str, list]:
    where, params = readable_sql(f)
    return f"c.kind = {int(MemoryKind.PLAINTEXT)} AND c.text IS NOT NULL AND {where}", params


def _scope_counts(conn: psycopg.Connection, f: CubeFilter, lexemes: Sequence[str]) -> tuple[int, int, dict[str, int]]:
    """How many readable cubes (see scope_stats), their length (search_sizes, schema m0012_search_sizes), and how
    many of them hold each lexeme (counted, or remembered while the scope keeps about its size:
    storage.scope_counts)."""
    sizes, sized = readable_sql(f, "s")
    docs, length = conn.execute("SELECT coalesce(sum(s.docs), 0), coalesce(sum(s.length), 0) FROM search_sizes s"
                                f" WHERE s.kind = {int(MemoryKind.PLAINTEXT)} AND {sizes}", sized).fetchone() or (0, 0)
    where, params = _readable(f)

    def count(todo: list[str]) -> dict[str, int]:
        rows = conn.execute(f"SELECT t.term, (SELECT count(*) FROM cubes c WHERE c.text_tsv @@ t.q AND {where})"
                            " FROM unnest(%s::text[], %s::tsquery[]) AS t(term, q)",
                            [*params, todo, [_quoted(t) for t in todo]]).fetchall()
        return {t: int(c) for t, c in rows}

    terms = _scoped_counts.counts((_database(conn), f.scope, f.viewer), int(docs), list(lexemes), count)
    return int(docs), int(length), terms


_scoped_counts = ScopeCounts()


def ranked(conn: psycopg.Connection, words: Sequence[str], f: CubeFilter, now: float, limit: int, *,
           one_of: Sequence[str] = (), stats: ScopeStats | None = None,
           top: int | None = None) -> list[tuple[dict, float]]:
    """The best `limit` plaintext cubes passing the filter whose text holds any of the words (and, if one_of is
    given, one of those too), ranked by BM25 over all the words: (row as a dict of rows.COLUMNS, score), higher
    scores first. With stats (scope_stats() of the words), BM25 is scored with the statistics of the caller's
    readable cubes; without, with the whole vault's (for a caller who may read everything). With top (below
    limit), only the best `top` need be those a search for `top` finds: a common word's walk is sized for them,
    and the rest are the next best of the cubes it reached (hybrid search's further candidates for fusion)."""
    found = _lexemes(conn, [*words, *one_of])
    per_word, per_one_of = found[:len(words)], found[len(words):]
    match = _any(per_word)
    if one_of:
        # Words of the query among them (as FullText's rarest words are) match only what the query matches: the
        # index then reads their matches alone, not every query word's too (several times as many at 100k cubes).
        within = all(g in per_word for g in per_one_of)
        match = "" if not (_any(per_one_of) and match) else _any(per_one_of) if within else \
            f"({_any(per_one_of)}) & ({match})"
    terms = list(dict.fromkeys(lex for lexemes in per_word for lex in lexemes))
    if not match:
        return []
    groups = [g for g in per_word if g]
    # Exact: one word of one lexeme, which every match then holds (and its repeats match without a recheck).
    walk = _Walk(deciding=[g for g in (per_one_of if one_of else per_word) if g], every=_all_groups(groups),
                 exact=not one_of and len(groups) == 1 and len(groups[0]) == 1, groups=groups,  # groups: _split
                 top=min(limit, top or limit))
    return _ranked(conn, "%s::tsquery", [match], terms, f, now, limit, walk=walk, stats=stats)


def ranked_query(conn: psycopg.Connection, query: str, f: CubeFilter, now: float, limit: int, *,
                 scoped: bool = False) -> list[tuple[dict, float]]:
    """As ranked(), for a query in FTS5's syntax ("phrases", AND, OR, NOT, parentheses, prefix*), read into a
    tsquery so that one query means the same on both engines; InvalidArgument says what is wrong with a query
    that cannot be read. scoped: scored with the statistics of the caller's readable cubes."""
    problem = fts5_syntax_problem(query)
    if problem:  # told as SQLite tells it: one query means the same, or fails the same, on both engines
        raise InvalidArgument(f"the FTS5 query cannot be read: {problem}; fix it, or search without --fts"
                              " (plain words)")
    tsquery, words = _from_fts5(query)
    if not tsquery:
        return []
    (lexemes,) = _lexemes(conn, [" ".join(words)])
    stats = None
    if scoped:
        docs, length, terms = _scope_counts(conn, f, lexemes)
        stats = ScopeStats(docs=docs, length=length, counts={}, terms=terms)
    try:
        return _ranked(conn, "to_tsquery('english', %s)", [tsquery], lexemes, f, now, limit, stats=stats)
    except pg_errors.SyntaxError:
        raise InvalidArgument(f"the FTS5 query cannot be read: {explain_fts_error(query, '')}; fix it, or"
                              " search without --fts (plain words)") from None


# A word's lexemes depend on the word and the database's english configuration alone: remembered per database.
_lexemes_of: dict[tuple[tuple, str], tuple[str, ...]] = {}


def _lexemes(conn: psycopg.Connection, words: Sequence[str]) -> list[list[str]]:
    """Each word's lexemes (none for a stopword; several for a word the parser splits, like "e-mail")."""
    if not words:
        return []
    database = _database(conn)
    with _counts_lock:
        known = {w: _lexemes_of[(database, w)] for w in words if (database, w) in _lexemes_of}
    todo = list(dict.fromkeys(w for w in words if w not in known))
    if todo:
        found = conn.execute(
            "SELECT array(SELECT lexeme FROM unnest(to_tsvector('english', w))) FROM unnest(%s::text[])"
            " WITH ORDINALITY AS u(w, i) ORDER BY i", (todo,)).fetchall()
        known.update((w, tuple(lexemes)) for w, (lexemes,) in zip(todo, found, strict=True))
        with _counts_lock:
            if len(_lexemes_of) > 50_000:
                _lexemes_of.clear()
            _lexemes_of.update(((database, w), known[w]) for w in todo)
    return [list(known[w]) for w in words]


def _quoted(text: str) -> str:
    # A tsquery operand, taken as it is (the lexemes are normalised already, or to_tsquery normalises them).
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def _all(lexemes: Sequence[str]) -> str:
    return "(" + " & ".join(map(_quoted, lexemes)) + ")"


def _any(per_word: Sequence[Sequence[str]]) -> str:
    return " | ".join(_all(lexemes) for lexemes in per_word if lexemes)


@dataclass(frozen=True)
class _Walk:
    """How ranked() may bound a common word's candidates (see _walked): the word groups that decide the matches,
    the tsquery all groups together match, whether every match holds all the terms (one word of one lexeme), and
    the deciding groups rare enough that every match of theirs is a candidate (_ranked picks them), and how many
    best hits it is sized for."""

    deciding: list[list[str]]
    every: str
    exact: bool
    whole: list[list[str]] = field(default_factory=list)
    groups: list[list[str]] = field(default_factory=list)  # every word's lexemes
    top: int = 0  # how many best hits the walk is sized for (ranked's top)


def _all_groups(groups: Sequence[Sequence[str]]) -> str:
    return " & ".join(_all(g) for g in groups)


# Matches (as counted) from which a plain-word query on a large vault (LARGE_VAULT) is ranked over a bounded
# candidate set rather than scored match by match: scoring reads every match's row and tsvector (about 5 us each, 13k rows for a word in an
# eighth of 100k cubes), while the bounded set costs the same whatever the word's count.
WALK_FROM = 1500


# cube_repeats is read by tf, one value at a time up to this one, and from it on by tf (most repeats are 2 or 3).
TOP_TF = 9


def _depth(walk: _Walk, limit: int, part: str = "any") -> int:
    """How many of the shortest matches _walked takes of a list: of any word a few times limit, unless every match
    holds the same terms; of every word, or of pairs, twice limit (their few best are what they add)."""
    if part != "any":
        return max(2 * limit, 32)
    return limit if walk.exact else max(8 * limit, 128)


# How many times more rows a walk shortest first reads than the words' shares say: a short cube holds fewer
# words, so fewer of the shortest match a word (twice as few at 100k bench cubes), and fewer still a pair of them.
WALK_BIAS = {"any": 2.0, "every": 4.0, "pairs": 4.0}


# Pairs of words (a walked one and another) up to which the walk also takes the shortest cubes holding a pair.
MAX_PAIRS = 16
PAIRED = 2
# Deciding words as rare as this (their matches together) have every match a candidate of the walk (_split).
WHOLE_UP_TO = 1000


def _split(walk: _Walk, counts: dict[str, int], n: int) -> _Walk:
    """The walk with its rarest deciding groups (matching at most WHOLE_UP_TO cubes together) taken whole: the
    shortest cubes holding a common word never outscore one holding a word a hundred times rarer, which a walk
    in length order would pass over (at 100k cubes it lost the best hit of 41 queries in 300)."""
    groups = sorted(walk.deciding, key=lambda g: min(counts.get(t, n) for t in g))
    whole: list[list[str]] = []
    used = 0
    for group in groups:
        count = min(counts.get(t, n) for t in group)
        if used + count > WHOLE_UP_TO:
            break
        whole.append(group)
        used += count
    rarest = sorted(walk.groups, key=lambda g: min(counts.get(t, n) for t in g))  # what _pairs pairs with first
    return replace(walk, deciding=groups[len(whole):], whole=whole, groups=rarest)


def _fetches(depth: int, vault: int, matches: float, bias: float = 1.0) -> bool:
    """Whether _walked finds the shortest matches by fetching them all: walking the cubes shortest first reads
    about bias * depth * vault / matches rows before `depth` of them match, fetching every match reads matches."""
    return bias * depth * vault > matches * matches


def _pairs(walk: _Walk) -> list[str]:
    """tsquery operands of the pairs of a walked word and one of the PAIRED rarest other query words (none past
    MAX_PAIRS): a GIN lookup of many common words' pairs costs more than the walk it helps (30 ms at 100k)."""
    pairs = [f"{_all(d)} & {_all(g)}" for d in walk.deciding for g in [g for g in walk.groups if g != d][:PAIRED]]
    return pairs if len(pairs) <= MAX_PAIRS else []


def _walked(walk: _Walk, match_sql: str, where: str, limit: int, fetch: dict[str, bool]) -> str:
    """The candidates' query (seqs) for a common word (its parameters: see _ranked). A cube holds each query
    term once or not at all unless it repeats it (cube_repeats); once, its BM25 is idf * 2.2 / (1 + 1.2 (0.25 +
    0.75 dl / avgdl)) per term it holds, falling with its length dl, and at any one tf it falls with dl too. So
    for each tf the `limit` shortest repeats (cube_repeats_rank), with the `limit` shortest matches
    (cubes_text_len), hold the exact best `limit` when every match holds the same terms (one word; tf from
    TOP_TF on taken by tf). With several words a short cube holding one beats a longer one holding two, which
    the walk may not reach: the shortest cubes holding every word are added, and more of the shortest matches;
    as FullText's common-word cut-off, the ranking there is close, not exact. Each list reads rows in its order
    and stops once `limit` (or the deeper count) pass the filter, whatever the words' counts; where fetch says so
    (for the shortest matches of "any" word, of "every" word, or of "pairs"), they are instead found among all
    those matches (from the GIN index), when that reads fewer rows (see _ranked)."""
    base = f"c.kind = {int(MemoryKind.PLAINTEXT)} AND c.text IS NOT NULL AND {where}"
    def shortest(match: str, part: str) -> str:
        depth = _depth(walk, limit, part)
        if fetch[part]:  # OFFSET 0: planned as a subquery of its own, fetching every match rather than walking
            return (f"(SELECT x.seq FROM (SELECT c.seq, c.text_len FROM cubes c WHERE c.text_tsv @@ {match} AND"
                    f" {base} OFFSET 0) x ORDER BY x.text_len, x.seq LIMIT {int(depth)})")
        return (f"(SELECT c.seq FROM cubes c WHERE c.text_tsv @@ {match} AND {base} ORDER BY c.text_len, c.seq"
                f" LIMIT {int(depth)})")

    recheck = "" if walk.exact else f" AND c.text_tsv @@ {match_sql}"
    deciding = ", ".join(_literal(t) for t in dict.fromkeys(t for g in walk.deciding for t in g))
    repeats = f"SELECT c.seq FROM cube_repeats p JOIN cubes c ON c.seq = p.seq WHERE {base}{recheck}"
    parts = [f"(SELECT x.seq FROM unnest(ARRAY[{deciding}]::text[]) t(term), generate_series(2, {TOP_TF - 1}) v(tf),"
             f" LATERAL ({repeats} AND p.term = t.term AND p.tf = v.tf ORDER BY p.dl, p.seq LIMIT {int(limit)}) x)",
             f"({repeats} AND p.term IN ({deciding}) AND p.tf >= {TOP_TF} ORDER BY p.tf DESC, p.dl, p.seq"
             f" LIMIT {int(limit)})",
             shortest(match_sql, "any")]
    if not walk.exact:
        parts.append(shortest(_quoted_tsquery(walk.every), "every"))
        pairs = _pairs(walk)
        if pairs:  # the shortest holding a walked word and another: two words' scores
            parts.append(shortest(_quoted_tsquery(" | ".join(f"({p})" for p in pairs)), "pairs"))
    if walk.whole:  # a rare word's every match: its idf outweighs the common words' lengths
        parts.append(f"(SELECT c.seq FROM cubes c WHERE c.text_tsv @@ {_quoted_tsquery(_any(walk.whole))} AND {base})")
    return " UNION ".join(parts)


def _literal(text: str) -> str:
    # A string constant in the statement (standard_conforming_strings: only ' is special), % for psycopg.
    return "'" + text.replace("'", "''").replace("%", "%%") + "'"


def _quoted_tsquery(text: str) -> str:
    # A tsquery literal made of operands _quoted() built: a constant, so that the planner sees the words and
    # picks the walk for a common one; % doubled, as the statement goes through psycopg's parameter syntax.
    return _literal(text) + "::tsquery"


_databases: weakref.WeakKeyDictionary[psycopg.Connection, tuple] = weakref.WeakKeyDictionary()


def _database(conn: psycopg.Connection) -> tuple:
    """Which database the connection is to, as the caches here key it: asked once per connection."""
    known = _databases.get(conn)
    if known is None:
        database = _scalar(conn.execute("SELECT oid FROM pg_database WHERE datname = current_database()"))
        known = _databases[conn] = (conn.info.host, conn.info.port, int(database))
    return known


def _ranked(conn: psycopg.Connection, match_sql: str, match_params: list, terms: Sequence[str], f: CubeFilter,
            now: float, limit: int, walk: _Walk | None = None,
            stats: ScopeStats | None = None) -> list[tuple[dict, float]]:
    """The best `limit` matches passing the filter, scored by BM25 over the terms (lexemes). The filter is in
    the same query as the match, so only readable cubes are scored; with stats, N, avgdl and each term's
    document count are the readable cubes' (scope_stats); without, each term's document count is a GIN index
    lookup over all cubes with text, as FTS5 counts it (remembered on large vaults, see _doc_counts).
    With walk (plain words), matches as many as WALK_FROM are ranked from a bounded set (_walked)."""
    where, params = filter_sql(f, now)
    sized, sized_params = sized_sql(f)
    terms = list(terms)
    if stats is not None:
        n, tokens = stats.docs, stats.length
        counts = {t: stats.terms.get(t, 0) for t in terms}
    else:
        n, tokens = conn.execute("SELECT coalesce(sum(docs), 0), coalesce(sum(tokens), 0) FROM search_stats"
                                 ).fetchone() or (0, 0)
        counts = _doc_counts(conn, _database(conn), terms, max(int(n), 1))
    n, avgdl = max(int(n), 1), max(int(tokens), 1) / max(int(n), 1)
    idf = [max(math.log((n - counts[t] + 0.5) / (counts[t] + 0.5)), 1e-6) for t in terms]
    # A group's matches are at most its rarest lexeme's; the deciding groups' matches at most their sum.
    matches = sum(min(counts.get(t, n) for t in g) for g in walk.deciding) if walk else 0
    walking = walk is not None and matches >= WALK_FROM and n >= LARGE_VAULT  # small vaults: every match, exactly
    if walking:
        assert walk is not None
        walk = _split(walk, counts, n)
        matches = sum(min(counts.get(t, n) for t in g) for g in walk.deciding)
        walking = bool(walk.deciding) and matches >= WALK_FROM  # the rare words aside, too few: every match
    vault, share = n, 1.0
    if walking and (stats is not None or f.namespace_prefix):
        # The matches counted are the readable cubes' (or the vault's): about the namespace's share of them are in
        # the namespace asked for; and a walk in length order passes over the cubes that are not readable too.
        within, vault = conn.execute(
            f"SELECT coalesce(sum(s.docs) FILTER (WHERE {sized}), 0), coalesce(sum(s.docs), 0) FROM search_sizes s"
            f" WHERE s.kind = {int(MemoryKind.PLAINTEXT)}", sized_params).fetchone() or (0, 0)
        share = int(within) / n
        matches = round(matches * share)
        walking = matches >= WALK_FROM
    if walking:
        assert walk is not None
        # How many cubes each list's match holds, for the choice of walking or fetching: the words' shares of the
        # readable cubes, as if independent.
        held = {tuple(g): min(counts.get(t, n) for t in g) / n for g in walk.groups}
        every = n * share * math.prod(held.values())
        pairs = n * share * min(1.0, sum(held[tuple(d)] * held[tuple(g)] for d in walk.deciding
                                         for g in [g for g in walk.groups if g != d][:PAIRED]))
        fetch = {part: _fetches(_depth(walk, walk.top, part), int(vault), estimate, WALK_BIAS[part])
                 for part, estimate in (("any", matches), ("every", every), ("pairs", pairs))}
        candidates = _walked(walk, match_sql, where, walk.top, fetch=fetch)
        chosen = f"c.seq IN ({candidates})"
        # The parts' parameters in order: the repeats by tf and from TOP_TF on (each: the filter, then the match
        # unless exact), the shortest matches (the match, then the filter), those holding every word (the filter).
        repeats = [*params] if walk.exact else [*params, *match_params]
        chosen_params = [*repeats, *repeats, *match_params, *params, *([] if walk.exact else params),
                         *(params if _pairs(walk) and not walk.exact else []), *(params if walk.whole else [])]
    else:
        chosen = f"c.text_tsv @@ {match_sql} AND c.kind = {int(MemoryKind.PLAINTEXT)} AND {where}"
        chosen_params = [*match_params, *params]
    sql = f"""
        WITH m AS (SELECT c.seq, c.text_tsv, c.text_repeats, c.text_len FROM cubes c WHERE {chosen}),
        s AS (SELECT m.seq, {_score_sql(terms, idf, avgdl)} AS score FROM m ORDER BY score DESC, m.seq LIMIT %s)
        SELECT {_CUBE_COLUMNS}, s.score FROM s JOIN cubes c ON c.seq = s.seq ORDER BY s.score DESC, c.seq"""
    found = conn.execute(sql, [*chosen_params, terms, limit]).fetchall()
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
    if not todo:
        return found
    unknown = todo
    if n >= LARGE_VAULT:
        found.update(_sampled_counts(conn, database, todo))
        unknown = [t for t in todo if t not in found]
    if unknown:
        rows = conn.execute("SELECT t.term, (SELECT count(*) FROM cubes x WHERE x.text_tsv @@ t.q)"
                            " FROM unnest(%s::text[], %s::tsquery[]) AS t(term, q)",
                            [unknown, [_quoted(t) for t in unknown]]).fetchall()
        found.update((t, int(c)) for t, c in rows)
    if n >= LARGE_VAULT:  # sampled or counted, remembered alike (a sample is trusted only as long, see _SAMPLED)
        with _counts_lock:
            if len(_counts) > 50_000:
                _counts.clear()
            _counts.update(((database, t), (found[t], n)) for t in todo)
    return found


# ANALYZE's sample of text_tsv (pg_stats: the 1,000 commonest lexemes with the share of rows holding each) stands
# in for counting a common word, which reads every row holding it (60-90 ms for a word in 13k of 100k cubes,
# every time the vault has grown by a tenth): the share is a sample's, a few percent off, and idf = ln(N / n)
# moves by as much in hundredths. Trusted only while the table has about the rows the sample was taken from:
# within a quarter, wider than the tenth after which the upkeep analyzes again, so that between two ANALYZEs
# of a growing vault (and before autovacuum's) common words are not counted row by row (2 s of a bench's 5).
_SAMPLED = """
    SELECT u.lexeme, u.share FROM pg_stats s,
        LATERAL unnest(s.most_common_elems::text::text[], s.most_common_elem_freqs) AS u(lexeme, share)
    WHERE s.schemaname = current_schema() AND s.tablename = 'cubes' AND s.attname = 'text_tsv'"""


_sampled: dict[tuple, dict[str, float]] = {}


def _sampled_counts(conn: psycopg.Connection, database: tuple, terms: list[str]) -> dict[str, int]:
    """Estimated document counts of the terms the table's statistics hold (the common ones). The whole sample
    (at most ten times the statistics target: 1,000 lexemes by default) is read once and remembered until ANALYZE
    (or VACUUM) changes the table's row estimate: asking for each query's words read and parsed it every time
    (half a millisecond a query at 100k cubes)."""
    sampled, rows = conn.execute("SELECT reltuples, (SELECT coalesce(max(seq), 0) FROM cubes) FROM pg_class"
                                 " WHERE oid = 'cubes'::regclass").fetchone() or (0, 0)
    if not (sampled > 0 and abs(rows - sampled) <= 0.25 * rows):
        return {}
    key = (database, float(sampled))
    with _counts_lock:
        shares = _sampled.get(key)
    if shares is None:
        shares = {t: float(share) for t, share in conn.execute(_SAMPLED).fetchall()}
        with _counts_lock:
            if len(_sampled) > 16:
                _sampled.clear()
            _sampled[key] = shares
    return {t: max(1, round(shares[t] * rows)) for t in terms if t in shares}


def explain_fts_error(query: str, sqlite_message: str) -> str:
    """What is wrong with an FTS5 query, in the words of its syntax (as on SQLite: the query is read the same way;
    the message, SQLite's or PostgreSQL's, only adds where the syntax alone does not tell)."""
    return fts5_syntax_problem(query) or "it ends before an expression is complete"


_OPERATORS = {"AND": "&", "OR": "|", "NOT": "& !"}


def _from_fts5(query: str) -> tuple[str, list[str]]:
    """The tsquery text (for to_tsquery('english', ...)) an FTS5 query means, and its words. An implicit AND
    joins adjacent terms as in FTS5; FTS5's NOT is binary ("a NOT b") and binds tightest, as "a & !b" does."""
    out: list[str] = []
    words: list[str] = []
    for tok in FTS_TOKEN.findall(query):
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


# -- upkeep ----------------------------------------------------------------------------------------

# pg_try_advisory_xact_lock key of the search upkeep: one member of a cluster at a time does it, the others skip.
UPKEEP_LOCK = 0x6D656D6F_73640006
# ANALYZE the search tables once this many of their rows changed since the last (and a tenth of the table more):
# the plans above (which list a walk reads, GIN or length order) are chosen from their statistics, and with the
# statistics of a table a tenth of its size they read orders of magnitude too many rows (p95 65 -> 17 ms at 100k
# cubes). Autovacuum would, but only once its naptime (a minute) is over, and never during a bulk ingest.
ANALYZE_FROM = 1000
# Clean the GIN index's pending list (gin_clean_pending_list) once this many cubes were written since the last
# clean: every search reads that list whole (up to gin_pending_list_limit, 4 MB: +5-10 ms at 100k cubes). An
# update that is not HOT writes the row's index entries again (a search's hits have their access counts
# updated: at 100k cubes about half of those were not HOT), so those count as writes too.
CLEAN_FROM = 500
_SEARCH_TABLES = ("cubes", "cube_repeats", "cube_tags", "embeddings")
_cleaned_at: dict[tuple, int | None] = {}


def upkeep(conn: psycopg.Connection) -> list[str]:
    """Keep search fast while the vault grows: refresh the planner's statistics of the search tables and fold the
    full-text index's pending list into it when enough was written since; what it did (nothing, if another
    member is at it). Run in a write transaction of its own, every few seconds (lifecycle.tasks)."""
    if not _scalar(conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (UPKEEP_LOCK,))):
        return []
    done = []
    rows = conn.execute("SELECT s.relname, s.n_mod_since_analyze, greatest(c.reltuples, 0),"
                        " s.n_tup_ins + s.n_tup_upd - s.n_tup_hot_upd"
                        " FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid"
                        " WHERE s.schemaname = current_schema() AND s.relname = ANY(%s)",
                        (list(_SEARCH_TABLES),)).fetchall()
    stale = [name for name, changed, size, _ in rows if changed >= ANALYZE_FROM + 0.1 * size]
    if stale:
        conn.execute("ANALYZE " + ", ".join(stale))  # names of this module's own tables, not input
        done.append("analyzed " + ", ".join(stale))
    written = next((int(inserted) for name, _, _, inserted in rows if name == "cubes"), 0)
    database = _database(conn)
    last = _cleaned_at.get(database, 0)
    if last is None:
        return done
    if written - last >= CLEAN_FROM or written < last:  # counters restart after a crash or pg_stat_reset()
        try:
            with conn.transaction():  # a savepoint: a refusal keeps what was done
                pages = _scalar(conn.execute("SELECT gin_clean_pending_list('cubes_fts'::regclass)"))
        except pg_errors.InsufficientPrivilege:
            _cleaned_at[database] = None  # not this role's index to clean: autovacuum's, as it is by default
            return [*done, "cannot fold cubes_fts's pending list: this role does not own the index (autovacuum will)"]
        _cleaned_at[database] = written
        if pages:
            done.append(f"folded {pages} pending pages into cubes_fts")
    return done
