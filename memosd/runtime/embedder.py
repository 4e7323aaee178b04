"""Sentence embeddings from a local Hugging Face encoder (mean pooling, L2-normalised)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from memosd.errors import InvalidArgument


class Embedder:
    """Loads an encoder from a local directory, offline, and turns texts into unit vectors."""

    def __init__(self, path: str | Path, *, max_length: int = 256, batch_size: int = 64, threads: int = 0):
        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise InvalidArgument(f"embedding model path {path} has no config.json; point it at a local model directory")
        self.path = path
        self.name = path.name
        self.max_length = max_length
        self.batch_size = batch_size
        self._threads = threads
        self._lock = threading.Lock()
        self._model = None
        self._tokenizer = None
        self.dim = int(_read_dim(path))

    def _load(self):
        import torch
        from transformers import AutoModel, AutoTokenizer

        if self._threads:
            torch.set_num_threads(self._threads)
        self._tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        model = AutoModel.from_pretrained(self.path, local_files_only=True)
        self._model = model.eval()

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text. Thread-safe; blocks (call off the event loop)."""
        import torch

        with self._lock:
            if self._model is None:
                self._load()
            out = []
            for start in range(0, len(texts), self.batch_size):
                batch = self._tokenizer(
                    texts[start : start + self.batch_size], padding=True, truncation=True,
                    max_length=self.max_length, return_tensors="pt",
                )
                with torch.inference_mode():
                    hidden = self._model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).float().numpy())
            return np.concatenate(out) if out else np.empty((0, self.dim), dtype=np.float32)


def _read_dim(path: Path) -> int:
    import json

    config = json.loads((path / "config.json").read_text())
    for key in ("hidden_size", "d_model", "dim"):
        if key in config:
            return config[key]
    raise InvalidArgument(f"cannot tell the embedding size of {path}: no hidden_size in config.json")
