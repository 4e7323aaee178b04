"""One audit chain for a cluster: members append to it concurrently and each signs checkpoints with its own key."""

import threading

from memos_client import MemosClient
from memos_mip.auth import AgentKey, canonical, fingerprint
from memosd.governance.signing import DOMAIN
from tests.cluster import member_configs, running_members
from tests.storage_engine import raw_connection

WRITES = 40  # per writer; two writers per member


def _write(daemon, tag: str, errors: list) -> None:
    try:
        with MemosClient(daemon.address, key=daemon.admin_key, timeout=30) as client:
            for i in range(WRITES):
                client.put(f"{tag} {i}", "agents/admin/audited")
    except Exception as exc:  # reported by the test thread
        errors.append(exc)


def _checkpoint_signers(config) -> set[str]:
    with raw_connection(config) as conn:
        return {r[0] for r in conn.execute("SELECT signer FROM audit_checkpoints").fetchall()}


def test_concurrent_appends_at_two_members_keep_one_chain_that_each_verifies(tmp_path, postgres_url):
    # Checkpoints every few entries: both members sign heads while both append.
    configs = member_configs(tmp_path, postgres_url, 2, audit_checkpoint_entries=7)
    with running_members(configs) as (a, b):
        errors: list = []
        writers = [threading.Thread(target=_write, args=(d, f"{d.config.data_dir.name} {w}", errors))
                   for d in (a, b) for w in range(2)]
        for t in writers:
            t.start()
        for t in writers:
            t.join(120)
        assert not errors
        for daemon in (a, b):
            daemon.call(daemon.server.governance.signer.checkpoint())
            with MemosClient(daemon.address, key=daemon.admin_key, timeout=30) as client:
                report = client.audit_report()
                assert report.ok, report
                assert report.entries >= 4 * WRITES and report.unsigned_tail == 0
        keys = {fingerprint(AgentKey.load(c.data_dir / "audit.key").public_bytes) for c in configs}
        assert _checkpoint_signers(configs[0]) == keys  # each member signed some of the one chain's heads


def test_a_checkpoint_under_a_key_the_admin_did_not_endorse_is_detected(tmp_path, postgres_url):
    configs = member_configs(tmp_path, postgres_url, 2)
    with running_members(configs) as (a, b):
        with MemosClient(b.address, key=b.admin_key, timeout=30) as client:
            client.put("written at b", "agents/admin/audited")
        b.call(b.server.governance.signer.checkpoint())
        daemon_id = a.server.governance.daemon_id
        forger = AgentKey.generate("mallory", "")
        with raw_connection(configs[0]) as conn:  # what someone who can write the vault, not the keys, can do
            client_seq, head = conn.execute("SELECT value FROM settings WHERE key = 'audit_head'").fetchone()[0].split(":")
            (n,) = conn.execute("SELECT max(n) + 1 FROM audit_checkpoints").fetchone()
            body = {"daemon": daemon_id, "n": n, "seq": int(client_seq), "hash": head, "ts": 1.0}
            fp = fingerprint(forger.public_bytes)
            conn.execute("INSERT INTO audit_keys VALUES (%s, %s, 'mallory', %s, 1.0)",
                         (fp, forger.public_bytes, forger.sign(b"an endorsement")))
            conn.execute("INSERT INTO audit_checkpoints (n, seq, hash, ts, signature, signer)"
                         " VALUES (%s, %s, %s, 1.0, %s, %s)",
                         (n, int(client_seq), head, forger.sign(DOMAIN + canonical(body)), fp))
        for daemon in (a, b):
            with MemosClient(daemon.address, key=daemon.admin_key, timeout=30) as client:
                report = client.audit_report()
                assert not report.ok and f"checkpoint {n}" in report.reason and "endorsement" in report.reason, report
