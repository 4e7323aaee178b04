"""memosctl: the command line for people, a thin layer over MemosClient."""

from __future__ import annotations

import argparse
import os
import sys

from memos_client.cli import governance, jobs, kv, mcp, ops, parametric, plaintext, store
from memos_client.cli.common import (
    EXIT_ERROR, EXIT_USAGE, InputError, UsageError, add_globals, check_addr, check_key, fail,
)
from memos_client.client import MemosClient
from memos_client.errors import MemosError

COMMANDS = ("put", "get", "ls", "search", "history", "rm", "import", "status",
            "whoami", "agent", "grant", "policy", "audit", "backup", "export", "pub", "sub", "topics", "retention",
            "kv", "job", "adapter", "distill", "plan", "jobs", "mcp")


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed usage (exit 2) or help (exit 0)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        targets = check_addr(args.addr)
        check_key(args.key)
        with MemosClient(targets, key=args.key, timeout=args.timeout) as client:
            return args.run(client, args)
    except UsageError as exc:
        return fail(str(exc), EXIT_USAGE)
    except InputError as exc:
        return fail(str(exc))
    except MemosError as exc:
        return fail(exc.message)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `memosctl ls | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("memosd")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memosctl", description="memosctl: read and write the memory of a running memosd.",
        epilog="The daemon is found at --addr, else $MEMOS_ADDR (several, separated by commas: the next is "
               "tried when one is down), else the default socket "
               "($XDG_RUNTIME_DIR/memosd/memosd.sock, else the system service's /run/memosd/memosd.sock); "
               "calls are signed with --key, else $MEMOS_KEY, else that daemon's admin key if readable. "
               "Exit status: 0 ok, 1 error, 2 usage error or a path that cannot be opened (-f FILE, --key, "
               "an import file, an adapter or model directory). Tables fit the terminal; when stdout is not a "
               "terminal they are printed whole, unless COLUMNS is set.")
    add_globals(parser, in_command=False)
    parser.add_argument("--version", action="version", version=f"memosctl {_version()}")
    common = argparse.ArgumentParser(add_help=False)
    add_globals(common, in_command=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=text, description=text)
        if run is not None:  # commands with actions (agent add, ...) set it on each action
            p.set_defaults(run=run)
        return p

    plaintext.add_commands(command)
    governance.add_commands(command)
    ops.add_commands(command)
    store.add_commands(command)
    kv.add_commands(command)
    jobs.add_commands(command, "job", "background jobs (kv build, ...): list, show, watch, cancel",
                      "one job's state and progress")
    parametric.add_commands(command)
    jobs.add_commands(command, "jobs",
                      "background jobs (distill, kv build): list, show, watch, cancel; as memosctl job",
                      "one job's state, progress and metrics")
    mcp.add_commands(command)
    assert tuple(sub.choices) == COMMANDS
    return parser
