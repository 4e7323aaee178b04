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


def governance_version(conn) -> int:
    """The number every change of agents, policies or the epoch raises (0 before the first)."""
    row = conn.execute("SELECT value FROM settings WHERE key = 'governance_version'").fetchone()
    return int(row[0]) if row else 0


def bump_version(conn) -> int:
    """Raise the governance version by one, in the transaction of the change; the new version. The row's lock
    orders the changes of every member: each commits a version of its own."""
    (value,) = conn.execute("INSERT INTO settings AS s (key, value) VALUES ('governance_version', '1')"
                            " ON CONFLICT (key) DO UPDATE SET value = (s.value::bigint + 1)::text"
                            " RETURNING value").fetchone()
    return int(value)


# -- members -------------------------------------------------------------------------------------

def put_member(conn, member_id: str, listen: str, version: str, started_at: float, heard_at: float) -> None:
    """Record a member as it starts or beats (one row per member id)."""
    conn.execute("INSERT INTO members (member_id, listen, version, started_at, heard_at) VALUES (%s, %s, %s, %s, %s)"
                 " ON CONFLICT (member_id) DO UPDATE SET listen = excluded.listen, version = excluded.version,"
                 " started_at = excluded.started_at, heard_at = excluded.heard_at",
                 (member_id, listen, version, started_at, heard_at))


def beat(conn, member_id: str, heard_at: float) -> bool:
    """Refresh a member's heartbeat; False if its row is gone (pruned), so that it records itself again."""
    return conn.execute("UPDATE members SET heard_at = %s WHERE member_id = %s", (heard_at, member_id)).rowcount > 0


def members(conn) -> list[tuple[str, str, str, float, float]]:
    """(member_id, listen, version, started_at, heard_at) of every member, by member id."""
    return [tuple(r) for r in conn.execute("SELECT member_id, listen, version, started_at, heard_at FROM members"
                                           " ORDER BY member_id").fetchall()]


def prune_members(conn, heard_before: float) -> int:
    """Forget the members not heard from since a time; how many."""
    return conn.execute("DELETE FROM members WHERE heard_at < %s", (heard_before,)).rowcount


def remove_member(conn, member_id: str) -> None:
    conn.execute("DELETE FROM members WHERE member_id = %s", (member_id,))


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
                  signature: bytes, created_at: float) -> bool:
    """False when a policy of that id exists already (another member may have recorded it)."""
    cur = conn.execute("INSERT INTO policies (id, issuer, subject, document, signature, created_at)"
                 " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING", (policy_id, issuer, subject, document, signature, created_at))
    return cur.rowcount == 1


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


def put_checkpoint(conn, n: int, seq: int, hash: str, ts: float, signature: bytes, signer: str = "") -> None:
    conn.execute("INSERT INTO audit_checkpoints (n, seq, hash, ts, signature, signer) VALUES (%s, %s, %s, %s, %s, %s)",
                 (n, seq, hash, ts, signature, signer))


# pg_advisory_xact_lock key of the checkpoint writers: members number their checkpoints one after another.
CHECKPOINT_LOCK = 0x6D656D6F_73640003


def lock_checkpoints(conn) -> None:
    """Order the members' checkpoint writers until this transaction ends: each reads the last n, then adds one."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (CHECKPOINT_LOCK,))


def checkpoint_signers(conn) -> dict[int, str]:
    """The fingerprint of the audit key each checkpoint names, by n ('' where it names none: before clusters)."""
    return dict(conn.execute("SELECT n, signer FROM audit_checkpoints").fetchall())


def claim_checkpoints(conn, numbers: list[int], signer: str) -> None:
    """Name the signer of checkpoints that named none (their signature was checked under its key)."""
    with conn.cursor() as cursor:
        cursor.executemany("UPDATE audit_checkpoints SET signer = %s WHERE n = %s AND signer = ''",
                           [(signer, n) for n in numbers])


def audit_keys(conn) -> list[tuple[str, bytes, str, bytes]]:
    """(fingerprint, public_key, member_id, endorsement) of every member's audit key."""
    return [(f, bytes(k), m, bytes(e)) for f, k, m, e in
            conn.execute("SELECT fingerprint, public_key, member_id, endorsement FROM audit_keys").fetchall()]


def put_audit_key(conn, fingerprint: str, public_key: bytes, member_id: str, endorsement: bytes,
                  created_at: float) -> None:
    """Record an audit key; a record without the admin's endorsement gets it once one is given."""
    conn.execute("INSERT INTO audit_keys AS k (fingerprint, public_key, member_id, endorsement, created_at)"
                 " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (fingerprint) DO UPDATE SET endorsement = excluded.endorsement,"
                 " member_id = excluded.member_id WHERE k.endorsement = '' AND excluded.endorsement != ''",
                 (fingerprint, public_key, member_id, endorsement, created_at))
