"""Governance tables, migrated with the vault's database."""

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("memosd.governance")


@migrations()
def m0001_governance(db: Database) -> None:
    db.execute(
        "CREATE TABLE agents (name TEXT PRIMARY KEY, public_key BLOB NOT NULL, groups TEXT NOT NULL DEFAULT '[]',"
        " admin INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, revoked_at REAL)"
    )
    db.execute(
        "CREATE TABLE policies (id TEXT PRIMARY KEY, issuer TEXT NOT NULL, subject TEXT NOT NULL,"
        " document BLOB NOT NULL, signature BLOB NOT NULL, created_at REAL NOT NULL, revoked_at REAL)"
    )
    db.execute(
        "CREATE TABLE audit (seq INTEGER PRIMARY KEY, ts REAL NOT NULL, agent TEXT NOT NULL, action TEXT NOT NULL,"
        " target TEXT NOT NULL, decision TEXT NOT NULL, detail TEXT NOT NULL, prev_hash TEXT NOT NULL,"
        " hash TEXT NOT NULL)"
    )


@migrations()
def m0002_audit_checkpoints(db: Database) -> None:
    # Signed (seq, hash) points of the audit chain; the same rows go to the checkpoint file beside the audit key.
    db.execute(
        "CREATE TABLE audit_checkpoints (n INTEGER PRIMARY KEY, seq INTEGER NOT NULL, hash TEXT NOT NULL,"
        " ts REAL NOT NULL, signature BLOB NOT NULL)"
    )


@migrations()
def m0003_cluster(db: Database) -> None:
    # The daemons serving this vault (a SQLite vault has one), refreshed by each on a heartbeat.
    db.execute(
        "CREATE TABLE members (member_id TEXT PRIMARY KEY, listen TEXT NOT NULL, version TEXT NOT NULL,"
        " started_at REAL NOT NULL, heard_at REAL NOT NULL)"
    )
    # Every member signs checkpoints with its own audit key: a checkpoint names its key (by fingerprint), and
    # each key is recorded with the admin key's signature over it, which verification checks.
    db.execute("ALTER TABLE audit_checkpoints ADD COLUMN signer TEXT NOT NULL DEFAULT ''")
    db.execute(
        "CREATE TABLE audit_keys (fingerprint TEXT PRIMARY KEY, public_key BLOB NOT NULL, member_id TEXT NOT NULL,"
        " endorsement BLOB NOT NULL, created_at REAL NOT NULL)"
    )
