"""MemStore's tables, migrated with the vault's database."""

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from memosd.store.memstore import EventKind

migrations = Migrations("memosd.store")


@migrations()
def m0001_store(db: Database) -> None:
    db.execute(
        "CREATE TABLE topics (name TEXT PRIMARY KEY, owner TEXT NOT NULL, created_at REAL NOT NULL,"
        " last_seq INTEGER NOT NULL DEFAULT 0, first_seq INTEGER NOT NULL DEFAULT 1,"
        " max_age REAL NOT NULL DEFAULT 0, max_events INTEGER NOT NULL DEFAULT 0)"
    )
    db.execute(
        "CREATE TABLE events (topic TEXT NOT NULL, seq INTEGER NOT NULL, kind INTEGER NOT NULL, cube_id TEXT NOT NULL,"
        " cube_version INTEGER NOT NULL, publisher TEXT NOT NULL, ts REAL NOT NULL, publish_id TEXT,"
        " PRIMARY KEY (topic, seq)) WITHOUT ROWID"
    )
    db.execute("CREATE UNIQUE INDEX events_publish_id ON events(topic, publish_id) WHERE publish_id IS NOT NULL")
    db.execute("CREATE INDEX events_ts ON events(topic, ts)")
    # Cubes currently shared through a topic (published, not retracted): what subscribers may read.
    db.execute("CREATE TABLE topic_cubes (topic TEXT NOT NULL, cube_id TEXT NOT NULL, PRIMARY KEY (topic, cube_id)) WITHOUT ROWID")
    db.execute("CREATE INDEX topic_cubes_cube ON topic_cubes(cube_id)")
    db.execute(
        "CREATE TABLE durable_subscriptions (agent TEXT NOT NULL, name TEXT NOT NULL, pattern TEXT NOT NULL,"
        " acked TEXT NOT NULL DEFAULT '{}', created_at REAL NOT NULL, PRIMARY KEY (agent, name)) WITHOUT ROWID"
    )


@migrations()
def m0002_share_authority(db: Database) -> None:
    # A share lasts as long as the authority it was made under, so each publisher's share is its own row with
    # that authority ('own', or a JSON list of policy ids). Shares from before keep their latest publisher and
    # no recorded authority (that publisher's grants of the moment decide); one whose events were all
    # compacted away has no known publisher and ends: its owner can publish it again.
    db.execute(
        "CREATE TABLE topic_shares (topic TEXT NOT NULL, cube_id TEXT NOT NULL, publisher TEXT NOT NULL,"
        " authority TEXT, PRIMARY KEY (topic, cube_id, publisher)) WITHOUT ROWID"
    )
    db.execute(
        "INSERT INTO topic_shares (topic, cube_id, publisher, authority)"
        " SELECT tc.topic, tc.cube_id, coalesce((SELECT e.publisher FROM events e WHERE e.topic = tc.topic"
        f" AND e.cube_id = tc.cube_id AND e.kind != {EventKind.RETRACTED:d} ORDER BY e.seq DESC LIMIT 1), ''), NULL"
        " FROM topic_cubes tc"
    )
    db.execute("DROP TABLE topic_cubes")
    db.execute("ALTER TABLE topic_shares RENAME TO topic_cubes")
    db.execute("CREATE INDEX topic_cubes_cube ON topic_cubes(cube_id)")
