"""MemGovernance's storage on PostgreSQL: settings, agents, policies and audit checkpoints, one named function per query."""

from __future__ import annotations

import json

from memosd.storage.records import AgentRow, CheckpointRow, PolicyRow


# -- settings ------------------------------------------------------------------------------------

def init_settings(conn, defaults: dict[str, str]) -> None:
    """Store each default unless its key has a value already (first start, of any daemon on the database)."""
    for key, value in defaults.items():
        conn.execute("INSERT INTO settings (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING", (key, value))


def load_settings(conn) -> dict[str, str]:
    return dict(conn.execute("SELECT key, value FROM settings").fetchall())


def bump_epoch(conn) -> int:
    """Raise the stored policy epoch by one; the new epoch (one statement: concurrent bumps each count)."""
    (value,) = conn.execute("UPDATE settings SET value = (value::bigint + 1)::text WHERE key = 'policy_epoch'"
                            " RETURNING value").fetchone()
    return int(value)


# -- agents --------------------------------------------------------------------------------------

def load_agents(conn) -> list[AgentRow]:
    """Every agent, revoked ones too: (name, public_key, groups, admin, created_at, revoked_at)."""
    rows = conn.execute("SELECT name, public_key, groups, admin, created_at, revoked_at FROM agents").fetchall()
    return [(name, bytes(key), tuple(json.loads(groups)), bool(admin), created, revoked)
            for name, key, groups, admin, created, revoked in rows]


def insert_agent(conn, name: str, public_key: bytes, groups: tuple[str, ...], admin: bool,
                 created_at: float) -> None:
    conn.execute("INSERT INTO agents (name, public_key, groups, admin, created_at) VALUES (%s, %s, %s, %s, %s)",
                 (name, public_key, json.dumps(list(groups)), bool(admin), created_at))


def revoke_agent(conn, name: str, at: float) -> None:
    conn.execute("UPDATE agents SET revoked_at = %s WHERE name = %s", (at, name))


# -- policies ------------------------------------------------------------------------------------

def load_policies(conn) -> list[PolicyRow]:
    """Every stored policy, revoked ones too: (document, signature, created_at, revoked_at)."""
    return [(bytes(doc), bytes(sig), created, revoked) for doc, sig, created, revoked in
            conn.execute("SELECT document, signature, created_at, revoked_at FROM policies").fetchall()]


def insert_policy(conn, policy_id: str, issuer: str, subject: str, document: bytes,
                  signature: bytes, created_at: float) -> None:
    conn.execute("INSERT INTO policies (id, issuer, subject, document, signature, created_at)"
                 " VALUES (%s, %s, %s, %s, %s, %s)", (policy_id, issuer, subject, document, signature, created_at))


def revoke_policy(conn, policy_id: str, at: float) -> None:
    conn.execute("UPDATE policies SET revoked_at = %s WHERE id = %s", (at, policy_id))


# -- audit checkpoints ---------------------------------------------------------------------------

_CHECKPOINT = "SELECT n, seq, hash, ts, signature FROM audit_checkpoints"


def last_checkpoint(conn) -> CheckpointRow | None:
    """The newest checkpoint row (n, seq, hash, ts, signature), None before the first."""
    row = conn.execute(_CHECKPOINT + " ORDER BY n DESC LIMIT 1").fetchone()
    return None if row is None else (*row[:4], bytes(row[4]))


def checkpoints(conn) -> list[CheckpointRow]:
    """Every checkpoint row in order of n."""
    return [(*r[:4], bytes(r[4])) for r in conn.execute(_CHECKPOINT + " ORDER BY n").fetchall()]


def put_checkpoint(conn, n: int, seq: int, hash: str, ts: float, signature: bytes) -> None:
    conn.execute("INSERT INTO audit_checkpoints (n, seq, hash, ts, signature) VALUES (%s, %s, %s, %s, %s)",
                 (n, seq, hash, ts, signature))
