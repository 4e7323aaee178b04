"""Test helpers for tensor memory: KV payloads without torch, tiny seeded models and a word-level tokenizer."""

from __future__ import annotations

import os
import string
from pathlib import Path

from memos_mip.tensor_format import KVManifest, TensorSpec, encode_header, kv_names, prefix_hash

FINGERPRINT = "ab" * 32
WORDS = ("the a an of to in on is was and or but not it this that with for at by from as be are were has have had"
         " alice bob carol dave likes prefers window aisle seat seats coffee tea paris london berlin train plane"
         " meeting budget monday tuesday morning evening cat dog miso notes memory cache daemon agent model token"
         " question answer what when where who why how long short document chapter one two three four five").split()


TOKENIZER_VOCAB = 160


def kv_payload(num_layers: int = 2, tokens: int = 8, heads: int = 2, head_dim: int = 4, dtype: str = "float32",
               seed: int = 0) -> tuple[bytes, tuple]:
    """A valid KV safetensors payload of random bytes and its layer specs, without torch."""
    spec = TensorSpec(dtype, (1, heads, tokens, head_dim))
    specs = tuple((spec, spec) for _ in range(num_layers))
    header = encode_header([(name, spec) for name in kv_names(num_layers)])
    data = os.urandom(2 * num_layers * spec.nbytes) if seed is None else bytes(
        (i * 31 + seed) % 251 for i in range(2 * num_layers * spec.nbytes))
    return header + data, specs


def manifest_for(payload: bytes, specs, token_ids, *, fingerprint: str = FINGERPRINT, dtype: str = "float32",
                 **overrides) -> KVManifest:
    import hashlib

    fields = dict(blob_sha256=hashlib.sha256(payload).hexdigest(), blob_size=len(payload), token_ids=tuple(token_ids),
                  layers=specs, model_fingerprint=fingerprint, dtype=dtype, prefix_hash=prefix_hash(token_ids))
    fields.update(overrides)
    return KVManifest(**fields)


def put_kv(client, token_ids, namespace: str = "agents/admin/kv", *, fingerprint: str = FINGERPRINT, seed: int = 0,
           **fields):
    """Upload a random KV payload for token_ids and store its cube; returns the cube."""
    payload, specs = kv_payload(tokens=len(token_ids), seed=seed)
    client.upload_blob(payload, namespace)
    return client.put_activation(manifest_for(payload, specs, token_ids, fingerprint=fingerprint), namespace, **fields)


# ---- tiny transformers models ---------------------------------------------------------------------------


def tiny_model(arch: str = "llama", seed: int = 0, *, layers: int = 2, vocab: int = TOKENIZER_VOCAB, **config):
    """A causal LM with random, seeded weights from a config: 2 layers, hidden 64, 4 heads, 2 KV heads."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[arch]
    torch.manual_seed(seed)
    cfg = config_cls(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=1,
                     eos_token_id=2, pad_token_id=0, tie_word_embeddings=False, **config)
    return model_cls(cfg).eval()


def tiny_tokenizer():
    """A word-level fast tokenizer over WORDS (and punctuation) that adds <s> at the start."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    # Single letters and byte-level BPE's space marker too: transformers loads this directory's tokenizer
    # as Qwen2Tokenizer next to a qwen2 config, which then spells words letter by letter; without them
    # every word became the same unknown id.
    for token in [*WORDS, ".", ",", "?", "!", ":", ";", "'", '"', "-", *string.ascii_lowercase, "Ġ"]:
        vocab.setdefault(token, len(vocab))
    assert len(vocab) <= TOKENIZER_VOCAB
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")


def save_tiny(path: Path, arch: str = "llama", seed: int = 0) -> Path:
    """A model directory (config, safetensors weights, tokenizer) as a daemon's activation_model."""
    tiny_model(arch, seed).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path
