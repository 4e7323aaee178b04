"""Command bodies that several memosctl commands share."""

from __future__ import annotations

import sys

from memos_client._terminal import emit
from memos_client.client import MemosClient
from memos_client.errors import MemosError, Unavailable
from memos_client.models import Kind

EXIT_ERROR = 1


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
