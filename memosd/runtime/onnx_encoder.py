"""The encoder's fp32 forward pass through ONNX Runtime, where it is installed: exported from the loaded torch model
in memory (no file is written, nothing goes stale), then checked against torch on texts of two lengths, one padded
beside the other. Only an export that gives torch's hidden states (within TOLERANCE) is used, so the vectors are
torch's and keep the model's name; anything else (no onnxruntime, an architecture the exporter cannot trace, a
mismatch) leaves torch, saying why in the log. What it saves is torch's per-operation overhead: on this project's
two-core machine one short query to all-MiniLM-L6-v2 took 6.9 ms (p50) against torch's 16.8, while a backfill's
batches of 200-500 characters ran at torch's rate (bench/embed_rate.py)."""

from __future__ import annotations

import io
import logging
import threading
import warnings
from typing import Any

import numpy as np

log = logging.getLogger("memosd.runtime")
# Largest difference allowed between the two runtimes' hidden states, relative to their largest magnitude
# (float32 arithmetic in another order differs by about 1e-6 of it).
TOLERANCE = 1e-4
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# torch.onnx.export keeps its state in globals: two exports at once (two daemons in one process, as the cluster
# tests run them) fail with "GLOBALS.in_onnx_export must be False" and leave one daemon on torch.
EXPORTING = threading.Lock()
PROBES = (["a probe", "a longer probe of the exported graph, padded beside the short one"],
          ["one text alone, of yet another length, as a query comes"])


class OnnxEncoder:
    """hidden(batch) -> the last hidden state as a torch tensor, for a tokenizer's batch (return_tensors="pt")."""

    def __init__(self, session: Any, names: list[str]):
        self.session, self.names = session, names

    def hidden(self, batch):
        import torch

        return torch.from_numpy(self.session.run(["hidden"], {n: batch[n].numpy() for n in self.names})[0])


def onnx_encoder(model, tokenizer, threads: int, path) -> OnnxEncoder | None:
    """The model exported to ONNX Runtime and checked against torch; None (and a log line) where it cannot be."""
    try:
        import onnxruntime
    except ImportError:
        return None
    try:
        encoder = _export(model, tokenizer, threads, onnxruntime)
        for texts in PROBES:
            _check(model, tokenizer, encoder, texts)
    except Exception as exc:  # noqa: BLE001 - any failure leaves torch, which works
        log.warning("embedding model %s runs on torch: ONNX Runtime could not take it (%s: %s)", path,
                    type(exc).__name__, str(exc)[:200])
        return None
    finally:
        _release()
    return encoder


def _release() -> None:
    """Hand back to the OS what the export freed (the traced copy, the graph's bytes): about 100 MB for MiniLM that
    glibc's allocator would otherwise keep in the daemon's resident set."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the allocator keeps it, which costs memory, not correctness
        pass


def _export(model, tokenizer, threads: int, onnxruntime) -> OnnxEncoder:
    import copy

    import torch

    # A copy is traced: exporting the model torch goes on running left it giving other vectors (cosine 0.95).
    model = copy.deepcopy(model)
    names = [n for n in INPUTS if n in tokenizer.model_input_names]

    class Hidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return self.model(**dict(zip(names, inputs, strict=True))).last_hidden_state

    example = tokenizer(PROBES[0], padding=True, return_tensors="pt")
    graph = io.BytesIO()
    with EXPORTING, warnings.catch_warnings():  # the exporter's notices about tracing, on every start
        warnings.simplefilter("ignore")
        torch.onnx.export(Hidden(), tuple(example[n] for n in names), graph, input_names=names,
                          output_names=["hidden"], opset_version=17, dynamo=False,
                          dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, "hidden"]})
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    # Threads waiting for work sleep rather than spin: spinning takes the cores the daemon's requests need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(graph.getvalue(), options, providers=["CPUExecutionProvider"])
    return OnnxEncoder(session, names)


def _check(model, tokenizer, encoder: OnnxEncoder, texts: list[str]) -> None:
    import torch

    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        want = model(**batch).last_hidden_state.numpy()
    got = encoder.hidden(batch).numpy()
    kept = batch["attention_mask"].numpy()[..., None].astype(bool)  # padding positions are never pooled
    worst = float(np.abs(np.where(kept, want - got, 0)).max())
    if got.shape != want.shape or worst > TOLERANCE * max(1.0, float(np.abs(want).max())):
        raise ValueError(f"its hidden states differ from torch's by {worst:.2g}")
