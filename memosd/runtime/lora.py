"""LoRA training with peft on a local base model, for MemScheduler's plaintext -> parametric promotion. The base
model is loaded offline, fresh for each job (training changes it), in a worker thread."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

from memosd.errors import FailedPrecondition, InvalidArgument, ModelMismatch

DTYPES = ("auto", "float32", "bfloat16", "float16")
MAX_THREADS = 4


@dataclass
class Trained:
    """A trained adapter: PEFT's config text and state dict, the base model's fingerprint and module shapes,
    and the mean token loss over the training texts without and with the adapter."""

    config_text: str
    state: dict
    fingerprint: str
    modules: dict[str, tuple[int, int]]
    loss_before: float
    loss_after: float


class LoraTrainer:
    """Trains LoRA adapters for the causal LM at `path` (a Hugging Face directory with config, weights and
    tokenizer), loaded with local files only in `dtype` ("auto": the checkpoint's)."""

    def __init__(self, path: str | Path, dtype: str = "auto", *, threads: int | None = None):
        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise InvalidArgument(f"parametric model path {path} has no config.json; point parametric_model at a"
                                  " local Hugging Face model directory")
        if dtype not in DTYPES:
            raise InvalidArgument(f"parametric_dtype must be one of {', '.join(DTYPES)}")
        self.path, self.dtype, self.name = path, dtype, path.name
        self._threads = threads or max(1, min(MAX_THREADS, os.cpu_count() or 1))

    def _load(self):
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            dtype = self.dtype if self.dtype == "auto" else getattr(torch, self.dtype)
            model = AutoModelForCausalLM.from_pretrained(self.path, local_files_only=True, dtype=dtype)
            tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure to load is the configuration's
            raise FailedPrecondition(f"the parametric model at {self.path} could not be loaded ({type(exc).__name__}:"
                                     f" {exc}); fix parametric_model in the daemon's config") from None
        return model, tokenizer

    def train(self, texts: list[str], spec, report: Callable[[int, float], None] = lambda step, loss: None,
              check: Callable[[], None] = lambda: None, expected_fingerprint: str = "") -> Trained:
        """Train a LoRA adapter (spec: memosd.scheduler.distill.TrainSpec, resolved) on texts for spec.steps
        steps, calling report(step, loss) after each and check() (which may raise to stop) before each.
        Deterministic for a seed. Blocks: run it in a thread."""
        import torch
        from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

        from memos_mip.fingerprint import model_fingerprint
        from memos_mip.tensors import module_shapes, peft_config_text, quiet_peft

        if torch.get_num_threads() > self._threads:
            torch.set_num_threads(self._threads)
        model, tokenizer = self._load()
        check()
        fingerprint = model_fingerprint(model)
        if expected_fingerprint and expected_fingerprint != fingerprint:
            raise ModelMismatch(f"the daemon's base model {self.name} has fingerprint {fingerprint[:16]}…, not the"
                                f" {expected_fingerprint[:16]}… asked for")
        modules = module_shapes(model)
        examples = self._examples(texts, tokenizer, model, spec.max_tokens)
        torch.manual_seed(spec.seed)
        config = LoraConfig(r=spec.rank, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout,
                            target_modules=list(spec.target_modules) or None, task_type="CAUSAL_LM", bias="none")
        try:
            with quiet_peft():
                peft_model = get_peft_model(model, config)
        except ValueError as exc:  # peft's word for target modules the model lacks, or none it can guess
            raise InvalidArgument(f"params.target_modules: {' '.join(str(exc).split())[:400]}") from None
        config = peft_model.peft_config["default"]
        config.base_model_name_or_path = self.name  # its directory's name: the daemon's paths are its own
        pad = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
        loss_before = _mean_loss(peft_model, examples, spec.batch_size, pad)
        params = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=0.0)
        order_rng, order = random.Random(spec.seed), list[int]()
        peft_model.train()
        for step in range(1, spec.steps + 1):
            check()
            while len(order) < spec.batch_size:
                more = list(range(len(examples)))
                order_rng.shuffle(more)
                order += more
            batch, order = order[:spec.batch_size], order[spec.batch_size:]
            total, count = _batch_loss(peft_model, [examples[i] for i in batch], pad)
            loss = total / count
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            report(step, float(loss.detach()))
        check()
        loss_after = _mean_loss(peft_model, examples, spec.batch_size, pad)
        state = {k: v.detach().contiguous() for k, v in
                 get_peft_model_state_dict(peft_model, save_embedding_layers=False).items()}
        return Trained(peft_config_text(config), state, fingerprint, modules, loss_before, loss_after)

    @staticmethod
    def _examples(texts: list[str], tokenizer, model, max_tokens: int) -> list[list[int]]:
        limit = getattr(model.config.get_text_config(decoder=True), "max_position_embeddings", None) or max_tokens
        examples = []
        for text in texts:
            ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
            if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
                ids.append(tokenizer.eos_token_id)
            ids = ids[:min(max_tokens, limit)]
            if len(ids) >= 2:
                examples.append(ids)
        if not examples:
            raise InvalidArgument("every source text tokenizes to fewer than 2 tokens: nothing to learn from")
        return examples


def _batch_loss(model, batch: list[list[int]], pad: int):
    """(summed next-token loss, number of predicted tokens) of a right-padded batch."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad, dtype=torch.long, device=device)
    mask = torch.zeros((len(batch), width), dtype=torch.long, device=device)
    for row, ids in enumerate(batch):
        input_ids[row, :len(ids)] = torch.tensor(ids, device=device)
        mask[row, :len(ids)] = 1
    logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
    labels = input_ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                            reduction="sum")
    return total, int((labels != -100).sum())


def _mean_loss(model, examples: list[list[int]], batch_size: int, pad: int) -> float:
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            loss, n = _batch_loss(model, examples[start:start + batch_size], pad)
            total, count = total + float(loss), count + n
    return total / count


def encode_trained(trained: Trained):
    """The manifest and blob parts (header, then each tensor's memory) of a trained adapter. Hashes the blob:
    call it off the event loop."""
    from memos_mip.adapter_format import manifest_of, read_adapter, read_header
    from memos_mip.tensors import encode_adapter

    payload = encode_adapter(trained.config_text, trained.state)
    adapter = read_adapter(read_header(payload.parts[0], payload.size))
    return manifest_of(adapter, payload.sha256, payload.size, trained.fingerprint), payload.parts
