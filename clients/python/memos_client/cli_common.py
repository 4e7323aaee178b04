"""Command bodies that several memosctl commands share."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from memos_client._terminal import emit
from memos_client.client import MemosClient
from memos_client.errors import MemosError, Unavailable
from memos_client.models import Kind

EXIT_ERROR, EXIT_USAGE = 1, 2


class UsageError(Exception):
    """The command line cannot be carried out as given (exit 2): a missing or malformed argument, or a path
    it names (or $MEMOS_KEY names) that does not exist or cannot be opened."""


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
