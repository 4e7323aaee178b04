"""What memosctl tells a newcomer: error messages in their words, exit statuses as documented, tables that
keep their text when piped, search scores a person can read."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest

from memos_client.cli import build_parser, main

DOCS = Path(__file__).resolve().parents[1] / "docs" / "memosctl.md"


@pytest.fixture
def ctl(daemon, capsys, tmp_path, monkeypatch):
    """Run memosctl in-process against the test daemon, in a scratch directory; (exit status, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)

    def run(*args: str, key: str | None = None):
        code = main(["--addr", daemon.address, "--key", key or str(daemon.admin_key), *args])
        out, err = capsys.readouterr()
        return code, out, err
    return run


# ---- messages ------------------------------------------------------------------------------------------------


def test_adding_a_revoked_agent_again_says_the_name_cannot_be_reused(ctl, tmp_path):
    assert ctl("agent", "add", "bob")[0] == 0
    assert ctl("agent", "revoke", "bob")[0] == 0
    code, out, err = ctl("agent", "add", "bob", "--out", "bob2.key")
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "revoked" in err and "cannot be reused" in err and "revoke it" not in err
    assert not (tmp_path / "bob2.key").exists()
    code, _, err = ctl("agent", "add", "alice")
    code, _, err = ctl("agent", "add", "alice", "--out", "alice2.key")
    assert code == 1 and "exists already" in err and "revoke" in err  # a live agent: revoking it is one way out


@pytest.mark.parametrize("query, says", [
    ("foo AND (", 'a "(" is not closed'),
    ("foo AND", '"AND" needs a term after it'),
    ("OR foo", '"OR" needs a term before it'),
    ('"unclosed phrase', "a phrase is not closed"),
    ("foo )", 'a ")" has no "(" before it'),
])
def test_a_malformed_fts_query_is_explained_in_the_users_words(ctl, query, says):
    ctl("put", "foo bar")
    code, out, err = ctl("search", query, "--fts")
    assert code == 1 and out == "" and err.count("\n") == 1
    assert says in err and "fts5" not in err and 'near ""' not in err, err


def test_empty_job_and_topic_listings_say_so(ctl):
    for args, says in ((("jobs", "ls", "--all"), "no jobs"), (("job", "ls"), "no jobs"), (("topics",), "no topics")):
        code, out, err = ctl(*args)
        assert (code, out) == (0, "") and says in err, (args, err)


def test_an_absent_socket_names_the_address_the_file_and_how_to_start_the_daemon(capsys, tmp_path):
    address = f"unix:{tmp_path}/absent.sock"
    code = main(["--addr", address, "--timeout", "5", "status"])
    out, err = capsys.readouterr()
    assert code == 1 and out == "" and err.count("\n") == 1
    assert address in err and "does not exist" in err and ("memosd serve" in err or "make run" in err)
    assert not re.search(r"failed to connect|ipv[46]|UNAVAILABLE|connect: |errno", err, re.I), err


def test_a_dead_socket_says_nothing_listens_on_it(capsys, tmp_path):
    path = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))  # a socket file that nothing accepts on, as a crashed daemon leaves behind
    code = main(["--addr", f"unix:{path}", "--timeout", "5", "status"])
    out, err = capsys.readouterr()
    assert code == 1 and err.count("\n") == 1
    assert str(path) in err and "exists" in err and "nothing" in err and "does not exist" not in err
    assert not re.search(r"failed to connect|ipv[46]|UNAVAILABLE|errno", err, re.I), err


# ---- exit statuses ---------------------------------------------------------------------------------------------


def test_paths_named_on_the_command_line_that_cannot_be_opened_exit_2(ctl, tmp_path):
    missing = str(tmp_path / "missing")
    cases = {
        "put -f": ("put", "-f", missing),
        "import": ("import", missing),
        "import bundle": ("import", missing + ".tar.gz"),
        "--key": ("ls",),
        "adapter push DIR": ("adapter", "push", missing, "--model", "ab" * 32),
        "adapter push --base-model": ("adapter", "push", str(tmp_path), "--base-model", missing),
    }
    for what, args in cases.items():
        code, out, err = ctl(*args, key=missing + ".key" if what == "--key" else None)
        assert code == 2 and out == "" and err.count("\n") == 1 and "missing" in err, (what, code, err)


def test_errors_past_the_command_line_exit_1(ctl, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff")
    assert ctl("put", "-f", str(bad))[0] == 1  # a file that opens but cannot be sent
    assert ctl("get", "01ARZ3NDEKTSV4RRFFQ69G5FAV")[0] == 1  # the daemon refuses
    key = tmp_path / "not-a.key"
    key.write_text("{}")
    assert ctl("ls", key=str(key))[0] == 1  # a key file that opens but is no key


def test_the_exit_status_rule_is_documented_in_the_docs_and_help():
    docs = DOCS.read_text()
    assert re.search(r"\| 2 \| .*(file|directory).*cannot be (opened|read)", docs)
    assert "--key" in docs.split("## Exit status")[1].split("##")[0]
    assert "2 usage error or a path that cannot be opened" in build_parser().epilog


# ---- tables ----------------------------------------------------------------------------------------------------


def test_tables_piped_keep_every_character(ctl, client, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)  # stdout is pytest's capture: not a terminal
    long_ns = "agents/administrators-with-a-long-name/notes/2026"
    text = "a much longer text " * 12
    client.put(text.strip(), long_ns, tags=["one-long-tag", "another-long-tag"])
    client.put("short", "agents/a/n")
    code, out, _ = ctl("ls")
    lines = out.splitlines()
    assert code == 0 and "…" not in out and long_ns in out and text.strip() in out
    assert "one-long-tag,another-long-tag" in out and re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", lines[1])
    assert lines[0].index("TEXT") == lines[2].index("short")  # still aligned
    monkeypatch.setenv("COLUMNS", "80")  # COLUMNS is honoured when given
    code, out, _ = ctl("ls")
    assert all(len(line) <= 80 for line in out.splitlines()) and "…" in out


def test_help_says_how_tables_are_sized():
    assert "COLUMNS" in build_parser().epilog


# ---- search scores -----------------------------------------------------------------------------------------------


def test_search_scores_read_as_relevance_on_a_small_vault(ctl):
    ctl("put", "Alice prefers window seats on long flights", "-t", "travel")
    ctl("put", "The quarterly budget review is on Monday at 10")
    ctl("put", "The budget meeting moved to Tuesday")
    code, out, _ = ctl("search", "when is the budget meeting")
    rows = [line.split()[0] for line in out.splitlines()]
    assert code == 0 and rows[0] == "SCORE" and len(rows) == 3
    scores = [float(s) for s in rows[1:]]
    assert all(re.fullmatch(r"[01]\.\d\d", s) for s in rows[1:]) and scores[0] == 1.0 and scores == sorted(
        scores, reverse=True)
    code, out, _ = ctl("search", "when is the budget meeting", "--json")
    hits = [json.loads(line) for line in out.splitlines()]
    assert [round(h["relevance"], 2) for h in hits] == scores
    assert all(h["bm25_score"] == h["score"] > 0 for h in hits)  # the raw figures stay in --json
