"""The storage contract: what the core relies on from its storage functions, driven directly (no daemon, no gRPC).
Each test takes `engine` (tests/storage_engine.py) and runs once per storage engine."""

import asyncio

from memosd.governance import audit
from memosd.governance.policy import Pattern
from memosd.store.memstore import EventKind

def _publish(engine, topic, cube_id="c1", ts=100.0, publish_id=None, max_events=0, max_age=0.0,
             kind=EventKind.PUBLISHED):
    return engine.write(lambda conn: engine.sql.events.append_event(conn, topic, int(kind), cube_id, 1, "alice", ts, publish_id,
                                                         max_age=max_age, max_events=max_events))


def test_events_get_consecutive_seqs_per_topic_and_read_back_in_order(engine):
    assert [_publish(engine, "news", f"c{i}", ts=100.0 + i) for i in range(3)] == [1, 2, 3]
    assert _publish(engine, "other") == 1
    found = engine.read(lambda conn: engine.sql.events.events_after(conn, "news", 0, 10))
    assert [(seq, kind, cube) for seq, kind, cube, *_ in found] == [(1, EventKind.PUBLISHED, "c0"),
                                                                   (2, EventKind.PUBLISHED, "c1"),
                                                                   (3, EventKind.PUBLISHED, "c2")]
    assert found[0][3:] == (1, "alice", 100.0)
    assert [r[0] for r in engine.read(lambda conn: engine.sql.events.events_after(conn, "news", 1, 1))] == [2]
    assert engine.read(lambda conn: engine.sql.events.events_after(conn, "news", 3, 10)) == []


def test_a_topic_is_created_by_its_first_event_with_its_publisher_as_owner(engine):
    _publish(engine, "news", max_events=5, max_age=60.0)
    _publish(engine, "news", max_events=99)  # retention is the topic's, set when it was created
    topic = engine.read(lambda conn: engine.sql.events.topics(conn, Pattern("news", False)))["news"]
    assert (topic.owner, topic.last_seq, topic.first_seq, topic.max_age, topic.max_events) == ("alice", 2, 1, 60.0, 5)
    engine.write(lambda conn: engine.sql.events.set_retention(conn, "news", 0.0, 7))
    topic = engine.read(lambda conn: engine.sql.events.topics(conn, Pattern("news", False)))["news"]
    assert (topic.max_age, topic.max_events) == (0.0, 7)


def test_topics_by_name_subtree_or_all(engine):
    for name in ("a", "a/b", "a/b/c", "ab", "b"):
        _publish(engine, name)
    def names(pattern):
        return sorted(engine.read(lambda conn: engine.sql.events.topics(conn, pattern)))

    assert names(Pattern("a", False)) == ["a"]
    assert names(Pattern("a", True)) == ["a", "a/b", "a/b/c"]
    assert names(Pattern("nothing", True)) == []
    assert names(None) == ["a", "a/b", "a/b/c", "ab", "b"]


def test_a_publish_id_finds_its_event(engine):
    seq = _publish(engine, "news", publish_id="p-1")
    assert engine.read(lambda conn: engine.sql.events.find_published(conn, "news", "p-1")) == (seq, "alice")
    assert engine.read(lambda conn: engine.sql.events.find_published(conn, "news", "p-2")) is None
    assert engine.read(lambda conn: engine.sql.events.find_published(conn, "other", "p-1")) is None


def test_a_group_of_events_takes_consecutive_seqs_and_their_publish_ids_are_found_at_once(engine):
    rows = [(int(EventKind.PUBLISHED), f"c{i}", 1, "bob" if i else "alice", 100.0 + i, f"p-{i}" if i % 2 else None)
            for i in range(4)]
    append = engine.sql.events.append_events
    assert engine.write(lambda conn: append(conn, "grouped", rows, max_age=0.0, max_events=9)) == 1
    assert engine.write(lambda conn: append(conn, "grouped", rows[:1], max_age=0.0, max_events=0)) == 5
    found = engine.read(lambda conn: engine.sql.events.events_after(conn, "grouped", 0, 10))
    assert [(seq, cube, publisher) for seq, _, cube, _, publisher, _ in found] == [
        (1, "c0", "alice"), (2, "c1", "bob"), (3, "c2", "bob"), (4, "c3", "bob"), (5, "c0", "alice")]
    topic = engine.read(lambda conn: engine.sql.events.topics(conn, None))["grouped"]
    assert (topic.owner, topic.last_seq, topic.max_events) == ("alice", 5, 9)  # made by the group's first event
    assert engine.read(lambda conn: engine.sql.events.find_published_many(conn, "grouped", ["p-1", "p-3", "p-9"])) == {
        "p-1": (2, "bob"), "p-3": (4, "bob")}
    assert engine.read(lambda conn: engine.sql.events.find_published_many(conn, "grouped", [])) == {}


def test_compaction_keeps_the_retained_events_and_moves_the_first_seq(engine):
    for i in range(5):
        _publish(engine, "counted", f"c{i}", ts=100.0 + i, max_events=2)
    for i in range(3):
        _publish(engine, "aged", f"c{i}", ts=100.0 + 10 * i, max_age=15.0)
    _publish(engine, "kept", ts=1.0)
    removed = engine.write(lambda conn: engine.sql.events.compact(conn, 125.0))
    # counted keeps its last 2; aged drops what is older than 125 - 15 = 110 (seq 1), never its newest.
    assert removed == 3 + 1

    def left(topic):
        return [r[0] for r in engine.read(lambda conn: engine.sql.events.events_after(conn, topic, 0, 10))]

    assert (left("counted"), left("aged"), left("kept")) == ([4, 5], [2, 3], [1])
    found = engine.read(lambda conn: engine.sql.events.topics(conn, None))
    assert (found["counted"].first_seq, found["aged"].first_seq, found["kept"].first_seq) == (4, 2, 1)
    assert _publish(engine, "counted") == 6  # seqs go on after compaction


def test_a_durable_cursor_is_created_once_and_keeps_its_acks(engine):
    assert engine.write(lambda conn: engine.sql.events.open_cursor(conn, "alice", "feed", "news/**", 1.0)) == ("news/**", {})
    engine.write(lambda conn: engine.sql.events.save_cursor(conn, "alice", "feed", {"news/a": 3, "news/b": 1}))
    # Opening it again (even naming another pattern) finds the cursor as it was saved.
    assert engine.write(lambda conn: engine.sql.events.open_cursor(conn, "alice", "feed", "other", 2.0)) == (
        "news/**", {"news/a": 3, "news/b": 1})
    assert engine.write(lambda conn: engine.sql.events.open_cursor(conn, "bob", "feed", "other", 2.0)) == ("other", {})


def test_audit_entries_appended_together_make_the_chain_one_by_one_would(engine):
    entries = [(1.0 + i, "alice", "store.publish", "news", "allow", audit.detail(seq=i + 1)) for i in range(3)]
    engine.write(lambda conn: engine.sql.audit.append_many(conn, entries[:2]))
    engine.write(lambda conn: engine.sql.audit.append_many(conn, []))
    engine.write(lambda conn: engine.sql.audit.append(conn, *entries[2]))
    found = engine.read(lambda conn: engine.sql.audit.read(conn, 0, 1000))[-3:]
    assert [(e.ts, e.agent, e.action, e.target, e.decision, e.detail) for e in found] == entries
    assert [e.seq for e in found] == [found[0].seq, found[0].seq + 1, found[0].seq + 2]
    assert [e.prev_hash for e in found[1:]] == [e.hash for e in found[:-1]]
    assert [e.hash for e in found] == [audit.entry_hash(e.prev_hash, *entries[i]) for i, e in enumerate(found)]
    ok, checked, *_ = engine.read(lambda conn: audit.verify(engine.sql.audit.entries(conn), engine.sql.audit.head(conn)))
    assert ok


def test_the_audit_log_appends_a_chain_that_verifies(engine):
    before = engine.read(lambda conn: engine.sql.audit.read(conn, 0, 1000))  # first start audits the admin's creation
    engine.write(lambda conn: engine.sql.audit.append(conn, 1.0, "alice", "store.publish", "news", "allow", audit.detail(seq=1)))
    engine.write(lambda conn: engine.sql.audit.append(conn, 2.0, "bob", "vault.get", "x", "deny"))
    found = engine.read(lambda conn: engine.sql.audit.read(conn, before[-1].seq if before else 0, 10))
    assert [(e.agent, e.action, e.decision) for e in found] == [("alice", "store.publish", "allow"),
                                                               ("bob", "vault.get", "deny")]
    assert found[1].prev_hash == found[0].hash
    ok, checked, *_ = engine.read(lambda conn: audit.verify(engine.sql.audit.entries(conn), engine.sql.audit.head(conn)))
    assert ok and checked == len(before) + 2



def test_agents_and_policies_are_stored_revoked_and_loaded_back(engine):
    def agents():
        return {row[0]: row[1:] for row in engine.read(engine.sql.governance.load_agents)}

    assert agents()["admin"][1:3] == ((), True)  # first start made the admin
    engine.write(lambda conn: engine.sql.governance.insert_agent(conn, "alice", b"k" * 32, ("team", "ops"), False, 10.0))
    assert agents()["alice"] == (b"k" * 32, ("team", "ops"), False, 10.0, None)
    engine.write(lambda conn: engine.sql.governance.revoke_agent(conn, "alice", 20.0))
    assert agents()["alice"][4] == 20.0

    engine.write(lambda conn: engine.sql.governance.insert_policy(conn, "p1", "admin", "agent:alice", b"{}", b"sig", 30.0))
    assert engine.read(engine.sql.governance.load_policies) == [(b"{}", b"sig", 30.0, None)]
    engine.write(lambda conn: engine.sql.governance.revoke_policy(conn, "p1", 40.0))
    assert engine.read(engine.sql.governance.load_policies) == [(b"{}", b"sig", 30.0, 40.0)]


def test_settings_keep_their_first_value_and_the_epoch_goes_up_by_one(engine):
    first = engine.read(engine.sql.governance.load_settings)
    engine.write(lambda conn: engine.sql.governance.init_settings(conn, {"daemon_id": "other", "policy_epoch": "9", "new": "x"}))
    settings = engine.read(engine.sql.governance.load_settings)
    assert (settings["daemon_id"], settings["policy_epoch"], settings["new"]) == (first["daemon_id"], "1", "x")
    assert engine.write(engine.sql.governance.bump_epoch) == 2
    assert engine.write(engine.sql.governance.bump_epoch) == 3
    assert engine.read(engine.sql.governance.load_settings)["policy_epoch"] == "3"


def test_checkpoints_are_stored_in_order_and_the_newest_found(engine):
    engine.write(lambda conn: engine.sql.audit.append(conn, 1.0, "alice", "vault.put", "x", "allow"))
    last = engine.read(lambda conn: engine.sql.audit.read(conn, 0, 1000))[-1]
    assert engine.read(engine.sql.audit.head) == f"{last.seq}:{last.hash}"
    assert engine.read(engine.sql.governance.last_checkpoint) is None and engine.read(engine.sql.governance.checkpoints) == []
    engine.write(lambda conn: engine.sql.governance.put_checkpoint(conn, 1, 1, "h1", 5.0, b"s1"))
    engine.write(lambda conn: engine.sql.governance.put_checkpoint(conn, 2, last.seq, last.hash, 6.0, b"s2"))
    assert engine.read(engine.sql.governance.last_checkpoint) == (2, last.seq, last.hash, 6.0, b"s2")
    assert engine.read(engine.sql.governance.checkpoints) == [(1, 1, "h1", 5.0, b"s1"), (2, last.seq, last.hash, 6.0, b"s2")]


def _job(job_id, state, created_at, error_type=None, error=None):
    return (job_id, "kv.build", "alice", state, created_at, None, None, 0, 3, "queued", "[]", "{}", error_type, error,
            "member-a", 200.0)


def test_job_records_are_saved_replaced_and_read_newest_first(engine):
    for i in range(3):
        engine.write(lambda conn, i=i: engine.sql.jobs.save(conn, _job(f"j{i}", 1, 100.0 + i)))
    engine.write(lambda conn: engine.sql.jobs.save(conn, _job("j0", 3, 100.0)))  # the same job, now finished
    assert engine.read(lambda conn: engine.sql.jobs.recent(conn, 10)) == [_job("j2", 1, 102.0), _job("j1", 1, 101.0),
                                                                      _job("j0", 3, 100.0)]
    assert [r[0] for r in engine.read(lambda conn: engine.sql.jobs.recent(conn, 2))] == ["j2", "j1"]


def test_unfinished_jobs_are_recorded_as_failed_and_finished_ones_kept(engine):
    for job_id, state in (("queued", 1), ("running", 2), ("done", 3)):
        engine.write(lambda conn, j=job_id, s=state: engine.sql.jobs.save(conn, _job(j, s, 1.0)))
    engine.write(lambda conn: engine.sql.jobs.fail_unfinished(conn, (1, 2), 4, 9.0, "stopped", "submit it again"))
    found = {r[0]: r for r in engine.read(lambda conn: engine.sql.jobs.recent(conn, 10))}
    for job_id in ("queued", "running"):
        assert (found[job_id][3], found[job_id][6], found[job_id][9:14]) == (
            4, 9.0, ("stopped", "[]", "{}", "Unavailable", "submit it again"))
    assert found["done"] == _job("done", 3, 1.0)


def test_a_job_whose_lease_ran_out_is_claimed_once_and_its_old_runner_is_fenced_out(engine):
    jobs = engine.sql.jobs
    engine.write(lambda conn: jobs.create(conn, _job("j", 2, 1.0), '{"text": "t"}'))  # member-a's, until 200
    assert engine.write(lambda conn: jobs.claim(conn, "member-b", ["kv.build"], 150.0, 160.0)) is None  # still held
    assert engine.write(lambda conn: jobs.claim(conn, "member-b", ["adapter.distill"], 250.0, 260.0)) is None
    record, spec, cancel = engine.write(lambda conn: jobs.claim(conn, "member-b", ["kv.build"], 250.0, 260.0))
    assert (record[0], record[3], record[14:], spec, cancel) == ("j", 1, ("member-b", 260.0), '{"text": "t"}', False)
    assert engine.write(lambda conn: jobs.claim(conn, "member-c", ["kv.build"], 255.0, 265.0)) is None  # once
    # member-a, stalled rather than dead, learns it holds the job no longer and writes nothing over member-b's.
    assert engine.write(lambda conn: jobs.renew(conn, "j", "member-a", 300.0, 1, 3, "m", "{}")) is None
    assert engine.write(lambda conn: jobs.save(conn, _job("j", 3, 1.0))) is False
    assert engine.write(lambda conn: jobs.request_cancel(conn, "j"))[0] == "j"
    assert engine.write(lambda conn: jobs.renew(conn, "j", "member-b", 270.0, 1, 3, "m", "{}")) is True
    assert engine.write(lambda conn: engine.sql.leases.take(conn, "sweep", "member-a", 10.0, 20.0)) is True
    assert engine.write(lambda conn: engine.sql.leases.take(conn, "sweep", "member-b", 15.0, 25.0)) is False
    assert engine.write(lambda conn: engine.sql.leases.take(conn, "sweep", "member-a", 15.0, 25.0)) is True
    assert engine.write(lambda conn: engine.sql.leases.take(conn, "sweep", "member-b", 30.0, 40.0)) is True


def test_leases_name_their_holder_are_released_and_earlier_runs_of_a_member_give_theirs_up(engine):
    leases = engine.sql.leases
    assert engine.write(lambda conn: leases.take(conn, "durable\na\nw", "m1:1:aa", 10.0, 20.0)) is True
    assert engine.write(lambda conn: leases.take(conn, "durable\na\nv", "m1:1:aa", 10.0, 20.0)) is True
    assert engine.write(lambda conn: leases.take(conn, "durable\nb\nw", "m10:2:bb", 10.0, 20.0)) is True
    assert engine.write(lambda conn: leases.take(conn, "sweep", "m1:1:aa", 10.0, 20.0)) is True
    assert engine.read(lambda conn: leases.holder(conn, "durable\na\nw", 15.0)) == "m1:1:aa"
    assert engine.read(lambda conn: leases.holder(conn, "durable\na\nw", 25.0)) is None  # ran out
    engine.write(lambda conn: leases.release(conn, "durable\na\nv", "m10:2:bb"))  # not its holder: kept
    assert engine.read(lambda conn: leases.holder(conn, "durable\na\nv", 15.0)) == "m1:1:aa"
    engine.write(lambda conn: leases.release(conn, "durable\na\nv", "m1:1:aa"))
    assert engine.read(lambda conn: leases.holder(conn, "durable\na\nv", 15.0)) is None
    # m1 restarted as m1:3:cc: its earlier run's durable claims go, not m10's, nor other kinds of lease.
    assert engine.write(lambda conn: leases.release_earlier(conn, "durable\n", "m1", "m1:3:cc")) == 1
    assert engine.read(lambda conn: leases.holder(conn, "durable\na\nw", 15.0)) is None
    assert engine.read(lambda conn: leases.holder(conn, "durable\nb\nw", 15.0)) == "m10:2:bb"
    assert engine.read(lambda conn: leases.holder(conn, "sweep", 15.0)) == "m1:1:aa"


def test_the_export_reads_the_cubes_a_filter_selects_in_storage_order(engine, tmp_path):
    from memosd.cube import CubeDraft, CubeFilter
    from memosd.vault import rows
    from memosd.vault.vault import MemVault

    vault = MemVault(tmp_path / "data", db=engine.db)
    drafts = [CubeDraft(namespace=ns, text=f"t{i}") for i, ns in enumerate(["a", "a/b", "ab", "a"])]
    put = asyncio.run(vault.put_many(drafts, "alice"))

    def ids(f, batch=1000):
        now = vault.clock()
        return engine.read(lambda conn: [rows.row_dict(r)["id"] for r in engine.sql.export.cube_rows(conn, f, now, batch)])

    assert ids(CubeFilter(namespace_prefix="a")) == [put[0].id, put[1].id, put[3].id]
    assert ids(CubeFilter(), batch=1) == [c.id for c in put]  # batches join up, in the order stored
    assert ids(CubeFilter(namespace_prefix="nothing")) == []


def test_the_shares_of_some_cubes_on_a_topic(engine):
    from memosd.governance.policy import Share

    def record(conn):
        engine.sql.shares.record(conn, "c1", Share("news", "alice", own=True), "own")
        engine.sql.shares.record(conn, "c1", Share("news", "bob", own=True), "own")
        engine.sql.shares.record(conn, "c2", Share("news", "alice", own=True), "own")
        engine.sql.shares.record(conn, "c1", Share("other", "alice", own=True), "own")

    engine.write(record)
    on_topic = engine.sql.shares.on_topic
    assert sorted(engine.read(lambda conn: on_topic(conn, "news", ["c1", "c3"]))) == [
        ("news", "c1", "alice", "own"), ("news", "c1", "bob", "own")]
    assert engine.read(lambda conn: on_topic(conn, "news", [])) == []
