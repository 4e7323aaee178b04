"""MemGovernance's storage on SQLite: settings, agents, policies and audit checkpoints, one named function per query."""

from __future__ import annotations

import json
import sqlite3

from memosd.storage.records import AgentRow, CheckpointRow, PolicyRow


# -- settings ------------------------------------------------------------------------------------

def init_settings(conn: sqlite3.Connection, defaults: dict[str, str]) -> None:
    """Store each default unless its key has a value already (first start)."""
    for key, value in defaults.items():
        conn.execute("INSERT OR IGNORE INTO settings (key, value) VALUES (?, ?)", (key, value))


def load_settings(conn: sqlite3.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT key, value FROM settings").fetchall())


def bump_epoch(conn: sqlite3.Connection) -> int:
    """Raise the stored policy epoch by one; the new epoch."""
    (value,) = conn.execute("SELECT value FROM settings WHERE key = 'policy_epoch'").fetchone()
    epoch = int(value) + 1
    conn.execute("UPDATE settings SET value = ? WHERE key = 'policy_epoch'", (str(epoch),))
    return epoch


def governance_version(conn: sqlite3.Connection) -> int:
    """The number every change of agents, policies or the epoch raises (0 before the first)."""
    row = conn.execute("SELECT value FROM settings WHERE key = 'governance_version'").fetchone()
    return int(row[0]) if row else 0


def bump_version(conn: sqlite3.Connection) -> int:
    """Raise the governance version by one, in the transaction of the change; the new version."""
    conn.execute("INSERT INTO settings (key, value) VALUES ('governance_version', '1') ON CONFLICT (key)"
                 " DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)")
    return governance_version(conn)


# -- members -------------------------------------------------------------------------------------

def put_member(conn: sqlite3.Connection, member_id: str, listen: str, version: str, started_at: float,
               heard_at: float) -> None:
    """Record a member as it starts or beats (one row per member id)."""
    conn.execute("INSERT INTO members (member_id, listen, version, started_at, heard_at) VALUES (?, ?, ?, ?, ?)"
                 " ON CONFLICT (member_id) DO UPDATE SET listen = excluded.listen, version = excluded.version,"
                 " started_at = excluded.started_at, heard_at = excluded.heard_at",
                 (member_id, listen, version, started_at, heard_at))


def beat(conn: sqlite3.Connection, member_id: str, heard_at: float) -> bool:
    """Refresh a member's heartbeat; False if its row is gone (pruned), so that it records itself again."""
    return conn.execute("UPDATE members SET heard_at = ? WHERE member_id = ?", (heard_at, member_id)).rowcount > 0


def members(conn: sqlite3.Connection) -> list[tuple[str, str, str, float, float]]:
    """(member_id, listen, version, started_at, heard_at) of every member, by member id."""
    return conn.execute("SELECT member_id, listen, version, started_at, heard_at FROM members"
                        " ORDER BY member_id").fetchall()


def prune_members(conn: sqlite3.Connection, heard_before: float) -> int:
    """Forget the members not heard from since a time; how many."""
    return conn.execute("DELETE FROM members WHERE heard_at < ?", (heard_before,)).rowcount


def remove_member(conn: sqlite3.Connection, member_id: str) -> None:
    conn.execute("DELETE FROM members WHERE member_id = ?", (member_id,))


# -- agents --------------------------------------------------------------------------------------

def load_agents(conn: sqlite3.Connection) -> list[AgentRow]:
    """Every agent, revoked ones too: (name, public_key, groups, admin, created_at, revoked_at)."""
    rows = conn.execute("SELECT name, public_key, groups, admin, created_at, revoked_at FROM agents").fetchall()
    return [(name, key, tuple(json.loads(groups)), bool(admin), created, revoked)
            for name, key, groups, admin, created, revoked in rows]


def insert_agent(conn: sqlite3.Connection, name: str, public_key: bytes, groups: tuple[str, ...], admin: bool,
                 created_at: float) -> None:
    conn.execute("INSERT INTO agents (name, public_key, groups, admin, created_at) VALUES (?, ?, ?, ?, ?)",
                 (name, public_key, json.dumps(list(groups)), int(admin), created_at))


def revoke_agent(conn: sqlite3.Connection, name: str, at: float) -> None:
    conn.execute("UPDATE agents SET revoked_at = ? WHERE name = ?", (at, name))


# -- policies ------------------------------------------------------------------------------------

def load_policies(conn: sqlite3.Connection) -> list[PolicyRow]:
    """Every stored policy, revoked ones too: (document, signature, created_at, revoked_at)."""
    return conn.execute("SELECT document, signature, created_at, revoked_at FROM policies").fetchall()


def insert_policy(conn: sqlite3.Connection, policy_id: str, issuer: str, subject: str, document: bytes,
                  signature: bytes, created_at: float) -> bool:
    """False when a policy of that id exists already (another member may have recorded it)."""
    cur = conn.execute("INSERT INTO policies (id, issuer, subject, document, signature, created_at)"
                 " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING", (policy_id, issuer, subject, document, signature, created_at))
    return cur.rowcount == 1


def revoke_policy(conn: sqlite3.Connection, policy_id: str, at: float) -> None:
    conn.execute("UPDATE policies SET revoked_at = ? WHERE id = ?", (at, policy_id))


# -- audit checkpoints ---------------------------------------------------------------------------

def last_checkpoint(conn: sqlite3.Connection) -> CheckpointRow | None:
    """The newest checkpoint row (n, seq, hash, ts, signature), None before the first."""
    return conn.execute("SELECT n, seq, hash, ts, signature FROM audit_checkpoints ORDER BY n DESC LIMIT 1").fetchone()


def checkpoints(conn: sqlite3.Connection) -> list[CheckpointRow]:
    """Every checkpoint row in order of n."""
    return conn.execute("SELECT n, seq, hash, ts, signature FROM audit_checkpoints ORDER BY n").fetchall()


def put_checkpoint(conn: sqlite3.Connection, n: int, seq: int, hash: str, ts: float, signature: bytes,
                   signer: str = "") -> None:
    conn.execute("INSERT INTO audit_checkpoints (n, seq, hash, ts, signature, signer) VALUES (?, ?, ?, ?, ?, ?)",
                 (n, seq, hash, ts, signature, signer))


def lock_checkpoints(conn: sqlite3.Connection) -> None:
    """Order the members' checkpoint writers (SQLite's one writer is ordered already)."""


def checkpoint_signers(conn: sqlite3.Connection) -> dict[int, str]:
    """The fingerprint of the audit key each checkpoint names, by n ('' where it names none: before clusters)."""
    return dict(conn.execute("SELECT n, signer FROM audit_checkpoints").fetchall())


def claim_checkpoints(conn: sqlite3.Connection, numbers: list[int], signer: str) -> None:
    """Name the signer of checkpoints that named none (their signature was checked under its key)."""
    conn.executemany("UPDATE audit_checkpoints SET signer = ? WHERE n = ? AND signer = ''",
                     [(signer, n) for n in numbers])


def audit_keys(conn: sqlite3.Connection) -> list[tuple[str, bytes, str, bytes]]:
    """(fingerprint, public_key, member_id, endorsement) of every member's audit key."""
    return conn.execute("SELECT fingerprint, public_key, member_id, endorsement FROM audit_keys").fetchall()


def put_audit_key(conn: sqlite3.Connection, fingerprint: str, public_key: bytes, member_id: str, endorsement: bytes,
                  created_at: float) -> None:
    """Record an audit key; a record without the admin's endorsement gets it once one is given."""
    conn.execute("INSERT INTO audit_keys (fingerprint, public_key, member_id, endorsement, created_at)"
                 " VALUES (?, ?, ?, ?, ?) ON CONFLICT (fingerprint) DO UPDATE SET endorsement = excluded.endorsement,"
                 " member_id = excluded.member_id WHERE audit_keys.endorsement = x'' AND excluded.endorsement != x''",
                 (fingerprint, public_key, member_id, endorsement, created_at))
