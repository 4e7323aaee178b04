"""memosctl's plaintext commands: put, get, ls, search, history, rm, import (JSON Lines), and status."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from array import array
from dataclasses import asdict
from typing import IO
from collections.abc import Iterator

from memos_client import requests as rq
from memos_client.cli import ops
from memos_client.cli._terminal import Progress, Table, duration, emit, print_cube, size, when
from memos_client.cli.common import InputError, UsageError, fail, positive, readable, remove_cubes
from memos_client.client import MemosClient
from memos_client.errors import InvalidArgument, MemosError
from memos_client.models import State

STATES = ("active", "archived", "expired")


def _meta_pair(text: str) -> tuple[str, object]:
    """KEY=VALUE keeps VALUE as a string; KEY:=JSON parses it (numbers, booleans, lists, objects)."""
    key, sep, value = text.partition("=")
    as_json = key.endswith(":")
    key = key.removesuffix(":")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: use KEY=VALUE for a string, KEY:=JSON for a typed value")
    if not as_json:
        return key, value
    try:
        return key, json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not JSON ({exc.msg})") from None


def add_commands(command) -> None:
    """Register the commands with cli.app.build_parser's `command(name, run, help)`."""
    def filters(p: argparse.ArgumentParser) -> None:
        p.add_argument("-n", "--namespace", metavar="PREFIX", help="only this namespace and those under it")
        p.add_argument("-t", "--tag", dest="tags", action="append", default=[], metavar="TAG",
                       help="only cubes with this tag (repeat: all of them)")

    p = command("put", _put, "store one plaintext cube and print its id")
    p.add_argument("text", nargs="?", help='the text; "-" reads it from stdin')
    p.add_argument("-f", "--file", help="read the text from this file (UTF-8)")
    p.add_argument("-n", "--namespace", help="(default agents/AGENT/notes, AGENT being the key's agent)")
    p.add_argument("-t", "--tag", dest="tags", action="append", default=[], metavar="TAG",
                   help="a tag (repeat)")
    p.add_argument("--meta", action="append", default=[], type=_meta_pair, metavar="KEY=VALUE",
                   help="metadata: KEY=VALUE (a string) or KEY:=JSON (repeat)")
    p.add_argument("--source", default="", help="where the text came from")
    p.add_argument("--ttl", type=positive(int), metavar="SECONDS", help="expire after this many seconds")

    p = command("get", _get, "show one cube")
    p.add_argument("id")
    p.add_argument("--version", type=positive(int), default=0, metavar="N",
                   help="this version (default the latest)")

    p = command("ls", _ls, "list cubes, oldest first")
    filters(p)
    p.add_argument("--state", dest="states", action="append", choices=STATES, default=[],
                   help="only cubes in this state (repeat; default active)")
    p.add_argument("--limit", type=positive(int), metavar="N", help="at most N cubes (default all)")
    p.add_argument("--page-size", type=positive(int), default=100, metavar="N", help="cubes per request")

    p = command("search", _search, "rank plaintext cubes against a query; SCORE is relative to the best hit"
                " (1.00), --json adds the raw score, bm25_score and dense_score")
    p.add_argument("query")
    filters(p)
    p.add_argument("--limit", type=positive(int), default=10, metavar="N",
                   help="at most N hits (default 10)")
    p.add_argument("--mode", choices=tuple(rq.MODES), default="auto",
                   help="retrieval method (default auto)")
    p.add_argument("--fts", action="store_true",
                   help="read the query as SQLite FTS5 syntax (AND, OR, \"phrase\")")

    p = command("history", _history, "show every version of a cube")
    p.add_argument("id")

    p = command("rm", _rm, "delete cubes (each keeps a tombstone in its history)")
    p.add_argument("ids", nargs="+", metavar="ID")

    p = command("import", _import, "store cubes from a JSON Lines file (one cube per line), an export bundle"
                " or a MemOS MemCube dump")
    p.add_argument("file", help='JSON Lines file ("-" reads stdin); or a bundle directory, .tar or .tar.gz;'
                   " or a MemOS dump directory")
    p.add_argument("-n", "--namespace", help="namespace of lines that name none (default agents/AGENT/notes);"
                   " for a bundle, the namespace its root is imported as")
    ops.add_import_options(p)
    p.add_argument("--batch-size", type=positive(int), default=500, metavar="N",
                   help="cubes per durable batch (default 500)")
    p.add_argument("--progress", action="store_true",
                   help="show the progress bar even when stderr is not a terminal")

    command("status", _status, "show the daemon's version, uptime, cube counts and data size")


# ---- commands ----------------------------------------------------------------------------------------------


def _put(client: MemosClient, args) -> int:
    if args.file is not None and args.text is not None:
        raise UsageError("give the text as an argument, with -f FILE, or as - for stdin; not two of them")
    if args.file is not None:
        text = _read_text(args.file)
    elif args.text == "-":
        text = _read_text("-")
    elif args.text is not None:
        text = args.text
    else:
        raise UsageError('put needs text: memosctl put "some text", put -f FILE, or put - to read stdin')
    cube = client.put(text, args.namespace, tags=args.tags, metadata=dict(args.meta), source=args.source,
                      ttl=args.ttl)
    if args.json:
        emit(cube.to_json())
    else:
        print(cube.id)
    return 0


def _get(client: MemosClient, args) -> int:
    cube = client.get(args.id, args.version)
    if args.json:
        emit(cube.to_json())
    else:
        print_cube(cube)
    return 0


def _ls(client: MemosClient, args) -> int:
    page_size = min(args.page_size, args.limit or args.page_size)
    cubes = client.list(args.namespace, page_size=page_size, tags=args.tags,
                        states=[State[s.upper()] for s in args.states])
    table = Table(("ID", "NAMESPACE", "TAGS", "UPDATED", "TEXT"),
                   sizes=((26, 26), (10, 32), (4, 24), (16, 16)))
    shown = 0
    for cube in cubes:
        if args.json:
            emit(cube.to_json())
        else:
            table.row((cube.id, cube.namespace, ",".join(cube.tags), when(cube.updated_at), cube.text or ""))
        shown += 1
        if shown == args.limit:
            break
    table.flush()
    if not shown and not args.json:
        print("no cubes match", file=sys.stderr)
    return 0


def _search(client: MemosClient, args) -> int:
    hits = client.search(args.query, args.namespace, limit=args.limit, mode=args.mode, fts=args.fts,
                         tags=args.tags)
    table = Table(("SCORE", "ID", "NAMESPACE", "TAGS", "TEXT"),
                   sizes=((5, 5), (26, 26), (10, 32), (4, 24)))
    # Raw BM25 depends on the vault's size (about 1e-6 on a handful of cubes) and fused scores on the mode:
    # shown relative to this query's best hit they read the same everywhere; --json keeps the raw ones.
    best = max((hit.score for hit in hits), default=0.0)
    for hit in hits:
        relevance = hit.score / best if best > 0 else 0.0
        if args.json:
            emit({"relevance": relevance, **hit.to_json()})
        else:
            c = hit.cube
            table.row((f"{relevance:.2f}", c.id, c.namespace, ",".join(c.tags), c.text or ""))
    table.flush()
    if not hits and not args.json:
        print("no hits", file=sys.stderr)
    return 0


def _history(client: MemosClient, args) -> int:
    table = Table(("VERSION", "STATE", "UPDATED", "TAGS", "TEXT"),
                   sizes=((7, 7), (7, 8), (16, 16), (4, 24)))
    for cube in client.history(args.id):
        if args.json:
            emit(cube.to_json())
        else:
            table.row((str(cube.version), cube.state.name.lower(), when(cube.updated_at),
                       ",".join(cube.tags), cube.text or ""))
    table.flush()
    return 0


def _rm(client: MemosClient, args) -> int:
    return remove_cubes(client, args.ids, args.json)


def _status(client: MemosClient, args) -> int:
    s = client.status()
    if args.json:
        emit(asdict(s))
        return 0
    embedding = f"{s.embedding_model} ({s.embedding_backlog} cubes waiting)" if s.embedding_model else \
        "none (lexical search only)"
    for key, value in (("version", s.version), ("listen", s.listen), ("uptime", duration(s.uptime_seconds)),
                       ("data", size(s.data_bytes)), ("embedding", embedding)):
        print(f"{key:<10} {value}")
    print()
    states = ("active", "archived", "expired", "deleted")
    rows = [(kind, *(str(counts.get(st, 0)) for st in states)) for kind, counts in sorted(s.counts.items())]
    if not rows:
        print("no cubes yet")
    for row in [("KIND", *(st.upper() for st in states)), *rows]:
        print(f"{row[0]:<11}" + "".join(f"{cell:>10}" for cell in row[1:]))
    _print_members(s)
    ops.print_metrics(s.metrics)
    return 0


def _print_members(s) -> None:
    """The cluster: every daemon sharing this one's vault, and when the vault last heard from each (the admin's
    to see: an agent is shown no member)."""
    if not s.members:
        return
    print()
    print(f"bus        {s.bus or 'none (other members are heard from by polling the vault)'}")
    print(f"{'MEMBER':<28} {'VERSION':<10} {'LAST HEARD':<22} LISTEN")
    for m in s.members:
        heard = f"{duration(m.seconds_since_heard)} ago" + (" (stale)" if m.stale else "")
        name = m.member_id + (" *" if m.local else "")
        print(f"{name:<28} {m.version:<10} {heard:<22} {m.listen}")


# ---- import ------------------------------------------------------------------------------------------------


class _BadLine(Exception):
    def __init__(self, line: int, problem: str):
        super().__init__(f"line {line}: {problem}")
        self.line = line


class _ImportRun:
    """What the JSON Lines reader (on gRPC's request thread) and the acknowledgements share."""

    def __init__(self) -> None:
        self.lines = array("q")  # line number of each record sent
        self.ends = array("q")  # byte offset just past each record's line
        self.stopped: Exception | None = None
        self.acknowledged = 0


def _records(stream: IO[bytes], default_namespace: str, run: _ImportRun) -> Iterator:
    """Drafts from JSON Lines; stops at the first bad line and records why."""
    offset = 0
    try:
        for number, raw in enumerate(stream, 1):
            start, offset = offset, offset + len(raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _BadLine(number, f"invalid UTF-8 at byte {start + exc.start} of the file") from None
            if number == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            draft = _draft(number, line, default_namespace)
            run.lines.append(number)
            run.ends.append(offset)
            yield draft
    except Exception as exc:  # gRPC would swallow it on its thread: hand it to the caller instead
        run.stopped = exc


def _draft(number: int, line: str, default_namespace: str):
    try:
        item = json.loads(line.strip())
    except json.JSONDecodeError as exc:
        raise _BadLine(number, f"not valid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(item, dict):
        raise _BadLine(number, 'expected a JSON object like {"text": "...", "namespace": "...", "tags": []}')
    if item.get("namespace") is None:
        item["namespace"] = default_namespace
    tags, metadata = item.get("tags"), item.get("metadata")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        raise _BadLine(number, '"tags" must be a list of strings')
    if metadata is not None and not isinstance(metadata, dict):
        raise _BadLine(number, '"metadata" must be a JSON object')
    try:
        return rq.draft_from_dict(item)
    except MemosError as exc:
        raise _BadLine(number, exc.message) from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise _BadLine(number, f"a field has the wrong type ({exc})") from None


def _import(client: MemosClient, args) -> int:
    if args.file != "-":
        readable(args.file, "import file", directory=os.path.isdir(args.file))
    if ops.is_bundle(args.file):
        return ops.import_bundle(client, args)
    name = "stdin" if args.file == "-" else args.file
    stream = _open_bytes(args.file)
    run = _ImportRun()
    total = _regular_file_size(stream)
    progress = Progress(sys.stderr, total, args.progress or sys.stderr.isatty())

    def on_batch(acknowledged: int) -> None:
        run.acknowledged = acknowledged
        progress.update(acknowledged, run.ends[acknowledged - 1])

    try:
        with stream:
            records = _records(stream, client.default_namespace if args.namespace is None else args.namespace, run)
            ids = client.put_many(records, batch_size=args.batch_size,
                                  on_batch=on_batch)
    except (MemosError, KeyboardInterrupt) as exc:
        progress.finish()
        _summary(run.acknowledged, args.json)
        if isinstance(exc, KeyboardInterrupt):
            fail(f"interrupted; {_imported(run)}; anything after that is unconfirmed")
            raise
        return fail(_rejected(name, exc, run, args.batch_size))
    progress.finish()
    if args.json:
        for line, cube_id in zip(run.lines, ids):
            emit({"line": line, "id": cube_id})
    _summary(len(ids), args.json)
    if isinstance(run.stopped, _BadLine):
        return fail(f"{name} {run.stopped}; {_imported(run)}, nothing from that line on")
    if isinstance(run.stopped, OSError):
        return fail(f"cannot read {name}: {run.stopped.strerror or run.stopped}; {_imported(run)}")
    if run.stopped is not None:
        raise run.stopped
    return 0


def _imported(run: _ImportRun) -> str:
    if not run.acknowledged:
        return "nothing was imported"
    return f"{_cubes(run.acknowledged)} imported (through line {run.lines[run.acknowledged - 1]})"


def _rejected(name: str, exc: MemosError, run: _ImportRun, batch_size: int) -> str:
    """The error line for a failed stream, naming the line the daemon refused where it can be known."""
    batch = run.lines[run.acknowledged:run.acknowledged + batch_size]
    if not isinstance(exc, InvalidArgument) or not batch:
        return f"{exc.message}; {_imported(run)}; anything after that is unconfirmed"
    index, sep, reason = exc.message.removeprefix("cube ").partition(" of the batch: ")
    if sep and index.isdigit() and int(index) < len(batch):  # the daemon named the cube within the batch
        where, exc.message = f"line {batch[int(index)]}", reason
    else:
        where = f"line {batch[0]}" if len(batch) == 1 else f"lines {batch[0]}-{batch[-1]}"
    return f"{name} {where}: {exc.message}; {_imported(run)}, nothing after"


def _cubes(count: int) -> str:
    return f"{count} cube{'' if count == 1 else 's'}"


def _summary(count: int, as_json: bool) -> None:
    print(f"imported {_cubes(count)}", file=sys.stderr if as_json else sys.stdout)


# ---- input -------------------------------------------------------------------------------------------------


def _open_bytes(path: str) -> IO[bytes]:
    if path == "-":
        # A duplicate descriptor, so that closing what we read leaves the process's stdin open.
        return os.fdopen(os.dup(sys.stdin.fileno()), "rb") if _has_fileno(sys.stdin) else sys.stdin.buffer
    try:
        return open(path, "rb")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None


def _has_fileno(stream) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


def _regular_file_size(stream: IO[bytes]) -> int | None:
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _read_text(path: str) -> str:
    """The whole file (or stdin), strict UTF-8, less a byte-order mark and one final line break."""
    name = "stdin" if path == "-" else path
    with _open_bytes(path) as stream:
        data = stream.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = data[exc.start:exc.start + 1]
        raise InputError(f"{name} is not valid UTF-8: byte {exc.start} ({bad!r}) cannot start or continue "
                         "a character") from None
    text = text.removeprefix("\ufeff")
    return text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")

