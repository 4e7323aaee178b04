"""memosctl's activation-memory commands: kv (ls, show, rm, build)."""

from __future__ import annotations

import sys

from memos_client.cli._terminal import Table, emit, size, when
from memos_client.cli.common import action, remove_cubes
from memos_client.cli.jobs import follow
from memos_client.client import MemosClient
from memos_client.errors import MemosError
from memos_client.models import Cube, Kind


def add_commands(command) -> None:
    """Register the commands with cli.app.build_parser's `command(name, run, help)`."""
    p = command("kv", None, "activation memory: KV caches stored as cubes (list, show, remove, build from text)")
    sub = p.add_subparsers(dest="kv_command", required=True, metavar="ACTION")
    a = action(sub, "ls", "list activation cubes, oldest first")
    a.add_argument("-n", "--namespace", metavar="PREFIX", help="only this namespace and those under it")
    a.add_argument("--model", metavar="FINGERPRINT", help="only caches of this model (a fingerprint or its start)")
    a.add_argument("--limit", type=int, default=0, metavar="N", help="at most N cubes (default all)")
    a.set_defaults(run=_kv_ls)
    a = action(sub, "show", "one activation cube: its model, tokens, layers and size")
    a.add_argument("id")
    a.add_argument("--tokens", action="store_true", help="also print the token ids of the prefix")
    a.set_defaults(run=_kv_show)
    a = action(sub, "rm", "delete activation cubes (their payload goes once nothing references it)")
    a.add_argument("ids", nargs="+", metavar="ID")
    a.set_defaults(run=_kv_rm)
    a = action(sub, "build", "have the daemon prefill its model with plaintext cubes and store the KV cache")
    a.add_argument("ids", nargs="+", metavar="ID", help="plaintext cubes, prefilled in this order")
    a.add_argument("-n", "--namespace", help="where to store the cache (default agents/AGENT/kv)")
    a.add_argument("--template", default="", help='how each cube is written: "{text}" (default) and "{id}" are replaced')
    a.add_argument("--separator", default="", help="between cubes (default a blank line)")
    a.add_argument("--prefix", default="", help="text before the first cube, e.g. a system prompt")
    a.add_argument("--suffix", default="", help="text after the last cube")
    a.add_argument("-t", "--tag", dest="tags", action="append", default=[], metavar="TAG", help="a tag (repeat)")
    a.add_argument("--no-special-tokens", action="store_true", help="tokenize without BOS and other special tokens")
    a.add_argument("--detach", action="store_true", help="print the job id and return at once")
    a.add_argument("--progress", action="store_true", help="show the progress bar even when stderr is not a terminal")
    a.set_defaults(run=_kv_build)


# ---- kv --------------------------------------------------------------------------------------------------


def _kv_row(cube: Cube) -> tuple[str, ...]:
    act = cube.activation
    return (cube.id, cube.namespace, act.model_fingerprint[:12], str(act.num_tokens), str(act.num_layers),
            act.dtype, size(act.blob.size), when(cube.updated_at))


def _kv_json(cube: Cube, token_ids: bool = False) -> dict:
    out = cube.to_json()
    out["activation"] = cube.activation.to_json(token_ids=token_ids)
    return out


def _kv_ls(client: MemosClient, args) -> int:
    table = Table(("ID", "NAMESPACE", "MODEL", "TOKENS", "LAYERS", "DTYPE", "SIZE", "UPDATED"),
                  sizes=((26, 26), (10, 28), (12, 12), (6, 8), (6, 6), (8, 8), (8, 10)))
    shown = 0
    for cube in client.list(args.namespace, kinds=[Kind.ACTIVATION]):
        if cube.activation is None or (args.model and not cube.activation.model_fingerprint.startswith(args.model)):
            continue
        if args.json:
            emit(_kv_json(cube))
        else:
            table.row(_kv_row(cube))
        shown += 1
        if shown == args.limit:
            break
    table.flush()
    if not shown and not args.json:
        print("no KV caches match", file=sys.stderr)
    return 0


def _kv_show(client: MemosClient, args) -> int:
    cube = client.get(args.id)
    if cube.activation is None:
        raise MemosError(f"cube {cube.id} is a {cube.kind.name.lower()} cube, not a KV cache")
    if args.json:
        emit(_kv_json(cube, token_ids=args.tokens))
        return 0
    act = cube.activation
    shapes = sorted({f"key {list(k.shape)} value {list(v.shape)}" for k, v in act.layers})
    for key, value in (
        ("id", cube.id), ("namespace", cube.namespace), ("model", act.model_fingerprint),
        ("tokenizer", act.tokenizer_fingerprint or "-"), ("dtype", act.dtype),
        ("tokens", f"{act.num_tokens} (prefix sha256 {act.prefix_hash[:16]}…)"),
        ("layers", f"{act.num_layers}: " + "; ".join(shapes)), ("layout", act.layout),
        ("size", f"{size(act.blob.size)} ({act.blob.size} bytes, sha256 {act.blob.sha256})"),
        ("from", ", ".join(cube.derived_from) or "-"), ("source", cube.source or "-"),
        ("tags", ", ".join(cube.tags) or "-"), ("owner", cube.owner), ("created", when(cube.created_at)),
        ("version", str(cube.version)),
    ):
        print(f"{key:<10} {value}")
    if args.tokens:
        print(f"{'token ids':<10} {' '.join(map(str, act.token_ids))}")
    return 0


def _kv_rm(client: MemosClient, args) -> int:
    return remove_cubes(client, args.ids, args.json, Kind.ACTIVATION, "a KV cache")


def _kv_build(client: MemosClient, args) -> int:
    job = client.build_kv(args.ids, args.namespace, template=args.template, separator=args.separator,
                          prefix=args.prefix, suffix=args.suffix, tags=args.tags,
                          special_tokens=not args.no_special_tokens)
    if args.detach:
        if args.json:
            emit(job.to_json())
        else:
            print(job.id)
        return 0
    return follow(client, job.id, args)
