"""Words in scripts written without spaces between them (Chinese, Japanese, Thai, Lao, Khmer, Myanmar; and
Korean, whose particles join the word before them), made searchable by both engines' word tokenizers.

SQLite's unicode61 and PostgreSQL's parser both take a run of such letters for one word: 我喜欢吃苹果和香蕉 was
one term, so 苹果 found nothing. What both engines index instead is the text with each run written as its
overlapping character pairs (苹果和香蕉 -> 苹果 果和 和香 香蕉), as Lucene's CJK bigrams do, and the run's
single characters after the whole field (so that a one-character query, 猫, finds 小猫; kept at the end, they
leave a phrase's pairs next to each other). Combining marks (Thai vowels and tones above and below a letter) are
left out of the pairs: SQLite's tokenizer splits a word at them where PostgreSQL's does not, and the pairs must
be the same terms on both. A query's runs become the same pairs (a one-character run: that character).

INDEX_FUNCTION is what both engines' indexing calls (SQLite: a function each connection registers; PostgreSQL:
the same steps in PL/pgSQL, schema m0013). Its output is part of every index built with it: SQLite's
contentless index removes a text by the terms it indexed. Changing RUN, MARKS or index_text needs a new
function name and a migration reindexing on both engines.
"""

from __future__ import annotations

import re

# Thai and Lao, Myanmar, Hangul jamo, Khmer, 々〆〇, Hiragana and Katakana (not the separators ゠ and ・),
# Hangul compatibility jamo, Katakana extensions, CJK ideographs (extension A, the main block), Hangul
# syllables, compatibility ideographs, half-width Katakana, ideographs of the supplementary planes. Written as
# escapes that Python's and PostgreSQL's regular expressions both read.
RUN = (r"\u0e00-\u0eff\u1000-\u109f\u1100-\u11ff\u1780-\u17ff\u3005-\u3007\u3040-\u309f\u30a1-\u30fa\u30fc-\u30ff"
       r"\u3130-\u318f\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f"
       r"\U00020000-\U0003134f")
# The combining marks (Unicode categories Mn and Mc) within RUN's ranges, as Unicode 14 lists them.
MARKS = (r"\u0e31\u0e34-\u0e3a\u0e47-\u0e4e\u0eb1\u0eb4-\u0ebc\u0ec8-\u0ecd\u102b-\u103e\u1056-\u1059\u105e-\u1060"
         r"\u1062-\u1064\u1067-\u106d\u1071-\u1074\u1082-\u108d\u108f\u109a-\u109d\u17b4-\u17d3\u17dd\u3099-\u309a")
INDEX_FUNCTION = "memosd_index_text_v1"

_RUN = re.compile(f"[{RUN}]+")
_MARK = re.compile(f"[{MARKS}]")
# A query's words: runs, and words of other scripts (letters, digits and _, as \w, but not a run's letters).
_WORD = re.compile(f"[{RUN}]+|[^\\W{RUN}]+")


def _units(run: str) -> str:
    return _MARK.sub("", run)


def _pairs(units: str) -> list[str]:
    return [units[i:i + 2] for i in range(len(units) - 1)] or [units]


def index_text(text: str | None) -> str | None:
    """The text as the full-text index reads it: each run as its pairs, the runs' characters at the end."""
    if text is None or not _RUN.search(text):
        return text
    tail: list[str] = []

    def spaced(run: re.Match) -> str:
        units = _units(run[0])
        if len(units) > 1:
            tail.extend(units)
        return " " + " ".join(_pairs(units)) + " "

    body = _RUN.sub(spaced, text)
    return body + " " + " ".join(tail) if tail else body


def words(text: str) -> list[str]:
    """The words of a plain query, each run as its pairs (not lower-cased, not deduplicated)."""
    found: list[str] = []
    for word in _WORD.findall(text):
        if _RUN.match(word):
            units = _units(word)
            found += _pairs(units) if units else []
        else:
            found.append(word)
    return found


def fts_query(query: str, tokens: list[str]) -> str:
    """An FTS5 query (given with its tokens, storage.fts5.FTS_TOKEN's) with each run as its pairs: inside a
    phrase the pairs in order (still a phrase); a term holding a run, its parts as terms (a run: a phrase of
    its pairs), which FTS5 ANDs; a prefix ("苹果*") of a run is the run. Unchanged where there is no run."""
    if not _RUN.search(query):
        return query
    out: list[str] = []
    for tok in tokens:
        if not _RUN.search(tok):
            out.append(tok)
        elif tok.startswith('"'):
            out.append(_RUN.sub(lambda run: " " + " ".join(_pairs(_units(run[0]))) + " ", tok))
        else:
            out += [f'"{" ".join(_pairs(_units(part)))}"' if _RUN.match(part) else part
                    for part in re.split(f"([{RUN}]+)", tok) if _units(part) and re.search(r"\w", part)]
    return " ".join(out)
