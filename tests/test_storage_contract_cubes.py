"""The storage contract for MemVault's cube records: what the core relies on from the engine's cubes and usage modules,
driven directly (no daemon, no gRPC)."""

from memosd.cube import CubeFilter, LifecycleState, MemCube, MemoryKind, Visibility
from memosd.ids import new_id
from memosd.vault import rows

ACTIVE, ARCHIVED, EXPIRED, DELETED = (LifecycleState.ACTIVE, LifecycleState.ARCHIVED, LifecycleState.EXPIRED,
                                      LifecycleState.DELETED)


def _cube(text="t", namespace="a", tags=(), expires_at=None, now=100.0, **fields) -> MemCube:
    return MemCube(id=new_id(now), namespace=namespace, kind=MemoryKind.PLAINTEXT, created_at=now, updated_at=now,
                   owner="alice", text=text, tags=tuple(tags), expires_at=expires_at, **fields)


def _put(engine, *cubes: MemCube) -> list[MemCube]:
    engine.write(lambda conn: engine.sql.cubes.insert_cubes(conn, list(cubes)))
    return list(cubes)


def _row(engine, cube_id):
    return engine.read(lambda conn: engine.sql.cubes.current_row(conn, cube_id))


def _page(engine, f=CubeFilter(), now=100.0, after=0, limit=100, count=True):
    return engine.read(lambda conn: engine.sql.cubes.list_page(conn, f, now, after, limit, count=count))


def _ids(found) -> list[str]:
    return [r["id"] for r in found]


def test_new_cubes_read_back_as_given(engine):
    cube = _cube("héllo", tags=("x", "y"), metadata={"k": [1, "v"]}, source="s", visibility=Visibility.OWNER,
                 priority=-3, expires_at=500.0)
    _put(engine, cube)
    found = engine.read(lambda conn: engine.sql.cubes.current_cube(conn, cube.id, 100.0))
    assert found == cube  # every field, version 1 of 0, active
    row = _row(engine, cube.id)
    assert rows.to_cube(row) == cube and isinstance(row["seq"], int)
    assert engine.read(lambda conn: engine.sql.cubes.current_row(conn, new_id(1.0))) is None
    assert engine.read(lambda conn: engine.sql.cubes.current_cube(conn, new_id(1.0))) is None


def test_a_batch_lists_in_the_order_it_was_put_after_earlier_batches(engine):
    first = _put(engine, *[_cube(f"a{i}") for i in range(3)])
    second = _put(engine, *[_cube(f"b{i}") for i in range(2)])
    found, total = _page(engine)
    assert _ids(found) == [c.id for c in first + second] and total == 5
    seqs = [r["seq"] for r in found]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5


def test_pages_continue_after_a_seq_and_the_count_is_of_every_match(engine):
    put = _put(engine, *[_cube(namespace="a" if i % 2 == 0 else "b") for i in range(7)])
    f = CubeFilter(namespace_prefix="a")
    page, total = _page(engine, f, limit=2)
    assert _ids(page) == [put[0].id, put[2].id] and total == 4
    rest, total = _page(engine, f, after=page[-1]["seq"], limit=10, count=False)
    assert _ids(rest) == [put[4].id, put[6].id] and total is None
    assert _page(engine, f, after=rest[-1]["seq"]) == ([], 4)


def test_the_filter_decides_what_is_listed_and_counted(engine):
    put = _put(engine, _cube(tags=("red",)), _cube(tags=("red", "blue")), _cube(expires_at=150.0), _cube())
    assert _ids(_page(engine, CubeFilter(tags=("red",)))[0]) == [put[0].id, put[1].id]
    assert _ids(_page(engine, CubeFilter(tags=("red", "blue")))[0]) == [put[1].id]
    # Past its expiry a cube lists as expired, even before expire_due has marked it.
    assert _ids(_page(engine, now=200.0)[0]) == [put[0].id, put[1].id, put[3].id]
    assert _page(engine, CubeFilter(states=frozenset({EXPIRED})), now=200.0)[1] == 1


def test_a_new_version_keeps_the_old_one_and_moves_the_tags(engine):
    (cube,) = _put(engine, _cube("one", tags=("old",)))
    old = _row(engine, cube.id)
    new = dict(old, text="two", tags=rows.dumps(["new"]), version=2, parent_version=1, updated_at=110.0)
    engine.write(lambda conn: engine.sql.cubes.write_version(conn, old, new, tags=("new",), text_changed=True))
    now = _row(engine, cube.id)
    assert now == new and now["seq"] == old["seq"]
    assert engine.read(lambda conn: engine.sql.cubes.earlier_version(conn, cube.id, 1)) == rows.to_cube(old)
    assert engine.read(lambda conn: engine.sql.cubes.earlier_version(conn, cube.id, 2)) is None  # current: not earlier
    assert engine.read(lambda conn: engine.sql.cubes.earlier_versions(conn, cube.id)) == [rows.to_cube(old)]
    at = [engine.read(lambda conn, v=v: engine.sql.cubes.cube_at_version(conn, cube.id, v)) for v in (1, 2, 3)]
    assert (at[0].text, at[1].text, at[2]) == ("one", "two", None)
    assert _ids(_page(engine, CubeFilter(tags=("new",)))[0]) == [cube.id]
    assert _page(engine, CubeFilter(tags=("old",))) == ([], 0)


def test_a_version_that_leaves_the_tags_keeps_them(engine):
    (cube,) = _put(engine, _cube(tags=("keep",)))
    old = _row(engine, cube.id)
    new = dict(old, state=int(ARCHIVED), version=2, parent_version=1, updated_at=110.0)
    engine.write(lambda conn: engine.sql.cubes.write_version(conn, old, new))
    assert _row(engine, cube.id)["state"] == ARCHIVED
    assert _ids(_page(engine, CubeFilter(tags=("keep",), states=frozenset({ARCHIVED})))[0]) == [cube.id]


def test_versions_are_oldest_first(engine):
    (cube,) = _put(engine, _cube("v1"))
    for v in (2, 3, 4):
        old = _row(engine, cube.id)
        new = dict(old, text=f"v{v}", version=v, parent_version=v - 1)
        engine.write(lambda conn, o=old, n=new: engine.sql.cubes.write_version(conn, o, n, text_changed=True))
    found = engine.read(lambda conn: engine.sql.cubes.earlier_versions(conn, cube.id))
    assert [(c.version, c.text) for c in found] == [(1, "v1"), (2, "v2"), (3, "v3")]


def test_a_tombstone_has_no_text_or_tags_and_keeps_the_history(engine):
    (cube,) = _put(engine, _cube("secret", tags=("t",)), _cube("other"))[:1]
    row = _row(engine, cube.id)
    assert engine.write(lambda conn: engine.sql.cubes.tombstone(conn, row, 120.0)) == 2
    stone = _row(engine, cube.id)
    assert (stone["state"], stone["text"], stone["version"], stone["parent_version"], stone["updated_at"]) == (
        DELETED, None, 2, 1, 120.0)
    assert engine.read(lambda conn: engine.sql.cubes.current_cube(conn, cube.id)) is None
    assert engine.read(lambda conn: engine.sql.cubes.cube_at_version(conn, cube.id, 1)).text == "secret"
    assert engine.read(lambda conn: engine.sql.cubes.cube_at_version(conn, cube.id, 2)).state is DELETED
    assert engine.read(lambda conn: engine.sql.cubes.earlier_versions(conn, cube.id)) == [rows.to_cube(row)]
    assert cube.id not in _ids(_page(engine, CubeFilter(states=frozenset(LifecycleState)))[0])


def test_expire_due_marks_active_cubes_past_their_expiry(engine):
    past, future, never, archived = _put(engine, _cube(expires_at=150.0), _cube(expires_at=300.0), _cube(),
                                         _cube(expires_at=150.0))
    old = _row(engine, archived.id)
    engine.write(lambda conn: engine.sql.cubes.write_version(conn, old, dict(old, state=int(ARCHIVED), version=2)))
    assert engine.write(lambda conn: engine.sql.cubes.expire_due(conn, 200.0)) == 1
    states = {c.id: _row(engine, c.id)["state"] for c in (past, future, never, archived)}
    assert states == {past.id: EXPIRED, future.id: ACTIVE, never.id: ACTIVE, archived.id: ARCHIVED}
    assert engine.write(lambda conn: engine.sql.cubes.expire_due(conn, 200.0)) == 0
    assert engine.write(lambda conn: engine.sql.cubes.expire_due(conn, 300.0)) == 1  # at its expiry, not after


def test_counts_are_by_kind_and_state(engine):
    put = _put(engine, *[_cube() for _ in range(3)])
    engine.write(lambda conn: engine.sql.cubes.tombstone(conn, _row(engine, put[0].id), 110.0))
    found = engine.read(engine.sql.cubes.counts)
    assert sorted(found) == [(MemoryKind.PLAINTEXT, ACTIVE, 2), (MemoryKind.PLAINTEXT, DELETED, 1)]


def test_usage_counts_utf8_text_bytes_and_not_those_of_tombstones(engine):
    put = _put(engine, _cube("héllo"), _cube("abc"), _cube("gone"))
    engine.write(lambda conn: engine.sql.cubes.tombstone(conn, _row(engine, put[2].id), 110.0))
    found = {(kind, state): (n, text, blob) for kind, state, n, text, blob in engine.read(engine.sql.usage.by_kind_and_state)}
    assert found == {(MemoryKind.PLAINTEXT, ACTIVE): (2, 9, 0), (MemoryKind.PLAINTEXT, DELETED): (1, 0, 0)}


def test_access_counts_add_up_and_keep_the_latest_time(engine):
    a, b = _put(engine, _cube(), _cube())
    engine.write(lambda conn: engine.sql.usage.record_access(conn, [(a.id, 2, 150.0), (b.id, 1, 120.0)]))
    engine.write(lambda conn: engine.sql.usage.record_access(conn, [(a.id, 3, 140.0), (new_id(1.0), 1, 1.0)]))
    found = {c.id: (c.access_count, c.last_accessed_at)
             for c in (engine.read(lambda conn, i=i: engine.sql.cubes.current_cube(conn, i)) for i in (a.id, b.id))}
    assert found == {a.id: (5, 150.0), b.id: (1, 120.0)}


def test_a_setting_keeps_its_first_value(engine):
    assert engine.write(lambda conn: engine.sql.cubes.setting(conn, "page_token_key", "first")) == "first"
    assert engine.write(lambda conn: engine.sql.cubes.setting(conn, "page_token_key", "second")) == "first"
    assert engine.write(lambda conn: engine.sql.cubes.setting(conn, "other_key", "x")) == "x"
