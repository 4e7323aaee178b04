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
                  signature: bytes, created_at: float) -> None:
    conn.execute("INSERT INTO policies (id, issuer, subject, document, signature, created_at)"
                 " VALUES (?, ?, ?, ?, ?, ?)", (policy_id, issuer, subject, document, signature, created_at))


def revoke_policy(conn: sqlite3.Connection, policy_id: str, at: float) -> None:
    conn.execute("UPDATE policies SET revoked_at = ? WHERE id = ?", (at, policy_id))


# -- audit checkpoints ---------------------------------------------------------------------------

def last_checkpoint(conn: sqlite3.Connection) -> CheckpointRow | None:
    """The newest checkpoint row (n, seq, hash, ts, signature), None before the first."""
    return conn.execute("SELECT n, seq, hash, ts, signature FROM audit_checkpoints ORDER BY n DESC LIMIT 1").fetchone()


def checkpoints(conn: sqlite3.Connection) -> list[CheckpointRow]:
    """Every checkpoint row in order of n."""
    return conn.execute("SELECT n, seq, hash, ts, signature FROM audit_checkpoints ORDER BY n").fetchall()


def put_checkpoint(conn: sqlite3.Connection, n: int, seq: int, hash: str, ts: float, signature: bytes) -> None:
    conn.execute("INSERT INTO audit_checkpoints (n, seq, hash, ts, signature) VALUES (?, ?, ?, ?, ?)",
                 (n, seq, hash, ts, signature))
