"""Test helpers for parametric memory: LoRA adapters with random (seeded, non-zero) weights on tiny models."""

from __future__ import annotations

from pathlib import Path

from tests.kv_helpers import tiny_model

TARGETS = ("q_proj", "v_proj")


def tiny_peft(arch: str = "llama", seed: int = 0, *, rank: int = 4, alpha: float = 8, targets=TARGETS, adapter_seed: int = 7,
              **config):
    """A PeftModel over tiny_model(arch, seed) whose LoRA weights are random (A and B), so it changes outputs."""
    import torch
    from peft import LoraConfig, get_peft_model

    model = tiny_model(arch, seed)
    torch.manual_seed(adapter_seed)
    lora = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False,
                      task_type="CAUSAL_LM", **config)
    return get_peft_model(model, lora).eval()


def save_adapter(path: Path, arch: str = "llama", **kwargs) -> Path:
    """A PEFT adapter directory (adapter_config.json, adapter_model.safetensors) for tiny_model(arch)."""
    tiny_peft(arch, **kwargs).save_pretrained(path)
    return path


def logits(model, ids):
    import torch

    with torch.no_grad():
        return model(ids).logits
