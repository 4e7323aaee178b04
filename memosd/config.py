"""Daemon settings: defaults, then the TOML file, then MEMOSD_* variables, then command-line flags."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from memos_mip.defaults import default_data_dir, default_socket_path
from memosd.errors import InvalidArgument
from memosd.limits import Limits
from memosd.storage.urls import POSTGRESQL, check_blob_url, vault_engine

CONFIG_NAME = "memosd.toml"
LOG_LEVELS = ("debug", "info", "warning", "error")
# As memosd.runtime.embedder.PRECISIONS, which this module does not import (it would load numpy at start).
EMBEDDING_PRECISIONS = ("fp32", "int8", "bf16")
EMBEDDING_RUNTIMES = ("auto", "torch")


@dataclass(frozen=True)
class Config:
    """Everything `memosd serve` needs; build_server takes one of these."""

    data_dir: Path = field(default_factory=default_data_dir)
    listen: str = field(default_factory=lambda: f"unix:{default_socket_path()}")
    log_level: str = "info"
    # Where the vault's records live: "sqlite:" (the data directory) or postgresql://USER@HOST:PORT/DB (libpq's
    # URL: ?host=/socket/dir, sslmode=...; a password from PGPASSWORD or ~/.pgpass). Left out of repr: a URL
    # may carry a password, and nothing shows it but storage.urls.redact.
    vault_url: str = field(default="sqlite:", repr=False)
    # Where blobs (tensor payloads) live: "file:" (the data directory) or s3://BUCKET/PREFIX, with
    # s3_endpoint_url for an S3-compatible service other than AWS.
    blob_url: str = "file:"
    s3_endpoint_url: str = ""
    # The bus that tells the daemons sharing a PostgreSQL vault_url of each other's commits: nats://HOST:PORT
    # (loopback) or tls://HOST:PORT, several comma-separated; empty: none. Without it (or while it is down)
    # they find each other's commits by reading the vault every cluster_poll_interval seconds.
    bus_url: str = field(default="", repr=False)
    # With tls:// bus URLs: the CA file that signed the NATS servers' certificates (empty: the system's CAs), and
    # a client certificate and key for servers that ask for one. A tls:// server that offers no TLS is refused.
    bus_tls_ca: str = ""
    bus_tls_cert: str = ""
    bus_tls_key: str = ""
    cluster_poll_interval: float = 0.5
    # Directory of a Hugging Face encoder for dense search; empty means BM25 only.
    embedding_model: str = ""
    # torch threads for embedding (backfill and queries); 0 picks a quarter of the cores, at least 1.
    embedding_threads: int = 0
    # "fp32" (the weights as stored) or "int8" (Linear layers quantized: faster, vectors less like fp32's).
    embedding_precision: str = "fp32"
    # auto: fp32 encoding through ONNX Runtime where it is installed and gives the same vectors (else torch).
    embedding_runtime: str = "auto"
    # Directory of a local Hugging Face causal LM that builds KV caches from plaintext (kv build), and
    # the dtype to load it in ("auto": the checkpoint's, as from_pretrained does); empty: no builds.
    activation_model: str = ""
    activation_dtype: str = "auto"
    # The base model adapters are distilled for (a local causal LM directory) and its dtype; empty: the
    # activation model (with activation_dtype), so one setting serves both kinds of promotion.
    parametric_model: str = ""
    parametric_dtype: str = "auto"
    sweep_interval: float = 30.0
    # Seconds a job stays with the cluster member running it without a renewal (it renews every second while
    # alive): after that another member takes the job over (PostgreSQL vault only).
    job_lease: float = 30.0
    access_flush_interval: float = 2.0
    shutdown_grace: float = 10.0
    # MemStore: events a subscriber may fall behind before its stream ends with RESOURCE_EXHAUSTED,
    # open subscriptions per agent, and the retention a new topic starts with (0: no limit).
    subscriber_queue: int = 1024
    subscriptions_per_agent: int = 64
    topic_max_events: int = 100_000
    topic_max_age: float = 0.0
    # Prometheus metrics over HTTP on this loopback host:port (e.g. 127.0.0.1:9464); empty: off.
    metrics_listen: str = ""
    # TLS for TCP listeners; required off loopback. A client CA makes client certificates mandatory.
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # The audit key that signs checkpoints of the audit chain (empty: DATA_DIR/audit.key; its checkpoint
    # file goes beside it). Somewhere the database's writers cannot reach is what makes the signature count.
    audit_key: str = ""
    # Sign the audit chain's head after this many entries (0: never by count) and this many seconds
    # (0: never by time); it is signed at every clean shutdown too.
    audit_checkpoint_entries: int = 1000
    audit_checkpoint_interval: float = 60.0
    # Cluster: seconds between this member's heartbeats in the vault (a member silent for three is shown as
    # stale), and between its checks of the vault for governance changes made at other members (the bound on
    # how late a grant or revocation made elsewhere takes effect here when no bus brings the news sooner).
    member_heartbeat_interval: float = 5.0
    governance_poll_interval: float = 0.5
    limits: Limits = field(default_factory=Limits)


_LIMIT_KEYS = {f.name for f in dataclasses.fields(Limits)}
# Settings in seconds, and the least each may be (0 turns some off: no topic age limit, no governance poll).
_SECONDS = {"sweep_interval": "above 0", "access_flush_interval": "above 0", "shutdown_grace": "0 or more",
            "topic_max_age": "0 or more", "audit_checkpoint_interval": "0 or more", "job_lease": "above 0",
            "member_heartbeat_interval": "above 0", "governance_poll_interval": "0 or more",
            "cluster_poll_interval": "above 0"}
_TOP_KEYS = {f.name for f in dataclasses.fields(Config)} - {"limits"}


def load_config(flags: dict | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Merge the sources in order of precedence; flags with value None are not given."""
    env = os.environ if env is None else env
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    from_env = {k[len("MEMOSD_"):].lower(): v for k, v in env.items() if k.startswith("MEMOSD_")}
    from_env.pop("config", None)
    data_dir = Path(flags.get("data_dir") or from_env.get("data_dir") or default_data_dir()).expanduser()
    path = flags.pop("config", None) or env.get("MEMOSD_CONFIG") or _systemd_config(env)
    from_file: dict = {}
    if path or (data_dir / CONFIG_NAME).is_file():
        path = Path(path or data_dir / CONFIG_NAME)
        try:
            from_file = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidArgument(f"cannot read config file {path}: {exc}") from None
    merged: dict = {}
    for source in (from_file, from_env, flags):
        merged.update(source)
    return _build(merged)


def _systemd_config(env) -> str | None:
    """CONFIGURATION_DIRECTORY/memosd.toml when the unit's ConfigurationDirectory holds one."""
    directory = env.get("CONFIGURATION_DIRECTORY", "").split(":")[0]
    if directory and (Path(directory) / CONFIG_NAME).is_file():
        return str(Path(directory) / CONFIG_NAME)
    return None


def _build(values: dict) -> Config:
    top, limits = {}, {}
    for key, value in values.items():
        if key in _TOP_KEYS:
            top[key] = value
        elif key in _LIMIT_KEYS:
            limits[key] = int(value)
        elif key == "limits" and isinstance(value, dict):
            limits.update({k: int(v) for k, v in value.items() if k in _LIMIT_KEYS})
    try:
        for key in _SECONDS:
            if key in top:
                top[key] = float(top[key])
        for key in ("subscriber_queue", "subscriptions_per_agent", "topic_max_events", "embedding_threads",
                    "audit_checkpoint_entries"):
            if key in top:
                top[key] = int(top[key])
    except ValueError as exc:
        raise InvalidArgument(f"bad number in config: {exc}") from None
    if "data_dir" in top:
        top["data_dir"] = Path(top["data_dir"]).expanduser()
    config = Config(**top, limits=Limits(**limits))
    for key, least in _SECONDS.items():
        value = getattr(config, key)
        # "nan" and "inf" parse as floats; an interval of either never fires (or fires always).
        if not (math.isfinite(value) and (value > 0 if least == "above 0" else value >= 0)):
            raise InvalidArgument(f"{key} must be a finite number of seconds {least}")
    if config.embedding_threads < 0:
        raise InvalidArgument("embedding_threads must be 0 (a quarter of the cores) or a number of threads")
    if config.embedding_precision not in EMBEDDING_PRECISIONS:
        raise InvalidArgument(f"embedding_precision must be one of {', '.join(EMBEDDING_PRECISIONS)}")
    if config.embedding_runtime not in EMBEDDING_RUNTIMES:
        raise InvalidArgument(f"embedding_runtime must be one of {', '.join(EMBEDDING_RUNTIMES)}")
    if config.log_level not in LOG_LEVELS:
        raise InvalidArgument(f"log_level must be one of {', '.join(LOG_LEVELS)}")
    check_listen(config.listen, tls=bool(config.tls_cert))
    vault_engine(config.vault_url)
    check_blob_url(config.blob_url)
    if config.bus_url:
        check_bus_url(config.bus_url, config.vault_url)
    if config.metrics_listen:
        check_metrics_listen(config.metrics_listen)
    if bool(config.tls_cert) != bool(config.tls_key):
        raise InvalidArgument("tls_cert and tls_key go together: set both or neither")
    if bool(config.bus_tls_cert) != bool(config.bus_tls_key):
        raise InvalidArgument("bus_tls_cert and bus_tls_key go together: set both or neither")
    return config


def check_listen(listen: str, tls: bool = False) -> None:
    """A Unix socket, or a TCP port: on loopback, or anywhere with TLS."""
    if listen.startswith("unix:") or listen.startswith("/"):
        return
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit():
        raise InvalidArgument(f"listen address {listen!r}: use unix:/path/to.sock or 127.0.0.1:PORT")
    if host != "localhost" and not tls:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise InvalidArgument(
                f"listen address {listen!r} is not loopback; off loopback memosd needs TLS (tls_cert and tls_key)"
            )


def check_bus_url(url: str, vault_url: str) -> None:
    """nats://HOST:PORT on loopback, or tls://HOST:PORT anywhere (comma-separated for several servers); only
    with a PostgreSQL vault, the one thing the daemons on a bus share."""
    if vault_engine(vault_url) != POSTGRESQL:
        raise InvalidArgument("bus_url joins the daemons that share a PostgreSQL vault_url, and this vault is"
                              " sqlite: (this daemon's alone): set vault_url = postgresql://... or leave bus_url out")
    for one in url.split(","):
        one = one.strip()
        scheme, sep, rest = one.partition("://")
        host, _, port = rest.rpartition("@")[2].rpartition(":")
        shown = f"{scheme}{sep}{host}:{port}" if sep else "the value given"
        if scheme not in ("nats", "tls") or not sep or not host or not port.isdigit() or "/" in rest:
            raise InvalidArgument(f"bus_url {shown}: use nats://HOST:PORT (loopback) or tls://HOST:PORT")
        if scheme == "nats":
            try:
                loopback = host.strip("[]") == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                raise InvalidArgument(f"bus_url {shown} is not loopback; off loopback the bus needs TLS:"
                                      f" tls://{host}:{port}")


def check_metrics_listen(listen: str) -> str:
    """host:port on loopback: the metrics endpoint has no authentication and no TLS."""
    if listen.startswith(("unix:", "/")) or not listen.rpartition(":")[2].isdigit():
        raise InvalidArgument(f"metrics_listen {listen!r}: use a loopback host:port like 127.0.0.1:9464")
    check_listen(listen)
    return listen


def socket_path(listen: str) -> Path | None:
    """The socket file of a unix: address, None for TCP."""
    if listen.startswith("/"):
        return Path(listen)
    if not listen.startswith("unix:"):
        return None
    rest = listen[len("unix:"):]
    return Path(rest[2:] if rest.startswith("//") else rest)


def write_default_config(data_dir: Path) -> Path:
    """The commented config file `memosd init` writes."""
    path = data_dir / CONFIG_NAME
    path.write_text(
        "# memosd configuration. Precedence: command-line flags > MEMOSD_* variables > this file.\n"
        f'# listen = "unix:{default_socket_path()}"   # or "127.0.0.1:7700"\n'
        '# log_level = "info"\n'
        '# vault_url = "postgresql://memosd@db.example:5432/memosd"   # default "sqlite:" (this directory)\n'
        '# bus_url = "nats://127.0.0.1:4222"   # with a PostgreSQL vault: hear other daemons\' commits at once\n'
        '# embedding_model = "/path/to/local/all-MiniLM-L6-v2"   # enables dense and hybrid search\n'
        "# embedding_threads = 0   # torch threads for embedding; 0: a quarter of the cores\n"
        '# embedding_precision = "fp32"   # "int8": faster, vectors further from fp32\'s; "bf16": AMX CPUs\n'
        '# embedding_runtime = "auto"   # ONNX Runtime for fp32 where installed (same vectors), or "torch"\n'
        '# activation_model = "/path/to/local/Qwen2.5-0.5B"   # enables memosctl kv build\n'
        '# parametric_model = "/path/to/local/Qwen2.5-0.5B"   # memosctl distill (default: activation_model)\n'
        "# sweep_interval = 30.0\n"
        '# audit_key = "/var/lib/memosd-audit/audit.key"   # signs audit checkpoints (default DATA_DIR/audit.key)\n'
        "# audit_checkpoint_entries = 1000   # sign the audit chain's head this often, and at every shutdown\n"
        "# audit_checkpoint_interval = 60.0\n"
        "# member_heartbeat_interval = 5.0   # cluster: this daemon's heartbeat in the vault\n"
        "# governance_poll_interval = 0.5   # cluster: how often to look for other members' grants and revocations\n"
        '# metrics_listen = "127.0.0.1:9464"   # Prometheus metrics at http://127.0.0.1:9464/metrics\n'
        "\n[limits]\n"
        "# max_text_bytes = 65536\n"
        "# max_batch = 1000\n"
    )
    return path
