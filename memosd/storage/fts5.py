"""FTS5's query syntax, which both engines read (SQLite natively, PostgreSQL translated into a tsquery)."""

from __future__ import annotations

import re

FTS_TOKEN = re.compile(r'"(?:[^"]|"")*"?|[()]|[^\s()"]+')
OPERATORS = ("AND", "OR", "NOT")
COLUMN = re.compile(r"([^\s:\"()]+):")  # FTS5's column filter, "col:term" (unquoted)
# BM25's weight of a query word's occurrences in each field of a cube, as FTS5's bm25() weighs columns: its text,
# its search context (CubeDraft.context: neighbouring turns, a header) and its metadata's string values. Context
# and metadata describe the cube's surroundings rather than say what it says, so they count for less; on the
# LoCoMo dev split (bench/locomo.py) a context weight of 0.35 to 0.5 did about equally well, and 0.2 or 0.7 worse.
FIELD_WEIGHTS = (1.0, 0.4, 0.5)
# FTS5's bm25() constants, which both engines' own BM25 scoring uses too.
K1, B = 1.2, 0.75
# The words of an FTS5 query's terms (a plain query's: memosd.storage.segment.words).
WORD = re.compile(r"\w+", re.UNICODE)


def fts5_syntax_problem(query: str) -> str | None:
    """What is wrong with an FTS5 query's structure (phrases, parentheses, operators, column filters), in the
    words of its syntax; None if its structure is sound. Engine-neutral: PostgreSQL reads the same syntax."""
    tokens = FTS_TOKEN.findall(query)
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
        if tok in OPERATORS:
            if before is None or before == "(" or before in OPERATORS:
                return f'"{tok}" needs a term before it'
            if after is None or after == ")" or after in OPERATORS:
                return f'"{tok}" needs a term after it'
        if tok == "(" and after == ")":
            return '"()" holds no terms'
        column = COLUMN.match(tok)
        if column:
            return column_problem(column[1])
    return None


def column_problem(name: str) -> str:
    return (f'"{name}" reads as a column name (a word before ":" or after "-"); put words with'
            ' punctuation in "quotes"')
