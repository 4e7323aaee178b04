"""A clean run prints no warning of the project's own making: current transformers and setuptools APIs."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from tests.daemon import make_config, running

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_metadata_is_current_for_setuptools():
    pytest.importorskip("setuptools")
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "project.license as a TOML table is deprecated"
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert dist.metadata.name == "memosd"


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.slow
def test_kv_calls_of_the_client_and_the_daemon_warn_nothing(tmp_path):
    pytest.importorskip("transformers")
    import torch
    from transformers.utils import logging as hf_logging

    from memos_client import MemosClient
    from memosd.runtime.causal_lm import CausalLM
    from tests.adapter_helpers import tiny_peft
    from tests.kv_helpers import save_tiny, tiny_model

    try:
        import peft
    except ImportError:
        peft = None

    model_dir = save_tiny(tmp_path / "model")
    model = tiny_model()
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        cache = model(ids[:, :4], use_cache=True).cache  # the test's own call uses the current name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the test's own get_peft_model: peft's, not ours to change
        adapter = tiny_peft() if peft is not None else None
    # transformers reports deprecated names through its logger, once per message: start afresh and listen.
    hf_logging.warning_once.cache_clear() if hasattr(hf_logging.warning_once, "cache_clear") else None
    collect = _Collect()
    hf_logging.get_logger("transformers").addHandler(collect)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with running(make_config(tmp_path, activation_model=str(model_dir))) as daemon:
                with MemosClient(daemon.address, key=daemon.admin_key, timeout=60) as memos:
                    memos.push_kv(cache, ids[:, :4], model)
                    memos.generate_with_kv(model, ids, max_new_tokens=2, do_sample=False)
                    if peft is not None:  # parametric memory: load an adapter, and have the daemon train one
                        cube_id = memos.push_adapter(adapter)
                        memos.load_adapter(cube_id, tiny_model())
                        note = memos.put("alice likes tea", "agents/admin/notes")
                        job, _ = memos.distill(cube_ids=[note.id], steps=1)
                        *_, job = memos.watch_job(job.id)
                        assert job.state.name == "SUCCEEDED", job.error
            lm = CausalLM(str(model_dir))
            lm.prefill([1, 5, 6, 7], progress=lambda done: None, check=lambda: None)
    finally:
        hf_logging.get_logger("transformers").removeHandler(collect)
    assert not [m for m in collect.messages if "deprecated" in m], collect.messages
