"""memosd under systemd: the notify protocol on a real datagram socket, the unit's directories and
user, the units themselves, and memosctl finding a system daemon."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from memos_client import MemosClient
from memos_mip import defaults
from memosd.sdnotify import Notifier

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "memosd.service"
USER_UNIT = ROOT / "systemd" / "user" / "memosd.service"
NOBODY = 65534


def unit_settings(path: Path) -> dict[str, list[str]]:
    """[Service] settings of a unit file; keys may repeat, so each maps to its values in order."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


class NotifyListener:
    """What systemd does for a Type=notify unit: a datagram socket it reads the daemon's messages from."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        os.chmod(path, 0o666)  # the daemon may run as another user
        self.messages: list[dict[str, str]] = []

    def next(self, timeout: float = 30) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        message = dict(line.split("=", 1) for line in data.splitlines())
        self.messages.append(message)
        return message

    def until(self, key: str, timeout: float = 30) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(max(deadline - time.monotonic(), 0.01))
            if key in message:
                return message

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def unit_dirs():
    """The unit's StateDirectory, RuntimeDirectory and ConfigurationDirectory, owned by the service's
    user as systemd would make them (nobody, when the tests run as root)."""
    base = Path(tempfile.mkdtemp(prefix="memosd-sd-", dir="/tmp"))  # short: socket paths are limited
    dirs = {"state": base / "state", "run": base / "run", "etc": base / "etc"}
    settings = unit_settings(UNIT)
    for key, setting in (("state", "StateDirectoryMode"), ("run", "RuntimeDirectoryMode"),
                         ("etc", "ConfigurationDirectoryMode")):
        dirs[key].mkdir(mode=int(settings[setting][0], 8))
        os.chmod(dirs[key], int(settings[setting][0], 8))
    os.chmod(base, 0o755)
    if os.geteuid() == 0:
        for d in (dirs["state"], dirs["run"]):
            os.chown(d, NOBODY, NOBODY)
    dirs["base"] = base
    yield dirs
    shutil.rmtree(base, ignore_errors=True)


def _as_unit(settings: dict[str, list[str]], env: dict[str, str]) -> tuple[list[str], dict]:
    """The unit's ExecStart as a command for this checkout, and its User=/NoNewPrivileges=/UMask=
    applied as far as a process can without systemd: as root, through setpriv to an unprivileged user."""
    exec_start = settings["ExecStart"][0].split()
    assert Path(exec_start[0]).name == "memosd"
    cmd = [sys.executable, "-m", "memosd.cli", *exec_start[1:]]
    umask = int(settings["UMask"][0], 8)
    drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--no-new-privs", "--inh-caps=-all"]
    if os.geteuid() == 0 and shutil.which("setpriv") and _reachable_as_nobody(drop, env):
        cmd = [*drop, *cmd]
    return cmd, dict(env=env, preexec_fn=lambda: os.umask(umask), cwd=ROOT)


def _reachable_as_nobody(drop: list[str], env: dict) -> bool:
    """Can the unprivileged user import this checkout? Not when it was cloned under a private directory
    (mktemp -d is 0700); the daemon then runs as this user, with the unit's other settings."""
    probe = subprocess.run([*drop, sys.executable, "-c", "import memosd.cli"], env=env, cwd="/",
                           capture_output=True, timeout=60)
    return probe.returncode == 0


@pytest.mark.slow
def test_daemon_speaks_the_notify_protocol_under_the_units_settings(unit_dirs):
    settings = unit_settings(UNIT)
    assert settings["Type"] == ["notify"]
    (unit_dirs["etc"] / "memosd.toml").write_text("log_level = \"warning\"\n[limits]\nmax_text_bytes = 64\n")
    os.chmod(unit_dirs["etc"] / "memosd.toml", 0o644)
    listener = NotifyListener(unit_dirs["base"] / "notify")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEMOSD_", "MEMOS_", "XDG_"))}
    env.update(NOTIFY_SOCKET=str(listener.path), WATCHDOG_USEC="200000", HOME=str(unit_dirs["base"]),
               STATE_DIRECTORY=str(unit_dirs["state"]), RUNTIME_DIRECTORY=str(unit_dirs["run"]),
               CONFIGURATION_DIRECTORY=str(unit_dirs["etc"]), PYTHONPATH=str(ROOT))
    cmd, kwargs = _as_unit(settings, env)
    if cmd[0] != "setpriv" and os.geteuid() == 0:
        for d in (unit_dirs["state"], unit_dirs["run"]):
            os.chown(d, 0, 0)  # the service runs as this user after all: its directories are its own
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs)
    sock_path = unit_dirs["run"] / "memosd.sock"
    try:
        first = listener.next()
        assert first["STATUS"].startswith("starting") and "READY" not in first
        ready = listener.until("READY")
        # READY=1 only once the socket accepts connections: systemd starts dependants on it.
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(str(sock_path))
        probe.close()
        assert ready["READY"] == "1" and ready["MAINPID"] == str(proc.pid)
        assert ready["STATUS"] == f"serving on unix:{sock_path}"
        watchdog_pings = [listener.until("WATCHDOG", timeout=5) for _ in range(3)]
        assert all(m["WATCHDOG"] == "1" for m in watchdog_pings)

        # The unit's directories hold what they should, private as the unit's UMask and modes say.
        assert stat.S_IMODE(sock_path.stat().st_mode) == 0o660
        assert stat.S_IMODE(unit_dirs["run"].stat().st_mode) == 0o750
        for name in ("memos.db", "admin.key"):
            assert stat.S_IMODE((unit_dirs["state"] / name).stat().st_mode) == 0o600
        with MemosClient(f"unix:{sock_path}", key=unit_dirs["state"] / "admin.key") as client:
            client.put("short", "agents/admin/n")
            with pytest.raises(Exception, match="limit is 64"):  # ConfigurationDirectory's file was read
                client.put("x" * 65, "agents/admin/n")

        proc.send_signal(signal.SIGTERM)
        stopping = listener.until("STOPPING", timeout=10)
        assert stopping["STOPPING"] == "1"
        assert proc.wait(30) == 0, proc.stderr.read().decode()[-2000:]
        assert not sock_path.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stderr.close()
        listener.close()


def test_notifier_is_silent_outside_systemd():
    notifier = Notifier(env={})
    assert not notifier.enabled
    assert notifier.ready("x") is False and notifier.watchdog() is False
    assert notifier.watchdog_interval is None


def test_notifier_reaches_an_abstract_socket_and_reads_the_watchdog():
    name = f"memosd-test-{os.getpid()}-{time.monotonic_ns()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind("\0" + name)
    listener.settimeout(5)
    try:
        notifier = Notifier(env={"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "3000000",
                                 "WATCHDOG_PID": str(os.getpid())})
        assert notifier.watchdog_interval == 1.5
        assert notifier.status("multi\nline")
        assert listener.recv(4096) == b"STATUS=multi line"
        notifier.stopping()
        assert listener.recv(4096).split(b"\n")[0] == b"STOPPING=1"
        notifier.close()
    finally:
        listener.close()
    # A watchdog meant for another process is not ours to feed.
    assert Notifier(env={"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_interval is None


def test_notifier_survives_the_manager_going_away(tmp_path, caplog):
    notifier = Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.ready("x") is False
    assert notifier.watchdog() is False
    assert sum("cannot notify systemd" in r.message for r in caplog.records) == 1


def test_units_run_memosd_serve_with_their_directories():
    system, user = unit_settings(UNIT), unit_settings(USER_UNIT)
    for settings in (system, user):
        assert settings["Type"] == ["notify"] and settings["NotifyAccess"] == ["main"]
        assert settings["ExecStart"][0].split()[1:] == ["serve"]
        assert settings["RuntimeDirectory"] == ["memosd"] and settings["ConfigurationDirectory"] == ["memosd"]
        assert "WatchdogSec" in settings
    assert system["User"] == ["memosd"] and system["StateDirectory"] == ["memosd"]
    # The per-user daemon keeps its data where a hand-started one does, so memosctl finds its key.
    assert "StateDirectory" not in user
    sysusers = (ROOT / "systemd" / "memosd.sysusers").read_text()
    assert any(line.split()[:2] == ["u", "memosd"] for line in sysusers.splitlines() if not line.startswith("#"))
    assert defaults.SYSTEM_RUNTIME_DIR == Path("/run") / system["RuntimeDirectory"][0]
    assert defaults.SYSTEM_DATA_DIR == Path("/var/lib") / system["StateDirectory"][0]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed (make check-systemd installs it)")
def test_units_pass_systemd_analyze():
    result = subprocess.run([str(ROOT / "scripts" / "check_systemd.sh")], capture_output=True, text=True,
                            env={**os.environ, "MEMOSD": shutil.which("memosd") or sys.executable}, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_client_finds_the_system_daemon_when_no_user_daemon_runs(monkeypatch, tmp_path, daemon):
    sock = Path(daemon.address.removeprefix("unix:"))
    monkeypatch.delenv("MEMOS_ADDR", raising=False)
    monkeypatch.delenv("MEMOS_KEY", raising=False)
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "no-user-daemon"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "no-user-data"))
    monkeypatch.setattr(defaults, "SYSTEM_RUNTIME_DIR", sock.parent)
    monkeypatch.setattr(defaults, "SYSTEM_DATA_DIR", daemon.config.data_dir)
    assert defaults.client_socket_path() == sock
    with MemosClient() as client:  # socket and admin key both found, as memosctl finds them
        assert client.status().version
    # A running per-user daemon wins, and its own admin key goes with it.
    user_sock = tmp_path / "no-user-daemon" / "memosd" / "memosd.sock"
    user_sock.parent.mkdir(parents=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(user_sock))
    try:
        assert defaults.client_socket_path() == user_sock
        assert defaults.admin_key_path(f"unix:{user_sock}") == tmp_path / "no-user-data" / "memosd" / "admin.key"
        assert defaults.admin_key_path(f"unix:{sock}") == daemon.config.data_dir / "admin.key"
    finally:
        listener.close()
