"""The HNSW index saved in the data directory: two data files and a manifest that commits them, replaced atomically."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import xxhash

from memosd.vault.ann import AnnIndex, _faiss

log = logging.getLogger("memosd.vault")
FORMAT = 1
MANIFEST = "index.json"


def save(index: AnnIndex, folder: Path, model: str, rev: int) -> None:
    """Write the index as covering the vector log up to `rev`: data files first (fsynced), then the manifest
    naming them by temp file and rename, so a crash at any point leaves the previous save or this one whole."""
    faiss = _faiss()
    folder.mkdir(parents=True, exist_ok=True)
    old = _read_manifest(folder)
    gen = int(old.get("gen", 0)) + 1 if old else 1
    with index.lock:
        # Rows are copied under the lock; the graph is only read by searches, and only this saver's caller adds.
        meta: dict[str, np.ndarray] = {"row_seq": index.row_seq.copy(), "row_ns": index.row_ns.copy(), "row_created": index.row_created.copy(),
                "namespaces": np.frombuffer(json.dumps(index.namespaces).encode(), dtype=np.uint8)}
        graph = faiss.serialize_index(index.graph)
    rows = io.BytesIO()
    np.savez(rows, row_seq=meta["row_seq"], row_ns=meta["row_ns"], row_created=meta["row_created"],
             namespaces=meta["namespaces"])
    files = {}
    for part, data in (("graph", memoryview(graph)), ("rows", rows.getbuffer())):
        name = f"g{gen}.{part}"
        _write(folder / name, data)
        files[part] = {"name": name, "size": len(data), "xxh3": xxhash.xxh3_128_hexdigest(data)}
    manifest = {"format": FORMAT, "model": model, "dim": index.dim, "rev": int(rev), "gen": gen, "files": files}
    _write(folder / (MANIFEST + ".tmp"), json.dumps(manifest).encode())
    os.replace(folder / (MANIFEST + ".tmp"), folder / MANIFEST)
    _fsync_dir(folder)
    for stale in folder.iterdir():
        if stale.name not in {MANIFEST} | {f["name"] for f in files.values()}:
            stale.unlink(missing_ok=True)


def load(folder: Path, model: str, dim: int) -> tuple[AnnIndex, int] | None:
    """The saved index and the log rev it covers, or None (with the reason logged) when there is none for this
    model and width, or its files are truncated, corrupt or do not agree."""
    manifest = _read_manifest(folder)
    if manifest is None:
        return None
    try:
        if manifest.get("format") != FORMAT or manifest.get("model") != model or manifest.get("dim") != dim:
            log.info("saved dense index is for another model or width: rebuilding it")
            return None
        parts = {}
        for part in ("graph", "rows"):
            entry = manifest["files"][part]
            data = (folder / entry["name"]).read_bytes()
            if len(data) != entry["size"] or xxhash.xxh3_128_hexdigest(data) != entry["xxh3"]:
                raise ValueError(f"{entry['name']} is truncated or corrupt")
            parts[part] = data
        index = _rebuilt(parts, dim)
        return index, int(manifest["rev"])
    except Exception as exc:  # whatever is wrong with the files, the vault's vectors rebuild the index
        log.warning("saved dense index unusable (%s): rebuilding it from the vault", exc)
        return None


def _rebuilt(parts: dict[str, bytes], dim: int) -> AnnIndex:
    faiss = _faiss()
    graph = faiss.deserialize_index(np.frombuffer(parts["graph"], dtype=np.uint8))
    with np.load(io.BytesIO(parts["rows"]), allow_pickle=False) as meta:
        row_seq, row_ns, row_created = meta["row_seq"], meta["row_ns"], meta["row_created"]
        namespaces = json.loads(bytes(meta["namespaces"]).decode())
    if not isinstance(graph, faiss.IndexHNSWFlat) or graph.d != dim or not (graph.ntotal == len(row_seq) == len(row_ns) == len(row_created)):
        raise ValueError("graph and rows disagree")
    if len(row_ns) and (row_ns.min() < 0 or row_ns.max() >= len(namespaces)):
        raise ValueError("a row names an unknown namespace")
    index = AnnIndex(dim)
    index.graph = graph  # the owning wrapper: a downcast_index() one would not keep the graph alive
    index.row_seq, index.row_ns, index.row_created = row_seq.copy(), row_ns.copy(), row_created.copy()
    index.namespaces = list(namespaces)
    index._ns_ids = {n: i for i, n in enumerate(index.namespaces)}
    index.rows = {int(s): i for i, s in enumerate(row_seq.tolist()) if s >= 0}
    return index


def _read_manifest(folder: Path) -> dict | None:
    try:
        found = json.loads((folder / MANIFEST).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("saved dense index manifest unreadable (%s): rebuilding it from the vault", exc)
        return None
    return found if isinstance(found, dict) else None


def _write(path: Path, data) -> None:
    with open(path, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
