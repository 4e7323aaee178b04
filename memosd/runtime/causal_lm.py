"""A local causal LM the daemon prefills text with, to build KV caches (loaded offline, lazily, in a thread)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memosd.errors import FailedPrecondition, InvalidArgument

DTYPES = ("auto", "float32", "bfloat16", "float16")
# Tokens per forward pass while prefilling: progress and cancellation are checked between passes.
PREFILL_STEP = 256
MAX_THREADS = 4


class CausalLM:
    """The model at `path` (a Hugging Face directory with config, weights and tokenizer), loaded on first use
    with local files only, in `dtype` ("auto" takes the checkpoint's, as from_pretrained does by default)."""

    def __init__(self, path: str | Path, dtype: str = "auto", *, threads: int | None = None):
        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise InvalidArgument(f"activation model path {path} has no config.json; point activation_model at a"
                                  " local Hugging Face model directory")
        if dtype not in DTYPES:
            raise InvalidArgument(f"activation_dtype must be one of {', '.join(DTYPES)}")
        self.path, self.dtype = path, dtype
        self.name = path.name
        self._threads = threads or max(1, min(MAX_THREADS, os.cpu_count() or 1))
        self._lock = threading.Lock()
        self._failed: str | None = None
        self.model: Any = None
        self.tokenizer: Any = None
        self.fingerprint = ""
        self.tokenizer_fingerprint = ""

    def load(self) -> None:
        """Load model and tokenizer and fingerprint them, once; FailedPrecondition if that fails. Blocks."""
        with self._lock:
            if self.model is not None:
                return
            if self._failed:
                raise FailedPrecondition(self._failed)
            try:
                import torch
                from transformers import AutoModelForCausalLM, AutoTokenizer
                from transformers.utils import logging as hf_logging

                from memos_mip.fingerprint import model_fingerprint, tokenizer_fingerprint

                hf_logging.disable_progress_bar()
                if torch.get_num_threads() > self._threads:
                    torch.set_num_threads(self._threads)
                dtype = self.dtype if self.dtype == "auto" else getattr(torch, self.dtype)
                model = AutoModelForCausalLM.from_pretrained(self.path, local_files_only=True, dtype=dtype).eval()
                tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
                fingerprint, tokenizer_fp = model_fingerprint(model), tokenizer_fingerprint(tokenizer)
            except Exception as exc:  # noqa: BLE001 - any failure to load is the configuration's
                self._failed = (f"the activation model at {self.path} could not be loaded ({type(exc).__name__}: {exc});"
                                " fix activation_model in the daemon's config")
                raise FailedPrecondition(self._failed) from None
            self.model, self.tokenizer = model, tokenizer
            self.fingerprint, self.tokenizer_fingerprint = fingerprint, tokenizer_fp

    def tokenize(self, text: str, *, special_tokens: bool = True) -> list[int]:
        self.load()
        ids = self.tokenizer(text, add_special_tokens=special_tokens)["input_ids"]
        if not ids:
            raise InvalidArgument("the text tokenizes to no tokens")
        limit = getattr(self.model.config.get_text_config(decoder=True), "max_position_embeddings", None)
        if limit and len(ids) > limit:
            raise InvalidArgument(f"the text is {len(ids)} tokens; the model takes at most {limit}")
        return ids

    def prefill(self, token_ids: list[int], progress: Callable[[int], None] = lambda done: None,
                check: Callable[[], None] = lambda: None):
        """The KV cache of the model after reading token_ids, as a list of (key, value) per layer, computed
        PREFILL_STEP tokens at a time with progress(done) and check() (which may raise to stop) between."""
        import torch
        from transformers import DynamicCache

        from memos_mip.tensors import cache_keyword

        self.load()
        cache = DynamicCache(config=self.model.config)
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            for start in range(0, len(token_ids), PREFILL_STEP):
                check()
                chunk = torch.tensor([token_ids[start:start + PREFILL_STEP]], device=device)
                self.model(input_ids=chunk, use_cache=True, logits_to_keep=1, **{cache_keyword(self.model): cache})
                progress(min(start + PREFILL_STEP, len(token_ids)))
        check()
        return [(layer.keys, layer.values) for layer in cache.layers]
