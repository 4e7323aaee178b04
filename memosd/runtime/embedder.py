"""Sentence embeddings from a local Hugging Face encoder (pooled as its sentence-transformers config says, L2-normalised)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from memosd.errors import FailedPrecondition, InvalidArgument

POOLINGS = ("mean", "cls", "max")
# "fp32" runs the weights as stored; "int8" quantizes the Linear layers' weights to int8 per output channel
# (torch dynamic quantization): 1.3-1.7x on an AVX2 CPU, vectors at cosine ~0.96 to fp32's (bench/embed_rate.py);
# "bf16" runs the weights in bfloat16 on torch, for CPUs with bfloat16 matrix units (AMX, AVX512-BF16): 3x fp32's
# backfill rate on this project's dev machine (Sapphire Rapids), vectors at cosine 0.9998 to fp32's. A CPU whose
# torch has no bfloat16 kernels falls back to fp32, saying so (and slow emulated ones are no faster than fp32).
PRECISIONS = ("fp32", "int8", "bf16")
# "auto": fp32 through ONNX Runtime where it is installed and gives torch's vectors (runtime/onnx_encoder.py).
RUNTIMES = ("auto", "torch")
# Tokens (texts x padded length) per forward pass: about 32 texts of 200-500 characters (~120 tokens each).
# On the two-core dev machine 128 such texts a batch ran about a fifth slower per text than 32 (activations
# out of cache), 8 no faster; short texts get more to a batch, long ones fewer, at the same cost.
BATCH_TOKENS = 4096
log = logging.getLogger("memosd.runtime")
# Intra-op threads for inference: a quarter of the cores, 1 to 4. A short query gains little from more
# than one, and on a busy machine OpenMP teams waiting for descheduled threads cost far more than they
# save; a backfill should not take the workstation from everything else.
MAX_THREADS = 4


class Embedder:
    """Loads an encoder from a local directory, offline, and turns texts into unit vectors."""

    def __init__(self, path: str | Path, *, max_length: int | None = None, batch_tokens: int = BATCH_TOKENS,
                 threads: int | None = None, precision: str = "fp32", runtime: str = "auto"):
        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise InvalidArgument(f"embedding model path {path} has no config.json; point it at a local model directory")
        self.path = path
        self.dim = _read_dim(path)
        self.pooling = _read_pooling(path)
        self.max_length = max_length or _read_max_length(path)
        if precision not in PRECISIONS:
            raise InvalidArgument(f"embedding precision must be one of {', '.join(PRECISIONS)}")
        if runtime not in RUNTIMES:
            raise InvalidArgument(f"embedding runtime must be one of {', '.join(RUNTIMES)}")
        # What runs the forward pass once loaded: "onnxruntime" or "torch" (asked for, or fallen back to).
        self.runtime = runtime
        self.batch_tokens = batch_tokens
        # What runs once loaded: fp32 when the model cannot be quantized, whatever was asked for.
        self.precision = precision if precision != "bf16" or _bf16_kernels(path) else "fp32"
        # Vectors are stored under this name: a different model (or other weights in the same place, or the
        # int8 or bf16 form of them) gets its own name, so its vectors are never mixed with another model's.
        self.name = _model_name(path) + ("" if self.precision == "fp32" else f"+{self.precision}")
        self._threads = threads or max(1, min(MAX_THREADS, (os.cpu_count() or 1) // 4))
        self._load_lock = threading.Lock()
        # A fast tokenizer is not safe to call from two threads at once; the model's forward pass is.
        self._tokenize_lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._onnx: Any = None
        self._failed: str | None = None

    def load(self) -> None:
        """Load the tokenizer and model (once); FailedPrecondition if the directory does not hold one."""
        with self._load_lock:
            if self._tokenizer is not None:
                return
            if self._failed:
                raise FailedPrecondition(self._failed)
            try:
                import torch
                from transformers import AutoModel, AutoTokenizer
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()
                if torch.get_num_threads() > self._threads:
                    torch.set_num_threads(self._threads)
                tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
                model = AutoModel.from_pretrained(self.path, local_files_only=True).eval()
            except Exception as exc:  # noqa: BLE001 - any failure to load is the configuration's
                self._failed = (f"the embedding model at {self.path} could not be loaded ({type(exc).__name__}: {exc});"
                                " fix embedding_model in the daemon's config")
                raise FailedPrecondition(self._failed) from None
            if self.precision == "int8":
                model = self._quantized(model, tokenizer)
            elif self.precision == "bf16":
                model = model.to(torch.bfloat16)
            if self.runtime == "auto" and self.precision == "fp32":
                from memosd.runtime.onnx_encoder import onnx_encoder

                self._onnx = onnx_encoder(model, tokenizer, self._threads, self.path)
            self.runtime = "onnxruntime" if self._onnx is not None else "torch"
            # On ONNX Runtime the torch model is not run again: its weights (90 MB for MiniLM) are let go.
            self._tokenizer, self._model = tokenizer, (None if self._onnx is not None else model)

    @property
    def threads(self) -> int:
        return self._threads

    def _quantized(self, model, tokenizer):
        """The model with int8 Linear layers, or the fp32 model (and a log line) when that cannot be had."""
        import torch

        try:
            with warnings.catch_warnings():  # torch.ao's deprecation notices, on every start: the API still works
                warnings.simplefilter("ignore")
                # Inside the try: a torch without torch.ao's eager quantization falls back like any other failure.
                from torch.ao.nn.quantized.dynamic import Linear as QuantizedLinear
                from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

                quantized = quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
            if not any(isinstance(m, QuantizedLinear) for m in quantized.modules()):
                raise ValueError("it has no torch.nn.Linear layers")
            with torch.inference_mode():  # a kernel the CPU's engine lacks fails here, not on the first cube
                quantized(**tokenizer(["a"], return_tensors="pt"))
        except Exception as exc:  # noqa: BLE001 - any failure leaves the fp32 model, which works
            log.warning("embedding model %s cannot be quantized to int8 (%s: %s); embedding in fp32",
                        self.path, type(exc).__name__, exc)
            self.precision = "fp32"
            return model
        return quantized

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text. Thread-safe; blocks (call off the event loop)."""
        import torch

        if self._tokenizer is None:
            self.load()
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        with self._tokenize_lock:
            # Tokenized twice (for the lengths, then each bucket padded): a fast tokenizer takes well under a
            # thousandth of the forward pass's time, and its pad() on pre-tokenized input is the slow path.
            ids = self._tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
            batches = [(picked, self._tokenizer([texts[i] for i in picked], padding=True, truncation=True,
                                                max_length=self.max_length, return_tensors="pt"))
                       for picked in length_buckets([len(x) for x in ids], self.batch_tokens)]
        with torch.inference_mode():
            for picked, batch in batches:
                hidden = self._onnx.hidden(batch) if self._onnx else self._model(**batch).last_hidden_state
                out[picked] = _pool(hidden.float(), batch["attention_mask"], self.pooling).numpy()
        return out


def length_buckets(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Indexes of the texts in batches of like token lengths, each at most batch_tokens once padded (or one text).

    Padding is computed like any token, so a batch of mixed lengths wastes most of its work; sorted by
    length, a batch pads only to its own longest text."""
    buckets: list[list[int]] = []
    current: list[int] = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        # Sorted ascending, so lengths[i] is the padded length of the bucket with i in it.
        if current and (len(current) + 1) * lengths[i] > batch_tokens:
            buckets.append(current)
            current = []
        current.append(i)
    if current:
        buckets.append(current)
    return buckets


def _pool(hidden, mask, pooling: str):
    import torch

    if pooling == "cls":
        pooled = hidden[:, 0]
    elif pooling == "max":
        pooled = hidden.masked_fill(mask.unsqueeze(-1) == 0, float("-inf")).max(1).values
    else:
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def _bf16_kernels(path: Path) -> bool:
    """Whether this torch runs bfloat16 matrix products on this CPU (oneDNN's); if not, a log line."""
    try:
        import torch

        if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return True
    except (ImportError, AttributeError, RuntimeError):
        pass
    log.warning("embedding model %s embeds in fp32: this CPU (or this torch) has no bfloat16 kernels", path)
    return False


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _read_dim(path: Path) -> int:
    config = _read_json(path / "config.json")
    for key in ("hidden_size", "d_model", "dim", "n_embd"):  # n_embd: GPT-2's family
        if isinstance(config.get(key), int):
            return config[key]
    raise InvalidArgument(f"cannot tell the embedding size of {path}: no hidden_size in config.json")


def _read_pooling(path: Path) -> str:
    # A sentence-transformers export says how it was trained to pool; plain encoders get mean pooling.
    modules = _read_json(path / "modules.json")
    for module in modules if isinstance(modules, list) else []:
        if isinstance(module, dict) and str(module.get("type", "")).endswith("Pooling"):
            pooling = _read_json(path / module.get("path", "") / "config.json")
            for name in POOLINGS:
                if pooling.get(f"pooling_mode_{name}_token" if name == "cls" else f"pooling_mode_{name}_tokens"):
                    return name
    return "mean"


def _read_max_length(path: Path) -> int:
    configured = (_read_json(path / "sentence_bert_config.json") or {}).get("max_seq_length")
    if isinstance(configured, int) and configured > 0:
        return configured
    return min(512, int(_read_json(path / "config.json").get("max_position_embeddings", 512) or 512))


def _model_name(path: Path) -> str:
    # Config plus the weight files' names and sizes: cheap to compute at start, and changes when the
    # weights are replaced by others.
    digest = hashlib.sha256((path / "config.json").read_bytes())
    for weights in sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return f"{path.name}@{digest.hexdigest()[:12]}"
