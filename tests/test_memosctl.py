"""memosctl against the real daemon: in-process through main(), and once as the installed console script."""

import argparse
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from memos_client import NotFound, State
from memos_client.cli import COMMANDS, build_parser, main

DOCS = Path(__file__).resolve().parents[1] / "docs" / "memosctl.md"


@pytest.fixture
def ctl(daemon, capsys):
    """Run memosctl in-process against the test daemon; returns (exit status, stdout, stderr)."""
    def run(*args: str):
        code = main(["--addr", daemon.address, "--key", str(daemon.admin_key), *args])
        out, err = capsys.readouterr()
        return code, out, err
    return run


@pytest.fixture
def stdin(monkeypatch):
    def feed(data: bytes) -> None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    return feed


def jsonl(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def test_put_from_argument_file_and_stdin(ctl, client, tmp_path, stdin):
    meta = ["--meta", "speaker=alice", "--meta", "turn:=3", "--meta", "flag:=true"]
    code, out, err = ctl("put", "from the argument", "-n", "agents/me/notes", "-t", "a", "-t", "b",
                         "--source", "cli", *meta)
    assert (code, err) == (0, "")
    cube = client.get(out.strip())
    assert (cube.text, cube.namespace, cube.tags, cube.source) == (
        "from the argument", "agents/me/notes", ["a", "b"], "cli")
    assert cube.metadata == {"speaker": "alice", "turn": 3, "flag": True}

    path = tmp_path / "note.txt"
    path.write_bytes("\ufeffline one\nline two — ünïcode\n".encode())
    code, out, _ = ctl("put", "-f", str(path))
    cube = client.get(out.strip())
    assert code == 0 and cube.text == "line one\nline two — ünïcode"
    assert cube.namespace == "agents/admin/notes"

    stdin(b"piped text\n")
    code, out, _ = ctl("put", "-", "--ttl", "3600")
    cube = client.get(out.strip())
    assert code == 0 and cube.text == "piped text" and cube.expires_at is not None


def test_put_json_prints_the_cube(ctl):
    code, out, _ = ctl("--json", "put", "as json", "-t", "x")
    (obj,) = jsonl(out)
    assert code == 0 and obj["text"] == "as json" and obj["tags"] == ["x"] and obj["version"] == 1


def test_put_invalid_utf8_file_names_file_and_offset(ctl, client, tmp_path):
    path = tmp_path / "bad.txt"
    data = b"caf\xc3\xa9 ok then \xff bad"
    path.write_bytes(data)
    code, out, err = ctl("put", "-f", str(path))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and str(path) in err and f"byte {data.index(0xFF)}" in err and "UTF-8" in err
    assert list(client.list()) == []


def test_put_usage_errors_exit_2(ctl, tmp_path):
    assert ctl("put")[0] == 2
    assert ctl("put", "text", "-f", str(tmp_path / "x"))[0] == 2
    code, _, err = ctl("put", "-f", str(tmp_path / "missing.txt"))
    assert code == 2 and err.startswith("memosctl: cannot read") and err.count("\n") == 1
    assert ctl("put", "x", "--meta", "novalue")[0] == 2
    assert ctl("put", "x", "--meta", "k:={bad json")[0] == 2
    assert ctl("search", "x", "--limit", "0")[0] == 2
    assert ctl("put", "x", "--ttl", "0.5")[0] == 2
    assert ctl("nonsense")[0] == 2


def test_daemon_error_is_one_line_exit_1(ctl):
    code, out, err = ctl("put", "x", "-n", "Not A Namespace")
    assert code == 1 and out == "" and err.count("\n") == 1 and err.startswith("memosctl: namespace")
    code, out, err = ctl("get", "01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert code == 1 and out == "" and err == "memosctl: no cube with id 01ARZ3NDEKTSV4RRFFQ69G5FAV\n"


def test_get_shows_cube_and_versions(ctl, client):
    cube = client.put("first text", "agents/a/n", tags=["t"], metadata={"k": "v"})
    client.update(cube.id, text="second\ntext")
    code, out, _ = ctl("get", cube.id)
    assert code == 0 and f"id           {cube.id}" in out and "version      2 (parent 1)" in out
    assert '{"k": "v"}' in out and out.endswith("\nsecond\ntext\n")
    code, out, _ = ctl("get", cube.id, "--version", "1", "--json")
    (obj,) = jsonl(out)
    assert (obj["id"], obj["version"], obj["text"], obj["metadata"]) == (cube.id, 1, "first text", {"k": "v"})


def test_ls_filters_and_pages_over_more_than_one_page(ctl, client):
    ids = client.put_many([{"text": f"note {i}", "namespace": "agents/a/n" if i % 2 else "agents/b/n",
                            "tags": ["even"] if i % 2 == 0 else []} for i in range(12)])
    code, out, _ = ctl("ls", "--json", "--page-size", "5")
    assert code == 0 and [o["id"] for o in jsonl(out)] == ids
    code, out, _ = ctl("ls", "--json", "--page-size", "2", "-n", "agents/a")
    assert [o["id"] for o in jsonl(out)] == ids[1::2]
    code, out, _ = ctl("ls", "--json", "-t", "even", "--limit", "4", "--page-size", "3")
    assert [o["id"] for o in jsonl(out)] == ids[0:8:2]
    client.update(ids[0], state=State.ARCHIVED)
    code, out, _ = ctl("ls", "--json", "--state", "archived")
    assert [o["id"] for o in jsonl(out)] == [ids[0]]
    code, out, err = ctl("ls", "-n", "agents/nobody")
    assert (code, out, err) == (0, "", "no cubes match\n")


def test_ls_table_is_aligned_and_fits_the_terminal(ctl, client, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    client.put("short", "agents/a/n", tags=["t1"])
    client.put("a much longer text " * 20, "agents/a/n/deeper", tags=["t1", "t2"])
    client.put("日本語のテキスト" * 10, "agents/a/n", tags=["jp"])
    code, out, _ = ctl("ls", "--page-size", "1")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["ID", "NAMESPACE", "TAGS", "UPDATED", "TEXT"]
    starts = [lines[0].index(h) for h in ("NAMESPACE", "TAGS", "UPDATED", "TEXT")]
    for line in lines[1:]:
        assert all(line[s - 2:s] == "  " and line[s] != " " for s in starts[:3])
    assert lines[2].endswith("…") and len(lines[2]) == 80
    assert lines[3].endswith("…") and len(lines[3]) < 80  # wide characters count twice
    monkeypatch.setenv("COLUMNS", "74")  # too narrow for every column in full: namespace and tags give way
    code, out, _ = ctl("ls")
    assert all(len(line) <= 74 for line in out.splitlines()) and "agents/a/…" in out


def test_search_limit_and_json_fields(ctl, client):
    client.put("the quarterly budget review is on Monday", "teams/finance/notes", tags=["meeting"],
               metadata={"room": "4b"})
    for i in range(12):
        client.put(f"budget line {i}", "agents/a/n")
    client.put("my cat sleeps on the keyboard", "agents/b/n")
    code, out, _ = ctl("search", "budget")
    assert code == 0 and len(out.splitlines()) == 1 + 10 and out.startswith("SCORE")
    code, out, _ = ctl("search", "quarterly budget review", "--limit", "2", "--json")
    hits = jsonl(out)
    assert len(hits) == 2 and hits[0]["score"] >= hits[1]["score"] > 0
    assert {"id", "score", "text", "namespace", "tags", "metadata"} <= set(hits[0])
    assert (hits[0]["text"], hits[0]["namespace"], hits[0]["tags"], hits[0]["metadata"]) == (
        "the quarterly budget review is on Monday", "teams/finance/notes", ["meeting"], {"room": "4b"})
    code, out, _ = ctl("search", "budget", "-n", "teams", "--json")
    assert len(jsonl(out)) == 1
    code, out, _ = ctl("search", "cat OR quarterly", "--fts", "--json", "--mode", "bm25")
    assert len(jsonl(out)) == 2
    code, out, err = ctl("search", "zebra")
    assert (code, out, err) == (0, "", "no hits\n")


def test_history_and_rm(ctl, client):
    cube = client.put("v1", "agents/a/n")
    client.update(cube.id, text="v2")
    other = client.put("other", "agents/a/n")
    code, out, err = ctl("rm", cube.id, "01ARZ3NDEKTSV4RRFFQ69G5FAV", other.id)
    assert code == 1 and out == f"deleted {cube.id}\ndeleted {other.id}\n"
    assert err == "memosctl: no cube with id 01ARZ3NDEKTSV4RRFFQ69G5FAV\n"
    with pytest.raises(NotFound):
        client.get(other.id)
    code, out, _ = ctl("history", cube.id)
    rows = [line.split() for line in out.splitlines()]
    assert code == 0 and rows[0] == ["VERSION", "STATE", "UPDATED", "TAGS", "TEXT"]
    assert [(r[0], r[1]) for r in rows[1:]] == [("1", "active"), ("2", "active"), ("3", "deleted")]
    code, out, _ = ctl("history", cube.id, "--json")
    assert [(o["version"], o["state"], o["text"]) for o in jsonl(out)] == [
        (1, "active", "v1"), (2, "active", "v2"), (3, "deleted", None)]


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_import_jsonl_in_batches(ctl, client, tmp_path):
    records = [{"text": f"fact {i}", "namespace": "agents/imp/notes", "tags": ["imp"], "metadata": {"i": i}}
               for i in range(7)] + ["", {"text": "no namespace"}]
    path = write_jsonl(tmp_path / "in.jsonl", records)
    code, out, err = ctl("import", str(path), "--batch-size", "3", "-n", "agents/default/ns")
    assert (code, out, err) == (0, "imported 8 cubes\n", "")  # stderr is no terminal: no bar
    cubes = list(client.list())
    assert [c.text for c in cubes] == [f"fact {i}" for i in range(7)] + ["no namespace"]
    assert cubes[3].metadata == {"i": 3} and cubes[3].tags == ["imp"]
    assert cubes[-1].namespace == "agents/default/ns"

    code, out, err = ctl("import", str(path), "--json", "--progress", "--batch-size", "4")
    lines = jsonl(out)
    assert code == 0 and [o["line"] for o in lines] == [1, 2, 3, 4, 5, 6, 7, 9]
    assert client.get(lines[-1]["id"]).text == "no namespace"
    assert re.search(r"importing +\[[#.]{30}\] +\d+%", err) and err.endswith("imported 8 cubes\n")


def test_import_from_stdin(ctl, client, stdin):
    stdin(b'{"text": "one"}\n{"text": "two", "tags": ["x"]}')
    code, out, _ = ctl("import", "-")
    assert code == 0 and out == "imported 2 cubes\n" and [c.text for c in client.list()] == ["one", "two"]


def test_import_stops_at_a_bad_line_and_names_it(ctl, client, tmp_path):
    records = [{"text": f"good {i}"} for i in range(5)] + ['{"text": "broken"', {"text": "after"}]
    code, out, err = ctl("import", str(write_jsonl(tmp_path / "bad.jsonl", records)), "--batch-size", "2")
    assert code == 1 and out == "imported 5 cubes\n" and err.count("\n") == 1
    assert "bad.jsonl line 6: not valid JSON" in err and "nothing from that line on" in err
    assert [c.text for c in client.list()] == [f"good {i}" for i in range(5)]


@pytest.mark.parametrize("line, problem", [
    ('["a list"]', "expected a JSON object"),
    ('{"text": "x", "tags": "not-a-list"}', '"tags" must be a list of strings'),
    ('{"text": "x", "metadata": [1]}', '"metadata" must be a JSON object'),
    ('{"text": "x", "colour": "red"}', "unknown fields ['colour']"),
    ('{"namespace": "agents/a/n"}', '"text"'),
])
def test_import_bad_record_shapes(ctl, client, tmp_path, line, problem):
    path = write_jsonl(tmp_path / "shape.jsonl", [{"text": "fine"}, line])
    code, out, err = ctl("import", str(path))
    assert code == 1 and out == "imported 1 cube\n" and "line 2: " in err and problem in err


def test_import_invalid_utf8_names_line_and_byte(ctl, client, tmp_path):
    path = tmp_path / "utf.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    code, out, err = ctl("import", str(path))
    assert code == 1 and out == "imported 1 cube\n" and "line 2: invalid UTF-8 at byte 28" in err


def test_import_batch_rejected_by_daemon_claims_only_acknowledged(ctl, client, tmp_path):
    records = [{"text": f"good {i}"} for i in range(4)] + [{"text": "   "}, {"text": "after"}]
    code, out, err = ctl("import", str(write_jsonl(tmp_path / "blank.jsonl", records)), "--batch-size", "3")
    assert code == 1 and out == "imported 3 cubes\n" and err.count("\n") == 1
    assert "blank.jsonl line 5: text is empty" in err  # the daemon named the cube; memosctl names its line
    assert err.endswith("3 cubes imported (through line 3), nothing after\n")
    assert [c.text for c in client.list()] == ["good 0", "good 1", "good 2"]


def test_import_batch_rejected_without_a_cube_named_gives_the_batch_lines(ctl, client, tmp_path):
    records = [{"text": f"good {i}"} for i in range(4)]
    records += [{"text": "bad", "namespace": "Bad Namespace"}, {"text": "x"}]
    path = write_jsonl(tmp_path / "ns.jsonl", records)
    code, out, err = ctl("import", str(path), "--batch-size", "3")
    where = re.search(r"ns\.jsonl lines? (\d+)(?:-(\d+))?: namespace 'Bad Namespace'", err)
    assert code == 1 and out == "imported 3 cubes\n" and where
    assert int(where[1]) <= 5 <= int(where[2] or where[1])
    code, out, err = ctl("import", str(path), "--batch-size", "1")  # a batch of one cube: exactly its line
    assert code == 1 and out == "imported 4 cubes\n" and "ns.jsonl line 5: namespace 'Bad Namespace'" in err
    assert len(list(client.list())) == 3 + 4


def test_status_table_and_json(ctl, client):
    client.put("x", "agents/a/n")
    code, out, _ = ctl("status")
    assert code == 0 and re.search(r"^version +\S+", out, re.M)
    assert re.search(r"^plaintext +1 +0 +0 +0$", out, re.M)
    code, out, _ = ctl("status", "--json")
    (obj,) = jsonl(out)
    assert obj["counts"] == {"plaintext": {"active": 1}} and obj["data_bytes"] > 0 and obj["version"]


def test_daemon_not_running_is_one_helpful_line(capsys, tmp_path):
    code = main(["--addr", f"unix:{tmp_path}/absent.sock", "--timeout", "5", "status"])
    out, err = capsys.readouterr()
    assert code == 1 and out == "" and err.count("\n") == 1
    assert err.startswith("memosctl: cannot reach memosd at unix:") and "is the daemon running?" in err


def test_no_key_is_one_line_naming_the_fix(daemon, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("MEMOS_KEY", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))  # no default admin key to fall back on
    code = main(["--addr", daemon.address, "ls"])
    out, err = capsys.readouterr()
    assert code == 1 and out == "" and err.count("\n") == 1 and "--key" in err
    code = main(["--addr", daemon.address, "--key", str(tmp_path / "missing.key"), "ls"])
    out, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "missing.key does not exist" in err  # a path that cannot be opened


def test_console_script_follows_the_connection_contract(daemon, tmp_path):
    script = Path(sys.executable).with_name("memosctl")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "memos_client.cli"]
    env = {**os.environ, "MEMOS_ADDR": daemon.address, "MEMOS_KEY": str(daemon.admin_key)}

    def run(*args, **env_changes):
        return subprocess.run([*cmd, *args], env={**env, **env_changes}, capture_output=True, text=True,
                              timeout=60)

    put = run("put", "via the console script", "-t", "sub")
    assert put.returncode == 0, put.stderr
    shown = run("--json", "get", put.stdout.strip(), MEMOS_ADDR=daemon.address.removeprefix("unix:"))
    assert json.loads(shown.stdout)["text"] == "via the console script"
    dead = f"unix:{tmp_path}/dead.sock"
    override = run("status", "--addr", daemon.address, MEMOS_ADDR=dead)
    assert override.returncode == 0 and "plaintext" in override.stdout
    refused = run("status", MEMOS_ADDR=dead)
    assert refused.returncode == 1 and refused.stdout == "" and refused.stderr.count("\n") == 1
    assert dead in refused.stderr and "Traceback" not in refused.stderr


def test_global_options_go_before_or_after_the_command():
    parser = build_parser()
    given = ["--json", "--addr", "unix:/a", "--key", "k", "--timeout", "3"]
    before, after = parser.parse_args([*given, "ls"]), parser.parse_args(["ls", *given])
    neither = parser.parse_args(["ls"])
    assert (before.json, before.addr, before.key, before.timeout) == (True, "unix:/a", "k", 3)
    assert (after.json, after.addr, after.key, after.timeout) == (True, "unix:/a", "k", 3)
    assert (neither.json, neither.addr, neither.key, neither.timeout) == (False, None, None, 30.0)


def test_every_command_and_option_is_documented():
    docs = DOCS.read_text()
    examples = "\n".join(re.findall(r"```sh\n(.*?)```", docs, re.S))
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert tuple(sub.choices) == COMMANDS
    for name, parser in sub.choices.items():
        assert f"## memosctl {name}\n" in docs, f"no section for memosctl {name}"
        assert re.search(rf"\bmemosctl {name}\b", examples), f"no example of memosctl {name}"
        for action in parser._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    assert re.search(rf"{flag}(?![\w-])", docs), f"memosctl {name} {flag} is not documented"
