"""docs/bundles.md's "Coming from MemOS" works as written, on MemOS's own example cubes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_memos_real import MEMOS_PYTHON

DOC = Path(__file__).resolve().parents[1] / "docs" / "bundles.md"
DATA = Path(__file__).parent / "data" / "memos"


def section_blocks(title: str, lang: str = "sh") -> list[str]:
    text = DOC.read_text()
    body = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return [code for skip, code in re.findall(rf"^(<!-- readme-test: skip [^>]*-->\n)?```{lang}\n(.*?)^```", body,
                                              re.S | re.M) if not skip]


def test_coming_from_memos_runs_as_written(daemon, tmp_path):
    (block,) = section_blocks("Coming from MemOS")
    examples = tmp_path / "MemOS" / "examples" / "data"
    examples.mkdir(parents=True)
    for name in ("mem_cube_2", "mem_cube_tree"):
        shutil.copytree(DATA / name, examples / name)
    env = {**os.environ, "MEMOS_ADDR": daemon.address, "MEMOS_KEY": str(daemon.admin_key),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", "-c", f"set -euo pipefail\n{block}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "note: ignored 'README.md'" in done.stderr and "The user loves the Eiffel Tower." in done.stdout
    items = json.loads((tmp_path / "to-memos" / "textual_memory.json").read_text())
    assert len(items) == 6

    # The Python block, in MemOS itself (make memos-env; tests/test_memos_real.py says when it is there).
    if not MEMOS_PYTHON:
        if os.environ.get("CI"):
            pytest.fail("CI runs the docs' MemOS block in the real MemOS: make memos-env (make test does)")
        pytest.skip("no Python with MemoryOS for the docs' MemOS block: make memos-env")
    (code,) = section_blocks("Coming from MemOS", "python")
    loaded = subprocess.run([MEMOS_PYTHON, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert "The user loves the Eiffel Tower." in loaded.stdout and "created a test memory" in loaded.stdout
