"""The storage contract for blob rows (db.sql.blobs): what BlobStore relies on, driven directly on each engine."""

A, B = "a" * 64, "b" * 64


def _record(engine, sha, now, size=10, checksum="c" * 32):
    engine.write(lambda conn: engine.sql.blobs.record(conn, sha, size, checksum, now))


def test_recorded_blobs_are_known_once_each(engine):
    assert engine.read(engine.sql.blobs.known) == set()
    _record(engine, A, 100.0)
    _record(engine, A, 101.0, size=99)  # a row there already stays as it was
    _record(engine, B, 102.0)
    assert engine.read(engine.sql.blobs.known) == {A, B}
    assert engine.read(lambda conn: engine.sql.blobs.checksum(conn, A)) == ("c" * 32,)


def test_an_unreferenced_blob_is_collected_only_after_its_grace(engine):
    _record(engine, A, 100.0)
    _record(engine, B, 300.0)
    assert engine.write(lambda conn: engine.sql.blobs.collect(conn, 99.0)) == []
    assert engine.write(lambda conn: engine.sql.blobs.collect(conn, 100.0)) == [A]
    assert engine.read(engine.sql.blobs.known) == {B}
    assert engine.write(lambda conn: engine.sql.blobs.collect(conn, 100.0)) == []


def test_recording_a_stored_blob_again_restarts_its_grace(engine):
    # A second holder proving the bytes gets the grace period to reference them, as the first did.
    _record(engine, A, 100.0)
    _record(engine, A, 200.0)
    assert engine.write(lambda conn: engine.sql.blobs.collect(conn, 150.0)) == []
    assert engine.write(lambda conn: engine.sql.blobs.collect(conn, 200.0)) == [A]


def test_checksums_are_read_and_filled_in(engine):
    assert engine.read(lambda conn: engine.sql.blobs.checksum(conn, A)) is None
    _record(engine, A, 100.0, checksum=None)  # a blob stored before checksums were kept
    assert engine.read(lambda conn: engine.sql.blobs.checksum(conn, A)) == (None,)
    engine.write(lambda conn: engine.sql.blobs.set_checksum(conn, A, "d" * 32))
    assert engine.read(lambda conn: engine.sql.blobs.checksum(conn, A)) == ("d" * 32,)


def test_the_blob_store_holds_no_sql():
    # Its rows are the engine's blobs module, its bytes an object store's (memosd/storage/objects/).
    from tests.test_storage_seam import ROOT, _sql_and_statements, storage_access

    path = ROOT / "memosd" / "vault" / "blobs.py"
    source = path.read_text()
    found = _sql_and_statements(source, "blobs.py") + [f for f in storage_access(source, "blobs.py") if "import" in f]
    assert not found, "\n".join(found)
