"""What every memosctl command group shares: option parsing, exit codes, errors, the key check and output."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from memos_client.cli._terminal import emit
from memos_client.client import MemosClient
from memos_client.addresses import resolve_targets
from memos_client.errors import InvalidArgument, MemosError, Unavailable
from memos_client.models import Kind

EXIT_ERROR, EXIT_USAGE = 1, 2


class UsageError(Exception):
    """The command line cannot be carried out as given (exit 2): a missing or malformed argument, or a path
    it names (or $MEMOS_KEY names) that does not exist or cannot be opened."""


class InputError(Exception):
    """A file or stdin holds something memosctl cannot send (exit 1)."""


def fail(message: str, code: int = EXIT_ERROR) -> int:
    print(f"memosctl: {' '.join(message.split())}", file=sys.stderr)
    return code


# ---- command line ------------------------------------------------------------------------------------------


def positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
        return value
    parse.__name__ = kind.__name__
    return parse


def add_globals(parser: argparse.ArgumentParser, *, in_command: bool) -> None:
    # Accepted before or after the command; in a command's parser they default to "not given" so that
    # they never overwrite what was given before the command.
    def default(value):
        return argparse.SUPPRESS if in_command else value
    parser.add_argument("--addr", default=default(None), help="unix:/path/to.sock or host:port, or several "
                        "separated by commas (a cluster's daemons, tried in order; default: $MEMOS_ADDR, else the "
                        "default socket)")
    parser.add_argument("--key", default=default(None), metavar="FILE", help="the agent key to call as "
                        "(default: $MEMOS_KEY, else the default data directory's admin key)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="one JSON object per line, for scripts")
    parser.add_argument("--timeout", type=positive(float), default=default(30.0), metavar="SECONDS",
                        help="deadline of each call to the daemon (default 30)")


def action(sub, name: str, text: str) -> argparse.ArgumentParser:
    """One action of a command with actions (`agent add`, `kv ls`, ...); the global options (--json, --addr,
    ...) are accepted after the action too, as after any command."""
    a = sub.add_parser(name, help=text, description=text)
    add_globals(a, in_command=True)
    return a


def check_addr(given: str | None) -> list[str]:
    """The daemons to call, from --addr, else $MEMOS_ADDR, else the default socket; a UsageError names a bad one."""
    try:
        return resolve_targets(given, "--addr")
    except InvalidArgument as exc:
        raise UsageError(exc.message) from None


def check_key(given: str | None) -> None:
    """The key file named by --key, else by $MEMOS_KEY, can be read (without either, the client looks for the
    daemon's admin key); else a UsageError naming where it was given."""
    key = given or os.environ.get("MEMOS_KEY")
    if key:
        readable(key, "key file" if given else "key file ($MEMOS_KEY)")


def readable(path: str, what: str, *, directory: bool = False) -> Path:
    """The path, expanded, if it can be opened; else a UsageError naming it as `what`."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"{what} {path} does not exist")
    if directory and not p.is_dir():
        raise UsageError(f"{what} {path} is not a directory")
    if not directory and p.is_dir():
        raise UsageError(f"{what} {path} is a directory, not a file")
    if not os.access(p, os.R_OK | (os.X_OK if directory else 0)):
        raise UsageError(f"cannot read {what} {path}: permission denied")
    return p


def remove_cubes(client: MemosClient, ids, as_json: bool, kind: Kind | None = None, noun: str = "") -> int:
    """Delete each cube (of `kind`, when given); one bad id does not stop the others. Exit status."""
    failed = 0
    for cube_id in ids:
        try:
            if kind is not None:
                cube = client.get(cube_id)
                if cube.kind is not kind:
                    raise MemosError(f"{cube_id} is a {cube.kind.name.lower()} cube, not {noun}; use memosctl rm")
            version = client.delete(cube_id)
        except Unavailable:
            raise
        except MemosError as exc:
            failed += 1
            message = exc.message if cube_id in exc.message else f"{cube_id}: {exc.message}"
            print(f"memosctl: {' '.join(message.split())}", file=sys.stderr)
            continue
        if as_json:
            emit({"id": cube_id, "deleted": True, "version": version})
        else:
            print(f"deleted {cube_id}")
    return EXIT_ERROR if failed else 0
