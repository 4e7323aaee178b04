"""memosctl's operations commands: backup, export, bundle imports, and the metrics in `status`."""

from __future__ import annotations

import sys
from pathlib import Path

from memos_client.cli._terminal import emit, size
from memos_client.cli.common import UsageError
from memos_client.client import MemosClient

KINDS = ("plaintext", "activation", "parametric")


def add_commands(command) -> None:
    """Register the commands with cli.app.build_parser's `command(name, run, help)`."""
    p = command("backup", _backup, "write a consistent online backup of the whole daemon into a new"
                " directory (admin); restore it with `memosd restore DEST`")
    p.add_argument("dest", help="a directory that does not exist yet (or is empty)")

    p = command("export", _export, "export the cubes of a namespace (or all you may read) as a portable bundle:"
                " a directory, or a .tar / .tar.gz file")
    p.add_argument("dest", help="a new directory, or a file name ending in .tar or .tar.gz")
    p.add_argument("-n", "--namespace", default="", metavar="PREFIX",
                   help="this namespace and those under it (default: every namespace you may read)")
    p.add_argument("--kind", dest="kinds", action="append", choices=KINDS, default=[],
                   help="only cubes of this kind (repeat; default all kinds)")
    p.add_argument("--no-policies", action="store_true",
                   help="leave out the signed policies that grant on the exported namespaces")
    p.add_argument("--format", choices=("memosd", "memos"), default="memosd",
                   help="memosd: a memosd bundle (default); memos: a MemOS MemCube directory that MemOS's"
                   " GeneralMemCube.init_from_dir loads (textual memories; the rest is noted)")
    p.add_argument("--kv-model", metavar="MODEL",
                   help="--format memos: write the KV caches too, in MemOS's activation_memory.pickle, for MODEL"
                   " (the model MemOS is to load for them: a Hugging Face name or a local directory)")


def add_import_options(p) -> None:
    """The options `memosctl import` takes for bundles and MemOS dumps."""
    p.add_argument("--format", choices=("auto", "memosd", "memos"), default="auto",
                   help="what FILE is when it is not JSON Lines: a memosd bundle, or a MemOS MemCube dump"
                   " (default: decided from its files)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="MemOS dumps: read activation_memory.pickle with the daemon's tensors-only unpickler")
    p.add_argument("--model", metavar="DIR",
                   help="MemOS dumps, with --allow-pickle: bind the dump's KV caches to this local model directory"
                   " (checked against its config, fingerprinted) and store them as activation cubes")
    p.add_argument("--no-policies", action="store_true", help="bundles: do not store the bundle's policies")


def is_bundle(path: str) -> bool:
    """A directory or a tar file: a bundle or a MemOS dump, not JSON Lines."""
    return path != "-" and (Path(path).is_dir() or path.endswith((".tar", ".tar.gz", ".tgz")))


def import_bundle(client: MemosClient, args) -> int:
    result = client.import_bundle(args.file, args.namespace or "", format=args.format,
                                  allow_pickle=args.allow_pickle, skip_policies=args.no_policies, model=args.model)
    if args.json:
        emit(result.to_json())
        return 0
    parts = [f"{result.cubes} cubes imported from {args.file} ({result.format})"]
    if result.skipped:
        parts.append(f"{result.skipped} already here")
    if result.renamed:
        parts.append(f"{result.renamed} under new ids")
    if result.policies_applied or result.policies_skipped:
        parts.append(f"{result.policies_applied} policies applied, {result.policies_skipped} not")
    print("; ".join(parts))
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def _backup(client: MemosClient, args) -> int:
    manifest = client.backup(args.dest)
    total = sum(f["size"] for f in manifest["files"])
    if args.json:
        emit({"dest": args.dest, "files": len(manifest["files"]), "bytes": total,
              "snapshot_at": manifest["snapshot_at"], "daemon_id": manifest["daemon_id"]})
    else:
        print(f"backed up {len(manifest['files'])} files ({size(total)}) to {args.dest};"
              f" restore with: memosd restore {args.dest} --data-dir DIR")
    return 0


def _export(client: MemosClient, args) -> int:
    if args.format == "memos":
        return _export_memos(client, args)
    if args.kv_model:
        raise UsageError("--kv-model goes with --format memos")
    manifest = client.export(args.dest, args.namespace, kinds=args.kinds, omit_policies=args.no_policies)
    counts = manifest["counts"]
    if args.json:
        emit({"dest": args.dest, "root": manifest["root"], "counts": counts,
              "bytes": sum(f["size"] for f in manifest["files"])})
    else:
        kinds = ", ".join(f"{counts[k]} {k}" for k in KINDS if counts.get(k))
        print(f"exported {counts['cubes']} cubes ({kinds or 'none'}) and {counts['policies']} policies"
              f" under {manifest['root'] or 'every namespace'} to {args.dest}")
    return 0


def _export_memos(client: MemosClient, args) -> int:
    summary = client.export(args.dest, args.namespace, kinds=args.kinds, omit_policies=args.no_policies,
                            format="memos", kv_model=args.kv_model)
    if args.json:
        emit({"dest": args.dest, **summary})
        return 0
    kv = f" and {summary['counts']['kv_caches']} KV caches" if "kv_caches" in summary["counts"] else ""
    print(f"exported {summary['counts']['memories']} textual memories{kv} under {summary['root'] or 'every namespace'}"
          f" to {args.dest} (a MemOS MemCube: GeneralMemCube.init_from_dir loads it)")
    for note in summary["notes"]:
        print(f"note: {note}", file=sys.stderr)
    return 0


def print_metrics(m: dict | None) -> None:
    """The daemon's metrics as `memosctl status` shows them: storage, streams, and calls by method."""
    if not m:
        return
    print()
    print(f"{'STORAGE':<13}{'BYTES':>12}")
    for kind, n in m["usage"].items():
        print(f"{kind:<13}{size(n):>12}")
    for label, key in (("blob store", "blob_store_bytes"), ("database", "database_bytes"), ("wal", "wal_bytes")):
        print(f"{label:<13}{size(m[key]):>12}")
    print()
    print(f"subscribers {m['subscribers']} ({m['subscriber_queue_depth']} events queued,"
          f" {m['slow_subscribers_dropped']} dropped as slow)   auth denials {m['auth_denials']}   metrics "
          + (f"http://{m['metrics_address']}/metrics" if m["metrics_address"] else "off (metrics_listen)"))
    calls: dict[tuple[str, str], list[int]] = {}
    for r in m["requests"]:
        entry = calls.setdefault((r["service"], r["method"]), [0, 0])
        entry[0] += r["count"]
        entry[1] += r["count"] if r["code"] != "OK" else 0
    if not calls:
        return
    latency = {(x["service"], x["method"]): x for x in m["latencies"]}
    print()
    print(f"{'METHOD':<34}{'CALLS':>9}{'ERRORS':>9}{'P50':>10}{'P99':>10}")
    for (service, method), (n, errors) in sorted(calls.items()):
        x = latency.get((service, method), {})
        name = f"{service.rsplit('.', 1)[-1]}/{method}"
        print(f"{name:<34}{n:>9}{errors:>9}{_ms(x.get('p50_seconds', 0)):>10}{_ms(x.get('p99_seconds', 0)):>10}")


def _ms(seconds: float) -> str:
    """Histogram quantiles are bucket edges: an upper bound."""
    return f"<={seconds * 1000:g}ms" if seconds < 1 else f"<={seconds:g}s"
