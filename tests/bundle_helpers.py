"""Writing synthetic export bundles (plaintext cubes, KV-cache payloads) for tests and bench/export_import.py."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from memos_mip.bundle_format import FORMAT, VERSION, rfc3339
from memos_mip.tensor_format import TensorSpec, encode_header, kv_names, prefix_hash
from memosd.ids import new_id

MODEL = hashlib.sha256(b"bench-model").hexdigest()


def kv_payload(layers: int, heads: int, tokens: int, head_dim: int, seed: int) -> tuple[bytes, dict]:
    """A valid float16 KV-cache payload (safetensors) and the manifest of an activation cube for it."""
    spec = TensorSpec("float16", (1, heads, tokens, head_dim))
    header = encode_header([(name, spec) for name in kv_names(layers)])
    body = _pseudo(spec.nbytes * 2 * layers, seed)
    data = header + body
    token_ids = [(seed * 7919 + i) % 50000 for i in range(tokens)]
    sha = hashlib.sha256(data).hexdigest()
    manifest = {"blob": {"sha256": sha, "size": len(data)}, "token_ids": token_ids,
                "prefix_hash": prefix_hash(token_ids), "num_layers": layers,
                "layers": [{"key": spec.to_json(), "value": spec.to_json()} for _ in range(layers)],
                "layout": "dynamic_cache",
                "model": {"model_fingerprint": MODEL, "tokenizer_fingerprint": "", "dtype": "float16"}}
    return data, manifest


def _pseudo(n: int, seed: int) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB, different per payload
    return (block * (n // len(block) + 1))[:n]


def write_bundle(root: Path, *, cubes: int = 0, namespace: str = "agents/admin/bench", kv: int = 0,
                 kv_shape: tuple[int, int, int, int] = (2, 2, 8, 16), text_bytes: int = 200) -> dict:
    """A bundle directory with `cubes` plaintext cubes and `kv` activation cubes; returns its manifest."""
    root.mkdir(parents=True)
    now = time.time()
    files = []
    h = hashlib.sha256()
    size = 0
    with open(root / "cubes.jsonl", "wb") as f:
        for i in range(cubes):
            line = _line({"id": new_id(now), "namespace": namespace, "kind": "plaintext", "state": "active",
                          "created_at": rfc3339(now), "updated_at": rfc3339(now), "owner": "bench",
                          "tags": [f"t{i % 10}"], "metadata": {"i": i},
                          "text": f"cube {i} " + ("lorem ipsum " * (text_bytes // 12))[:text_bytes]})
            f.write(line)
            h.update(line)
            size += len(line)
        if kv:
            (root / "tensors").mkdir()
        for i in range(kv):
            data, manifest = kv_payload(*kv_shape, seed=i)
            sha = manifest["blob"]["sha256"]
            (root / "tensors" / f"{sha}.safetensors").write_bytes(data)
            files.append({"path": f"tensors/{sha}.safetensors", "size": len(data), "sha256": sha})
            line = _line({"id": new_id(now), "namespace": namespace, "kind": "activation", "state": "active",
                          "created_at": rfc3339(now), "owner": "bench", "tags": ["kv"], "manifest": manifest})
            f.write(line)
            h.update(line)
            size += len(line)
    empty = hashlib.sha256(b"").hexdigest()
    for name in ("policies.jsonl", "agents.jsonl"):
        (root / name).write_bytes(b"")
    files = [{"path": "cubes.jsonl", "size": size, "sha256": h.hexdigest()},
             {"path": "policies.jsonl", "size": 0, "sha256": empty},
             {"path": "agents.jsonl", "size": 0, "sha256": empty}, *files]
    manifest = {"format": FORMAT, "version": VERSION, "created_at": rfc3339(now), "root": namespace,
                "producer": {"software": "tests"}, "counts": {"cubes": cubes + kv}, "files": files}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def _line(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"
