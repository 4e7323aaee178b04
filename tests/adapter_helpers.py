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
    from memos_client.adapters import quiet_peft

    with quiet_peft():
        return get_peft_model(model, lora).eval()


def save_adapter(path: Path, arch: str = "llama", **kwargs) -> Path:
    """A PEFT adapter directory (adapter_config.json, adapter_model.safetensors) for tiny_model(arch)."""
    tiny_peft(arch, **kwargs).save_pretrained(path)
    return path


def put_raw_adapter(client, config_text: str, tensors: dict, fingerprint: str, **manifest):
    """Upload a hand-made adapter blob and store it with a manifest, bypassing the client's own checks."""
    import hashlib

    from memos_mip.adapter_format import AdapterManifest, encode
    from memos_mip.tensor_format import TensorSpec

    specs = [(name, TensorSpec(str(t.dtype).removeprefix("torch."), tuple(t.shape))) for name, t in tensors.items()]
    header, order = encode(config_text, specs)
    blob = header + b"".join(tensors[n].contiguous().numpy().tobytes() for n in order)
    client.upload_blob(blob, "agents/admin/adapters", kind=3)
    fields = dict(blob_sha256=hashlib.sha256(blob).hexdigest(), blob_size=len(blob), model_fingerprint=fingerprint,
                  dtype="float32", peft_type="LORA", rank=4, lora_alpha=8.0, target_modules=("q_proj", "v_proj"),
                  task_type="CAUSAL_LM", num_modules=len({n.split(".lora_")[0] for n in tensors}),
                  num_parameters=sum(t.numel() for t in tensors.values()))
    fields.update(manifest)
    return client.put_adapter(AdapterManifest(**fields), "agents/admin/adapters")


def logits(model, ids):
    import torch

    with torch.no_grad():
        return model(ids).logits
