"""PostgreSQL restarted while a real `memosd serve` process serves: the calls during the outage are answered
UNAVAILABLE with a message (never INTERNAL), the daemon reconnects by itself, nothing acknowledged is lost."""

import subprocess
import sys

import pytest

from memos_client import MemosClient
from memos_client.errors import Unavailable
from tests.daemon import make_config, spawn_daemon
from tests.pg_server import PostgresServer

pytestmark = pytest.mark.slow
TOPIC = "teams/outage/events"


def _outage_calls(c, cube_id):
    """One of each kind of call during the outage: every one must be refused UNAVAILABLE with a message."""
    calls = {
        "put": lambda: c.put("written during the outage", "agents/admin/outage"),
        "put_many": lambda: c.put_many([{"text": "many during the outage", "namespace": "agents/admin/outage"}]),
        "get": lambda: c.get(cube_id),
        "update": lambda: c.update(cube_id, text="updated during the outage"),
        "search": lambda: c.search("acknowledged", namespace="agents/admin/outage"),
        "publish": lambda: c.publish(TOPIC, cube_id, publish_id="during-1"),
    }
    answers = {}
    for name, call in calls.items():
        with pytest.raises(Unavailable) as caught:
            call()
        answers[name] = caught.value
    return answers


def test_a_postgresql_restart_under_a_serving_daemon_is_unavailable_then_served_with_nothing_lost(tmp_path):
    server = PostgresServer()  # a server of its own: this one is stopped mid-test
    proc = None
    try:
        server.start()
        config = make_config(tmp_path, vault_url=server.create_database("memosd_outage"))
        subprocess.run([sys.executable, "-m", "memosd.cli", "init", "--data-dir", str(config.data_dir),
                        "--vault-url", config.vault_url], check=True, capture_output=True)
        proc = spawn_daemon(config)
        key = config.data_dir / "admin.key"
        with MemosClient(config.listen, key=key, timeout=20) as c:
            before = c.put("acknowledged before the outage", "agents/admin/outage", tags=["before"])
            many = c.put_many([{"text": f"acknowledged many {i}", "namespace": "agents/admin/outage"}
                               for i in range(50)])
            seq, _ = c.publish(TOPIC, before.id, publish_id="before-1")

            server.stop()
            answers = _outage_calls(c, before.id)
            for name, err in answers.items():
                text = str(err)
                assert "INTERNAL" not in text and "Traceback" not in text, (name, text)
                assert "PostgreSQL" in text or "vault" in text, (name, text)  # a message that says what is wrong
            assert proc.poll() is None, "the daemon must keep running through the outage"

            server.start()
            # No restart of the daemon: its pool reconnects by itself.
            after = c.put("acknowledged after the outage", "agents/admin/outage", tags=["after"])
            seq_after, _ = c.publish(TOPIC, after.id, publish_id="after-1")
            assert seq_after == seq + 1  # nothing published during the outage took a sequence number

            assert c.get(before.id).text == "acknowledged before the outage"
            assert c.get(after.id).text == "acknowledged after the outage"
            assert [c.get(i).text for i in many] == [f"acknowledged many {i}" for i in range(50)]
            texts = {cube.text for cube in c.list("agents/admin/outage", page_size=1000)}
            assert "written during the outage" not in texts and "many during the outage" not in texts
            assert len(texts) == 52
            seen = []
            with c.subscribe(TOPIC) as events:
                for event in events:
                    seen.append((event.seq, event.cube_id))
                    if event.seq == seq_after:
                        break
            assert seen == [(seq, before.id), (seq_after, after.id)]
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(10)
        server.stop()
        server.remove()
