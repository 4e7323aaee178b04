"""The client's part of importing a MemOS dump: its namespace, and binding its KV caches to a local model (--model).

The daemon reads the dump's textual memories; a KV cache, though, is only worth storing bound to the
model that computed it, and the model is a directory on the user's side. So the client reads
activation_memory.pickle with the same tensors-only unpickler the daemon uses, loads the model,
checks every cache against it (layers, heads, head size, dtype, tokens) and prepares each as an
activation cube, as push_kv does, before anything is sent: a cache that does not fit refuses the import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from memos_client.errors import InvalidArgument
from memos_mip.bundle_format import MANIFEST, BundleError, default_memos_namespace

CONFIG = "config.json"


def is_memos_dir(src: Path, format: str) -> bool:
    """Whether src is read as a MemOS dump: asked for, or a directory without a memosd manifest."""
    return format == "memos" or (format == "auto" and src.is_dir() and not (src / MANIFEST).exists())


def dump_namespace(src: Path, agent: str) -> str:
    """Where a dump goes when no namespace is given: agents/AGENT/memos/CUBE, CUBE being config.json's
    cube_id, or the directory's name for a dump without one (MemOS's tree example)."""
    cube_id = ""
    try:
        config = json.loads((src / CONFIG).read_bytes()) if (src / CONFIG).is_file() else {}
        cube_id = str(config.get("cube_id") or "") if isinstance(config, dict) else ""
    except (OSError, ValueError):
        pass  # the daemon reads config.json again and says what is wrong with it
    return default_memos_namespace(agent, cube_id or src.resolve().name)


@dataclass
class BoundCache:
    """One cache ready to store: its manifest (fingerprints, token ids, layers), payload and header fields."""

    memos_id: str
    manifest: object
    payload: object
    metadata: dict


@dataclass
class BoundCaches:
    files: list[str]
    caches: list[BoundCache]
    fingerprint: str
    notes: list[str] = field(default_factory=list)


def bind_caches(src: Path, model_dir: str | Path) -> BoundCaches:
    """Read every .pickle of the dump and bind its caches to the model in model_dir (CPU-heavy, blocking)."""
    from memos_mip.memos_kv import read_kv_pickle

    pickles = sorted(p for p in src.iterdir() if p.is_file() and p.name.endswith(".pickle")) if src.is_dir() else []
    if not pickles:
        raise InvalidArgument(f"--model binds a MemOS dump's KV caches, and {src} holds no .pickle file")
    model, tokenizer = _load(Path(model_dir))
    from memos_client import kv
    from memos_mip.fingerprint import model_fingerprint, tokenizer_fingerprint

    fingerprint = model_fingerprint(model)
    tokenizer_fp = tokenizer_fingerprint(tokenizer) if tokenizer is not None else ""
    _, head_dim = kv._kv_geometry(model)
    bound = BoundCaches([p.name for p in pickles], [], fingerprint)
    for path in pickles:
        try:
            caches = read_kv_pickle(path.read_bytes(), path.name)
        except BundleError as exc:
            raise InvalidArgument(str(exc)) from None
        for cache in caches:
            where = f"KV cache {cache.memos_id} ({path.name})"
            layers = list(zip(cache.keys, cache.values))
            tokens = int(layers[0][0].shape[2]) if layers[0][0].dim() == 4 else 0
            try:  # its shapes first: a cache of another model is refused for that, whatever its tokens
                kv.check_for_model(layers, model, tokens)
                if head_dim and any(t.shape[3] != head_dim for pair in layers for t in pair):
                    raise InvalidArgument(f"its head size is {layers[0][0].shape[3]}; the model's is {head_dim}")
                ids = cache.token_ids or _retokenize(cache, tokenizer, tokens, where)
                kv.check_for_model(layers, model, len(ids))
                specs, payload = kv.encode_kv(layers)
            except InvalidArgument as exc:
                if exc.message.startswith(where):
                    raise
                raise InvalidArgument(f"{where} does not fit the model in {model_dir}: {exc.message}") from None
            manifest = kv.make_manifest(ids, specs, payload, fingerprint, tokenizer_fp, model)
            metadata = {"memos_id": cache.memos_id, **cache.metadata}
            bound.caches.append(BoundCache(cache.memos_id, manifest, payload, metadata))
    return bound


def _load(model_dir: Path):
    if not (model_dir / "config.json").is_file():
        raise InvalidArgument(f"--model {model_dir} is not a local model directory (it has no config.json)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype="auto").eval()
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"--model {model_dir} does not load as a causal LM: {exc}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError):
        tokenizer = None  # the caches that carry their token ids can still be bound
    return model, tokenizer


def _retokenize(cache, tokenizer, tokens: int, where: str) -> list[int]:
    """The token ids of the text the cache was made from: its source_text as it is (what MemOS's caches of
    mem_cube_2 hold), or in the system prompt MemOS's build_kv_cache puts it in; refused unless one of them
    gives exactly as many tokens as the cache covers."""
    if not cache.text:
        raise InvalidArgument(f"{where} carries neither token ids nor its source_text, so it cannot be bound to"
                              " a model: nothing says which tokens it covers")
    if tokenizer is None:
        raise InvalidArgument(f"{where} carries no token ids, and the model directory has no tokenizer to"
                              " tokenize its source_text again")
    tried = [tokenizer(cache.text, add_special_tokens=False)["input_ids"], tokenizer(cache.text)["input_ids"]]
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": f"Below is some information about the user.\n{cache.text}"}]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        tried.append(tokenizer(prompt)["input_ids"])
    for ids in tried:
        if len(ids) == tokens:
            return [int(i) for i in ids]
    raise InvalidArgument(f"{where} covers {tokens} tokens, but its source_text tokenizes to"
                          f" {', '.join(str(len(ids)) for ids in tried)} with this model's tokenizer: it was made"
                          " with another tokenizer or prompt, and cannot be bound")
