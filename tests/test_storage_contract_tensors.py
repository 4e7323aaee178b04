"""The storage contract for tensor cubes, imports and blob holders: what ActivationVault, ParametricVault,
import_cubes, the tensor sink and blob_access rely on from the engine's tensors and holders modules."""

import asyncio

from memosd.cube import CubeFilter, LifecycleState, MemCube, MemoryKind, Visibility
from memosd.vault import rows
from memosd.vault.blobs import BlobStore


MODEL, OTHER = "a" * 64, "b" * 64
NOW = 1000.0
ACTIVE = CubeFilter(kinds=frozenset({MemoryKind.ACTIVATION}))


def _cube(cube_id, namespace="ns", kind=MemoryKind.ACTIVATION, model=MODEL, sha256="0" * 64, **fields):
    manifest = None if kind is MemoryKind.PLAINTEXT else {"model": {"model_fingerprint": model},
                                                          "blob": {"sha256": sha256, "size": 3}}
    fields.setdefault("manifest", manifest)
    return MemCube(id=cube_id, namespace=namespace, kind=kind, created_at=NOW - 10, updated_at=NOW - 5,
                   owner="alice", **fields)


def _insert(engine, *cubes):
    return engine.write(lambda conn: engine.sql.tensors.insert_cubes(conn, list(cubes)))


def _index(engine, seq, *index):
    engine.write(lambda conn: engine.sql.tensors.index_prefixes(conn, seq, list(index)))


def _cubes(found):
    return [rows.to_cube(rows.row_dict(r), NOW) for r in found]


def _prefix(engine, keys, f=ACTIVE, limit=16, root=b"root"):
    found = engine.read(lambda conn: engine.sql.tensors.prefix_candidates(conn, keys, root, f, NOW, limit))
    return [c.id for c in _cubes(found)]


def _of_model(engine, model=MODEL, f=ACTIVE, derived_from=None, limit=100):
    found = engine.read(lambda conn: engine.sql.tensors.of_model(conn, model, f, NOW, derived_from, limit))
    return [c.id for c in _cubes(found)]


def _blob(engine, tmp_path, data: bytes, holder: str) -> str:
    """A blob stored as the daemon stores one (its row, its holder), through the core's BlobStore."""
    async def put():
        store = BlobStore(tmp_path / "files", engine.db, max_blob_bytes=1 << 20)
        await store.start()
        try:
            return (await store.put_parts([data], holder))[0]
        finally:
            await store.stop()

    (tmp_path / "files").mkdir(exist_ok=True)
    return asyncio.run(put())


def _collect(engine, tmp_path) -> int:
    """Sweep the blobs no cube references, with no grace period: how many went."""
    async def sweep():
        store = BlobStore(tmp_path / "files", engine.db, max_blob_bytes=1 << 20)
        await store.start()
        try:
            return await store.sweep(grace=0)
        finally:
            await store.stop()

    return asyncio.run(sweep())


def test_new_cubes_get_increasing_seqs_and_read_back_as_given(engine):
    tensor = _cube("c1", tags=("x", "y"), metadata={"k": [1, "é"]}, source="build", visibility=Visibility.OWNER,
                   priority=-3, expires_at=NOW + 60, derived_from=("p1", "p2"))
    plain = _cube("c2", kind=MemoryKind.PLAINTEXT, text="hello", state=LifecycleState.EXPIRED, tags=("x",))
    seqs = _insert(engine, tensor, plain)
    assert len(seqs) == 2 and seqs[0] < seqs[1]
    assert _insert(engine, _cube("c3"))[0] > seqs[1]
    found = _cubes(engine.read(lambda conn: engine.sql.tensors.of_model(conn, MODEL, CubeFilter(), NOW, None, 10)))
    assert [c.id for c in found] == ["c3", "c1"]
    assert found[1] == tensor  # every field as given: version 1, no parent, no accesses yet
    # A plaintext cube is stored with its text and state; the tag index holds both cubes' tags.
    tagged = CubeFilter(tags=("x",), states=frozenset(LifecycleState))
    assert engine.read(lambda conn: engine.sql.tensors.namespaces_of(conn, ["c2"])) == {"c2": "ns"}
    assert [c.id for c in _cubes(engine.read(lambda conn: list(engine.sql.export.cube_rows(conn, tagged, NOW))))] == [
        "c1", "c2"]
    assert _cubes(engine.read(lambda conn: list(engine.sql.export.cube_rows(conn, tagged, NOW))))[1] == plain


def test_a_blob_reference_is_taken_only_on_a_stored_blob_and_keeps_it(engine, tmp_path):
    kept = _blob(engine, tmp_path, b"kept", "alice")
    dropped = _blob(engine, tmp_path, b"dropped", "alice")
    assert engine.write(lambda conn: engine.sql.tensors.reference_blob(conn, "f" * 64)) is False
    assert engine.write(lambda conn: engine.sql.tensors.reference_blob(conn, kept)) is True
    assert _collect(engine, tmp_path) == 1  # the unreferenced one goes, the referenced one stays
    assert engine.read(lambda conn: engine.sql.holders.blob_size(conn, kept)) == 4
    assert engine.read(lambda conn: engine.sql.holders.blob_size(conn, dropped)) is None


def test_the_longest_indexed_prefix_wins_and_ties_come_newest_first(engine):
    (short,) = _insert(engine, _cube("short"))
    _index(engine, short, (b"k1", 16))
    (long_a,) = _insert(engine, _cube("long-a"))
    _index(engine, long_a, (b"k1", 16), (b"k2", 32))
    (long_b,) = _insert(engine, _cube("long-b"))
    _index(engine, long_b, (b"k1", 16), (b"k2", 32))
    assert _prefix(engine, [b"k1", b"k2", b"k3"]) == ["long-b", "long-a"]
    assert _prefix(engine, [b"k1", b"k2", b"k3"], limit=1) == ["long-b"]
    assert _prefix(engine, [b"k1"]) == ["long-b", "long-a", "short"]
    assert _prefix(engine, [b"k9"]) == []


def test_without_a_shared_block_the_root_key_finds_the_short_cubes(engine):
    (tiny,) = _insert(engine, _cube("tiny"))
    _index(engine, tiny, (b"root", 5))
    (other,) = _insert(engine, _cube("other-model"))
    _index(engine, other, (b"other-root", 5))
    assert _prefix(engine, [b"k1"]) == ["tiny"]
    assert _prefix(engine, []) == ["tiny"]  # a prompt shorter than one block has no block keys
    assert _prefix(engine, [b"k1"], root=b"nothing") == []


def test_a_prompt_with_thousands_of_block_keys_still_finds_the_longest_prefix(engine):
    keys = [f"k{i}".encode() for i in range(10_000)]
    (early,) = _insert(engine, _cube("early"))
    _index(engine, early, (keys[3], 64))
    (late,) = _insert(engine, _cube("late"))
    _index(engine, late, (keys[3], 64), (keys[5000], 80_016))
    assert _prefix(engine, keys) == ["late"]
    assert _prefix(engine, keys[:4000]) == ["late", "early"]


def test_prefix_lookup_honours_the_filter(engine):
    cubes = [_cube("here"), _cube("elsewhere", namespace="other"), _cube("archived", state=LifecycleState.ARCHIVED),
             _cube("expired", expires_at=NOW - 1), _cube("private", visibility=Visibility.OWNER)]
    for seq in _insert(engine, *cubes):
        _index(engine, seq, (b"k1", 16))
    f = CubeFilter(namespace_prefix="ns", kinds=frozenset({MemoryKind.ACTIVATION}), viewer="bob")
    assert _prefix(engine, [b"k1"], f=f) == ["here"]
    assert _prefix(engine, [b"k1"], f=CubeFilter(namespace_prefix="ns", kinds=f.kinds, viewer="alice")) == [
        "private", "here"]


def test_cubes_of_a_model_newest_first_filtered_by_kind_and_lineage(engine):
    _insert(engine, _cube("a1", kind=MemoryKind.PARAMETRIC, derived_from=("src-1",)),
            _cube("a2", kind=MemoryKind.PARAMETRIC, derived_from=("src-2", "src-3")),
            _cube("kv", kind=MemoryKind.ACTIVATION, derived_from=("src-1",)),
            _cube("other", kind=MemoryKind.PARAMETRIC, model=OTHER, derived_from=("src-1",)),
            _cube("gone", kind=MemoryKind.PARAMETRIC, state=LifecycleState.DELETED),
            _cube("text", kind=MemoryKind.PLAINTEXT, text="t"))
    adapters = CubeFilter(kinds=frozenset({MemoryKind.PARAMETRIC}))
    assert _of_model(engine, f=adapters) == ["a2", "a1"]
    assert _of_model(engine, f=adapters, limit=1) == ["a2"]
    assert _of_model(engine, OTHER, f=adapters) == ["other"]
    assert _of_model(engine) == ["kv"]
    assert _of_model(engine, f=adapters, derived_from=["src-1"]) == ["a1"]
    assert _of_model(engine, f=adapters, derived_from=["src-3", "src-1"]) == ["a2", "a1"]
    assert _of_model(engine, f=adapters, derived_from=["nothing"]) == []
    assert _of_model(engine, f=adapters, derived_from=[]) == []


def test_holders_are_recorded_once_per_agent_and_checked_per_blob(engine, tmp_path):
    sha = _blob(engine, tmp_path, b"bytes", "alice")  # storing a blob records its holder
    assert engine.read(lambda conn: engine.sql.holders.holds(conn, sha, "alice")) is True
    assert engine.read(lambda conn: engine.sql.holders.holds(conn, sha, "bob")) is False
    engine.write(lambda conn: engine.sql.holders.record(conn, sha, "bob", NOW))
    engine.write(lambda conn: engine.sql.holders.record(conn, sha, "bob", NOW + 1))  # again: no error
    assert engine.read(lambda conn: engine.sql.holders.holds(conn, sha, "bob")) is True
    assert engine.read(lambda conn: engine.sql.holders.holds(conn, "e" * 64, "bob")) is False
    assert engine.read(lambda conn: engine.sql.holders.blob_size(conn, sha)) == 5
    assert engine.read(lambda conn: engine.sql.holders.blob_size(conn, "e" * 64)) is None


def test_holders_are_forgotten_with_their_blob(engine, tmp_path):
    sha = _blob(engine, tmp_path, b"bytes", "alice")
    assert _collect(engine, tmp_path) == 1
    again = _blob(engine, tmp_path, b"bytes", "bob")  # the same content stored anew, by someone else
    assert again == sha
    assert engine.read(lambda conn: engine.sql.holders.holds(conn, sha, "alice")) is False
    assert engine.read(lambda conn: engine.sql.holders.holds(conn, sha, "bob")) is True


def test_the_cubes_naming_a_blob_are_the_live_ones(engine):
    sha = "c" * 64
    _insert(engine, _cube("kv", sha256=sha, visibility=Visibility.OWNER),
            _cube("ad", namespace="other", kind=MemoryKind.PARAMETRIC, sha256=sha, state=LifecycleState.ARCHIVED),
            _cube("gone", sha256=sha, state=LifecycleState.DELETED), _cube("unrelated", sha256="d" * 64),
            _cube("text", kind=MemoryKind.PLAINTEXT, text="t"))
    found = engine.read(lambda conn: engine.sql.holders.naming_cubes(conn, sha))
    assert sorted(tuple(r) for r in found) == [("ad", "other", int(MemoryKind.PARAMETRIC), "alice", int(Visibility.NAMESPACE)),
                                               ("kv", "ns", int(MemoryKind.ACTIVATION), "alice", int(Visibility.OWNER))]
    assert engine.read(lambda conn: engine.sql.holders.naming_cubes(conn, "e" * 64)) == []


def test_an_import_finds_the_ids_taken_and_by_which_namespace(engine):
    ids = [f"id-{i}" for i in range(5000)]  # more than one statement may take at once
    _insert(engine, _cube(ids[0], kind=MemoryKind.PLAINTEXT, text="t"),
            _cube(ids[4999], namespace="other", kind=MemoryKind.PLAINTEXT, text="t"))
    assert engine.read(lambda conn: engine.sql.tensors.namespaces_of(conn, ids)) == {ids[0]: "ns", ids[4999]: "other"}
    assert engine.read(lambda conn: engine.sql.tensors.namespaces_of(conn, ["nobody"])) == {}
    assert engine.read(lambda conn: engine.sql.tensors.namespaces_of(conn, [])) == {}


def test_an_imports_live_payload_check_is_per_namespace_and_kind(engine):
    sha = "c" * 64
    _insert(engine, _cube("kv", sha256=sha), _cube("gone", namespace="old", sha256=sha, state=LifecycleState.DELETED),
            _cube("archived", namespace="kept", kind=MemoryKind.PARAMETRIC, sha256=sha, state=LifecycleState.ARCHIVED))

    def live(namespace, kind, digest=sha):
        return engine.read(lambda conn: engine.sql.tensors.has_live_payload(conn, namespace, kind, digest))

    assert live("ns", MemoryKind.ACTIVATION) is True
    assert live("ns", MemoryKind.PARAMETRIC) is False
    assert live("ns", MemoryKind.ACTIVATION, "d" * 64) is False
    assert live("old", MemoryKind.ACTIVATION) is False  # a deleted cube no longer holds the payload
    assert live("kept", MemoryKind.PARAMETRIC) is True  # an archived one still does
    assert live("ns/sub", MemoryKind.ACTIVATION) is False


def test_an_agents_import_counts_only_its_own_cubes_as_holding_the_payload(engine):
    sha = "e" * 64
    _insert(engine, _cube("hers", sha256=sha))  # owned by alice

    def live(owner):
        return engine.read(lambda conn: engine.sql.tensors.has_live_payload(conn, "ns", MemoryKind.ACTIVATION, sha, owner))

    assert live(None) is True and live("alice") is True
    assert live("bob") is False
