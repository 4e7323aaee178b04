"""Every kind of bad input gets the right status code and a message a person can act on."""

import dataclasses
import threading

import grpc
import pytest

from memos_client import Conflict, FailedPrecondition, InvalidArgument, MemosClient, NotFound
from memos_mip.v1 import cube_pb2, vault_pb2, vault_pb2_grpc
from memosd.limits import Limits
from tests.daemon import admin_channel, make_config, running

pytestmark = pytest.mark.vaults  # each test once per vault engine (SQLite, PostgreSQL)


def _code(fn):
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code(), info.value.details()


@pytest.fixture
def stub(daemon):
    with admin_channel(daemon.address, daemon.config.data_dir) as channel:
        yield vault_pb2_grpc.VaultServiceStub(channel), channel


@pytest.mark.parametrize("text", ["", "   \n\t"])
def test_empty_text(client, text):
    with pytest.raises(InvalidArgument, match="text is empty"):
        client.put(text, "agents/a/n")


def test_oversized_text_uses_configured_limit(tmp_path):
    config = make_config(tmp_path)
    config = dataclasses.replace(config, limits=Limits(max_text_bytes=100))
    with running(config) as d, MemosClient(d.address, key=d.admin_key) as c:
        c.put("x" * 100, "agents/a/n")
        with pytest.raises(InvalidArgument, match="101 bytes; the limit is 100"):
            c.put("x" * 101, "agents/a/n")


@pytest.mark.parametrize("namespace", [
    "", "agents//bob", "agents/alice/../bob", "agents/./x", "/agents/a", "agents/a/", "Agents/Alice",
    "agents/аlice",  # Cyrillic 'а': a look-alike
    "agents/a b", "a/b/c/d/e/f/g/h/i",
])
def test_bad_namespaces(client, namespace):
    with pytest.raises(InvalidArgument, match="namespace"):
        client.put("text", namespace)


def test_invalid_utf8_on_the_wire_is_invalid_argument(stub):
    stub_, channel = stub
    good = vault_pb2.PutRequest(cube=cube_pb2.CubeDraft(namespace="agents/a/n", text="ok")).SerializeToString()
    bad = good.replace(b"ok", b"\xff\xfe")
    put = channel.unary_unary("/memos.v1.VaultService/Put", request_serializer=None, response_deserializer=None)
    code, details = _code(lambda: put(bad, timeout=10))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "UTF-8" in details


def test_invalid_utf8_from_python_is_caught_by_the_client(client):
    with pytest.raises(InvalidArgument, match="UTF-8"):
        client.put("bad \udcff surrogate", "agents/a/n")


def test_malformed_fts_query(client):
    client.put("foo bar", "agents/a/n")
    for query in ['"foo AND (', "foo AND", "NEAR(", "col:foo"]:
        with pytest.raises(InvalidArgument, match="FTS5"):
            client.search(query, fts=True)
    # The same text as a plain query is just words.
    assert [h.cube.text for h in client.search('"foo AND (')] == ["foo bar"]
    with pytest.raises(InvalidArgument, match="no words"):
        client.search("(*&^%", mode="bm25")


def test_a_query_of_ten_thousand_words_or_only_stopwords(daemon, client):
    client.put_many([{"text": "the cat is on the mat", "namespace": "agents/a/n"},
                     {"text": "a dog", "namespace": "agents/a/n"}])
    huge = " ".join(f"word{i}" for i in range(10_000))
    for fts in (False, True):
        with pytest.raises(InvalidArgument, match="query is .* bytes; the limit is 4096") as err:
            client.search(huge, fts=fts)
        assert "word1 word2" not in str(err.value)
    # Only stopwords: they are the query then. SQLite indexes them; PostgreSQL's english configuration does not
    # (docs/storage.md), so there it finds nothing, without an error.
    on_sqlite = not daemon.config.vault_url.startswith("postgresql")
    assert [h.cube.text for h in client.search("the is on", mode="bm25")] == ["the cat is on the mat"] * on_sqlite
    # 4 KiB of query words in a script without spaces: pairs, at most 64 of them counted.
    assert client.search("苹果" * 600, mode="bm25") == []


def test_tampered_and_foreign_page_tokens(client):
    client.put_many([{"text": f"n{i}", "namespace": "agents/a/n"} for i in range(5)])
    token = client.list_page(page_size=2).next_page_token
    for bad in [token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB"), "garbage", token + "x", "é"]:
        with pytest.raises(InvalidArgument, match="page_token"):
            client.list_page(page_size=2, page_token=bad)
    with pytest.raises(InvalidArgument, match="different filter"):
        client.list_page("agents/b", page_size=2, page_token=token)
    assert len(client.list_page(page_size=2, page_token=token).cubes) == 2


def test_unknown_and_malformed_ids(client):
    missing = "01JAAAAAAAAAAAAAAAAAAAAAAA"
    for call in (client.get, client.delete, client.history, lambda i: client.update(i, text="x")):
        with pytest.raises(NotFound, match=missing):
            call(missing)
    with pytest.raises(InvalidArgument, match="not a cube id"):
        client.get("../../etc/passwd")
    cube = client.put("x", "agents/a/n")
    with pytest.raises(NotFound, match="no version 7"):
        client.get(cube.id, version=7)


def test_update_of_deleted_cube(client):
    cube = client.put("x", "agents/a/n")
    client.delete(cube.id)
    with pytest.raises(FailedPrecondition, match="deleted"):
        client.update(cube.id, text="y")


def test_bad_updates(client, stub):
    cube = client.put("x", "agents/a/n")
    with pytest.raises(InvalidArgument, match="nothing to update"):
        client.update(cube.id)
    with pytest.raises(InvalidArgument, match="text is empty"):
        client.update(cube.id, text="")
    with pytest.raises(Conflict):
        client.update(cube.id, text="y", expected_version=5)
    stub_, _ = stub
    req = vault_pb2.UpdateRequest(id=cube.id, update_mask={"paths": ["namespace"]})
    code, details = _code(lambda: stub_.Update(req, timeout=10))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "namespace" in details


def test_bad_limits_and_enums(client, stub):
    stub_, _ = stub
    with pytest.raises(InvalidArgument, match="ttl_seconds"):
        client.put("x", "agents/a/n", ttl=-5)
    with pytest.raises(InvalidArgument, match="metadata"):
        client.put("x", "agents/a/n", metadata={"k": "v" * 20000})
    with pytest.raises(InvalidArgument, match="tag"):
        client.put("x", "agents/a/n", tags=["has space"])
    with pytest.raises(InvalidArgument, match="page_size"):
        client.list_page(page_size=5000)
    with pytest.raises(InvalidArgument, match="limit"):
        client.search("x", limit=100000)
    code, details = _code(lambda: stub_.Search(vault_pb2.SearchRequest(query="x", mode=42), timeout=10))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "mode" in details
    code, _ = _code(lambda: stub_.List(vault_pb2.ListRequest(filter={"states": [4]}), timeout=10))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    code, _ = _code(lambda: stub_.Put(vault_pb2.PutRequest(), timeout=10))
    assert code is grpc.StatusCode.INVALID_ARGUMENT


def test_bad_batch_is_rejected_whole_and_earlier_batches_stay(client, stub):
    stub_, _ = stub
    good = vault_pb2.PutBatchRequest(cubes=[cube_pb2.CubeDraft(namespace="agents/a/n", text=f"g{i}") for i in range(3)])
    bad = vault_pb2.PutBatchRequest(cubes=[cube_pb2.CubeDraft(namespace="agents/a/n", text="fine"),
                                           cube_pb2.CubeDraft(namespace="agents/a/n", text="")])
    responses = stub_.PutStream(iter([good, bad]), timeout=10)
    assert len(next(responses).ids) == 3
    with pytest.raises(grpc.RpcError) as info:
        next(responses)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT and "cube 1 of the batch" in info.value.details()
    assert sorted(c.text for c in client.list()) == ["g0", "g1", "g2"]


def test_oversized_batch(client):
    with pytest.raises(InvalidArgument, match="at most 1000"):
        client.put_many([{"text": "x", "namespace": "agents/a/n"}] * 1001, batch_size=1001)


def test_client_disconnect_mid_stream_loses_nothing_acknowledged(client, stub):
    stub_, _ = stub
    acked: list[str] = []
    sent = threading.Event()

    def requests():
        for b in range(1000):
            yield vault_pb2.PutBatchRequest(
                cubes=[cube_pb2.CubeDraft(namespace="agents/a/n", text=f"b{b} c{i}") for i in range(50)])
            if b == 5:
                sent.set()

    call = stub_.PutStream(requests(), timeout=30)
    for ack in call:
        acked.extend(ack.ids)
        if len(acked) >= 200:
            call.cancel()
            break
    stored = {c.id: c.text for c in client.list(page_size=1000)}
    assert set(acked) <= set(stored)
    # Batches are all-or-nothing: every stored batch is complete.
    per_batch: dict[str, int] = {}
    for text in stored.values():
        per_batch[text.split()[0]] = per_batch.get(text.split()[0], 0) + 1
    assert set(per_batch.values()) == {50}
