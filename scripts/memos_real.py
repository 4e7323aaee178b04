"""Drive the real MemOS (PyPI MemoryOS) offline: write a naive-text MemCube dump, or load one and print its memories.

Run it with the Python of a separate virtual environment that has MemoryOS installed (memosd never
depends on it): `make memos-env` makes one in .venv-memos (scripts/memos_env.txt, CPU torch), then

    .venv-memos/bin/python scripts/memos_real.py write tests/data/memos/memoryos_naive
    .venv-memos/bin/python scripts/memos_real.py read DIR      # JSON on stdout: memories, KV caches

`write` made tests/data/memos/memoryos_naive (MemoryOS 2.0.33); tests/test_memos_real.py runs both
modes against memosd (`make test` builds the environment and passes it as MEMOSD_MEMOS_PYTHON).
"""

from __future__ import annotations

import json
import logging
import sys

# Memories as a MemOS user adds them: tags, a type, times, a source, a private one, an archived one.
MEMORIES = [
    {"id": "5f0c8a52-3c1e-4f43-9b8e-0d6f4d7c2a11", "memory": "The user loves the Eiffel Tower.",
     "metadata": {"type": "opinion", "tags": ["opinions", "landmarks"], "source": "conversation",
                  "confidence": 98.0, "entities": ["Eiffel Tower"], "memory_time": "2025-06-03",
                  "user_id": "alice", "session_id": "s1", "visibility": "session",
                  "updated_at": "2025-06-03T10:00:00"}},
    {"id": "8d9e3b1a-6f2c-4e5d-a7b8-1c2d3e4f5a6b", "memory": "The user is allergic to peanuts.",
     "metadata": {"type": "fact", "tags": ["health"], "visibility": "private", "updated_at": "2025-06-04T08:30:00",
                  "created_at": "2025-06-04T08:00:00"}},
    {"id": "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", "memory": "The user used to live in Lyon.",
     "metadata": {"type": "event", "status": "archived", "tags": ["home", "past"],
                  "updated_at": "2025-01-15T12:00:00"}},
]


def config(cube_id: str = "alice/naive_cube") -> dict:
    return {
        "user_id": "alice", "cube_id": cube_id,
        "text_mem": {"backend": "naive_text", "config": {"extractor_llm": {"backend": "openai", "config": {
            "model_name_or_path": "unused", "api_key": "unused", "api_base": "http://localhost:9/v1"}}}},
        "act_mem": {}, "para_mem": {},
    }


def main(argv: list[str]) -> int:
    logging.disable(logging.WARNING)
    from memos.configs.mem_cube import GeneralMemCubeConfig
    from memos.mem_cube.general import GeneralMemCube

    mode, directory = argv
    if mode == "write":
        cube = GeneralMemCube(GeneralMemCubeConfig.model_validate(config()))
        cube.text_mem.add(MEMORIES)
        cube.dump(directory)
    elif mode == "read":
        cube = GeneralMemCube.init_from_dir(directory)
        memories = [m.model_dump(mode="json") for m in cube.text_mem.get_all()]
        caches = {key: {"layers": len(item.memory.layers), "shape": list(item.memory.layers[0].keys.shape),
                        "tokens": item.memory.get_seq_length(), "metadata": item.metadata}
                  for key, item in (cube.act_mem.kv_cache_memories.items() if cube.act_mem else [])}
        json.dump({"cube_id": cube.config.cube_id, "backend": cube.config.text_mem.backend, "memories": memories,
                   "kv_caches": caches}, sys.stdout, ensure_ascii=False, default=str)
    else:
        raise SystemExit(f"unknown mode {mode!r}: write DIR or read DIR")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
