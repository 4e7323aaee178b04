"""An encoder that keeps its name but changes width between restarts (#17): on either engine, vectors of the old
width are never searched with a query of the new one, and the backlog re-embeds their cubes at the new width."""

from __future__ import annotations

import asyncio
import logging

import pytest

from memosd.cube import CubeDraft, CubeFilter, SearchMode
from memosd.storage import open_database
from memosd.storage.postgres import schema
from memosd.vault import MemVault, search
from tests.storage_engine import vault_settings
from tests.test_dense_search import WordHashEmbedder
from tests.timing import until

OLD, NEW = 64, 48
TEXTS = [f"note number {i}" for i in range(5)]


def _encoder(dim: int) -> WordHashEmbedder:
    # The same name at either width: what the vault keys vectors by does not say the width.
    encoder = WordHashEmbedder("encoder-dir")
    encoder.dim = dim
    return encoder


async def _dense(vault: MemVault, text: str, limit: int = 10) -> list[tuple[str, float]]:
    hits, _ = await vault.search(text, CubeFilter(), limit, SearchMode.DENSE)
    return [(h.cube.text, h.dense_score) for h in hits]


def _as_before_m0011(url: str) -> None:
    """The vault as a memosd before m0011 left it: each model's HNSW index over all its vectors, of any width."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        found = conn.execute("SELECT DISTINCT model, dims FROM embeddings").fetchall()
        conn.execute("ALTER TABLE embeddings DROP COLUMN dims")  # and the indexes over it
        for model, dims in found:
            name = schema.vector_index_name(model, dims)
            conn.execute(f"CREATE INDEX {name} ON embeddings USING hnsw ((vector::vector({dims})) vector_cosine_ops)"
                         f" WHERE model = '{model}'")
        conn.execute(f"DELETE FROM {schema.TABLE} WHERE name = 'm0011_vector_width'")


# postgresql-before-m0011: the daemon that restarts at the new width is also the first to run m0011 on the vault.
@pytest.mark.parametrize("vault_engine", ["sqlite", "postgresql", "postgresql-before-m0011"])
def test_a_model_that_changes_width_is_re_embedded_never_mixed(vault_engine, request, tmp_path, caplog, monkeypatch):
    url = vault_settings(vault_engine.split("-")[0], request).get("vault_url", "sqlite:")
    caplog.set_level(logging.INFO, "memosd.vault")
    monkeypatch.setattr(search, "BACKFILL_BATCH", 2)  # re-embedding in steps leaves both widths stored at once

    def failures() -> list[str]:
        return [f"{r.getMessage()} ({r.exc_info[1]!r})" if r.exc_info else r.getMessage()
                for r in caplog.records if r.levelno >= logging.ERROR]

    async def until_clean(condition, what: str) -> None:
        # A failure logged (the backfill retrying the same error) ends the wait, as the test's failure.
        async def settled():
            return failures() or await condition()

        await until(settled, what, 20)
        assert failures() == []

    async def embedded(vault: MemVault) -> None:
        async def caught_up():
            return not (await vault.stats())["embedding_backlog"]

        await until_clean(caught_up, "the backfill did not finish")

    async def opened(encoder: WordHashEmbedder) -> MemVault:
        vault = MemVault(tmp_path, db=open_database(tmp_path, url=url), embedder=encoder)
        await vault.start()
        return vault

    async def scenario():
        vault = await opened(_encoder(OLD))
        try:
            await vault.put_many([CubeDraft(namespace="a/n", text=t) for t in TEXTS], owner="me")
            await embedded(vault)
            assert (await _dense(vault, "note number 3", 1))[0][0] == "note number 3"
        finally:
            await vault.close()
        if vault_engine == "postgresql-before-m0011":
            _as_before_m0011(url)

        encoder = _encoder(NEW)
        encoder.gate.clear()
        encoder.held.add(TEXTS[2])  # the second batch waits: cubes 0 and 1 at the new width, 2 to 4 at the old
        vault = await opened(encoder)
        try:
            async def reached():
                return encoder.entered.is_set()

            await until_clean(reached, "the old cubes were not re-embedded")
            assert (await vault.stats())["embedding_backlog"] == 3
            # Only the cubes re-embedded are candidates, however near the old vectors of the others would score.
            assert sorted(t for t, _ in await _dense(vault, "note number 3")) == TEXTS[:2]
            hits, _ = await vault.search("note number 3", CubeFilter(), 10, SearchMode.HYBRID)
            assert hits[0].cube.text == "note number 3" and hits[0].dense_score is None
            encoder.gate.set()
            await embedded(vault)
            text, score = (await _dense(vault, "note number 3", 1))[0]
            assert text == "note number 3" and score == pytest.approx(1.0)
            seqs, vectors = await vault.db.read(lambda conn: vault.db.sql.vectors.load(conn, encoder.name, NEW))
            assert len(seqs) == len(TEXTS) and {len(v) for v in vectors} == {NEW}
        finally:
            encoder.gate.set()
            await vault.close()

    asyncio.run(scenario())
