"""`make cluster` (scripts/cluster.py): members on the project's PostgreSQL, NATS and S3 stand-in, reached as it
says, and all of it gone after Ctrl-C."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_make_cluster_starts_members_that_serve_as_printed_and_ctrl_c_stops_it_all():
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "cluster.py"), "--members", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines: list[str] = []
    up = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:  # read to the end, so the script never blocks on a full pipe
            lines.append(line)
            if "Ctrl-C stops it all" in line:
                up.set()
        up.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert up.wait(180) and proc.poll() is None, "".join(lines)[-3000:]
        text = "".join(lines)
        key = re.search(r"export MEMOS_KEY=(\S+)", text).group(1)
        everyone = re.search(r"export MEMOS_ADDR=(\S+)", text).group(1)
        root = Path(key).parents[1]
        env = {**os.environ, "MEMOS_KEY": key, "MEMOS_ADDR": everyone}
        memosctl = [sys.executable, "-m", "memos_client.cli"]
        put = subprocess.run([*memosctl, "put", "noted in the cluster", "-n", "team"], env=env, capture_output=True,
                             text=True, timeout=60)
        assert put.returncode == 0, put.stderr
        env["MEMOS_ADDR"] = everyone.split(",")[1]  # the other member finds it, and lists both
        found = subprocess.run([*memosctl, "get", put.stdout.strip()], env=env, capture_output=True, text=True,
                               timeout=60)
        assert "noted in the cluster" in found.stdout, found.stderr
        status = subprocess.run([*memosctl, "status", "--json"], env=env, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        shown = json.loads(status.stdout)
        assert sorted(m["listen"] for m in shown["members"]) == sorted(everyone.split(","))
        assert shown["bus"].startswith("bus connected to nats://127.0.0.1:")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    assert proc.returncode == 0, "".join(lines)[-3000:]
    assert not root.exists()
