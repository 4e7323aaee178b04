"""How a LoRA adapter is stored and sent: one safetensors file carrying PEFT's config and tensors, its manifest,
and the checks both sides run on it.

The one implementation of the format: the client (memos_client.adapters) writes and reads it, the daemon
(memosd.vault.parametric, memosd.runtime.lora) checks and writes it. Pure Python: no torch.

The blob ("memos-adapter/1") is a safetensors file holding the tensors of PEFT's adapter_model.safetensors
under the names PEFT saves them with ("base_model.model.<module>.lora_A.weight", ...) and, in its
__metadata__, "format" = FORMAT and "adapter_config" = the text of adapter_config.json. A pickle is never
part of it, so reading one can only ever yield numbers.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from collections.abc import Mapping, Sequence

from memos_mip.bounds import JSONLimitError, loads, quote
from memos_mip.tensor_format import (
    DTYPES, FormatError, Header, TensorSpec, _is_sha256, encode_header, header_length, parse_header,
)

FORMAT = "memos-adapter/1"
CONFIG_KEY = "adapter_config"
PEFT_PREFIX = "base_model.model."
MAX_CONFIG_BYTES = 1 << 20
MAX_RANK = 4096
# Tensor name suffixes of a LoRA module's weights, and which part of the module each one is.
_PARTS = (
    (".lora_A.weight", "A"), (".lora_B.weight", "B"), (".lora_B.bias", "bias"),
    (".lora_embedding_A", "A"), (".lora_embedding_B", "B"),
    (".lora_magnitude_vector.weight", "magnitude"), (".lora_magnitude_vector", "magnitude"),
)
_EMBEDDING_PARTS = (".lora_embedding_A", ".lora_embedding_B")
# Config features that change more than LoRA weights (whole modules saved, the base model restructured):
# an adapter using them is not a pure LoRA adapter and is refused.
_UNSUPPORTED = {
    "modules_to_save": "saves whole modules", "trainable_token_indices": "trains token embeddings",
    "target_parameters": "adapts parameters, not modules", "layer_replication": "restructures the base model",
}


@dataclass(frozen=True)
class AdapterManifest:
    """What a parametric cube's payload holds, and the base model it belongs to."""

    blob_sha256: str
    blob_size: int
    model_fingerprint: str
    dtype: str
    peft_type: str
    rank: int
    lora_alpha: float
    target_modules: tuple[str, ...]
    task_type: str = ""
    base_model_name: str = ""
    num_modules: int = 0
    num_parameters: int = 0

    def to_json(self) -> dict:
        return {
            "blob": {"sha256": self.blob_sha256, "size": self.blob_size}, "format": FORMAT,
            "peft_type": self.peft_type, "rank": self.rank, "lora_alpha": self.lora_alpha,
            "target_modules": list(self.target_modules), "task_type": self.task_type,
            "base_model_name": self.base_model_name, "num_modules": self.num_modules,
            "num_parameters": self.num_parameters,
            "model": {"model_fingerprint": self.model_fingerprint, "tokenizer_fingerprint": "", "dtype": self.dtype},
        }

    @classmethod
    def from_json(cls, obj: dict) -> AdapterManifest:
        model = obj.get("model") or {}
        return cls(
            blob_sha256=obj["blob"]["sha256"], blob_size=int(obj["blob"]["size"]),
            model_fingerprint=model.get("model_fingerprint", ""), dtype=model.get("dtype", ""),
            peft_type=obj.get("peft_type", ""), rank=int(obj.get("rank", 0)), lora_alpha=float(obj.get("lora_alpha", 0)),
            target_modules=tuple(obj.get("target_modules", ())), task_type=obj.get("task_type", ""),
            base_model_name=obj.get("base_model_name", ""), num_modules=int(obj.get("num_modules", 0)),
            num_parameters=int(obj.get("num_parameters", 0)),
        )


@dataclass(frozen=True)
class LoraModule:
    """The LoRA tensors of one adapted module of the base model."""

    name: str
    parts: dict[str, TensorSpec] = field(default_factory=dict)
    embedding: bool = False


@dataclass(frozen=True)
class Adapter:
    """A parsed adapter: its config (adapter_config.json as a dict, and as text) and its tensors by module."""

    config: dict
    config_text: str
    modules: dict[str, LoraModule]
    dtype: str
    num_parameters: int


# ---- config ----------------------------------------------------------------------------------------------


def parse_config(text: str | bytes) -> dict:
    """adapter_config.json as a dict, if it is a LoRA config this format can carry; FormatError otherwise."""
    if isinstance(text, (bytes, bytearray)):
        if len(text) > MAX_CONFIG_BYTES:
            raise FormatError(f"adapter_config.json is over {MAX_CONFIG_BYTES} bytes")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FormatError(f"adapter_config.json is not UTF-8: {exc}") from None
    if len(text) > MAX_CONFIG_BYTES:
        raise FormatError(f"adapter_config.json is over {MAX_CONFIG_BYTES} bytes")
    try:
        config = loads(text, what="adapter_config.json", max_bytes=MAX_CONFIG_BYTES)
    except JSONLimitError as exc:
        raise FormatError(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise FormatError(f"adapter_config.json is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise FormatError("adapter_config.json is not a JSON object")
    peft_type = config.get("peft_type")
    if peft_type != "LORA":
        raise FormatError(f"adapter_config.json has peft_type {quote(peft_type)}; only LORA adapters are supported")
    rank = config.get("r")
    if type(rank) is not int or not 1 <= rank <= MAX_RANK:
        raise FormatError(f"adapter_config.json: r must be an integer from 1 to {MAX_RANK}, not {quote(rank)}")
    alpha = config.get("lora_alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < math.inf:
        raise FormatError(f"adapter_config.json: lora_alpha must be a positive number, not {quote(alpha)}")
    targets = config.get("target_modules")
    if isinstance(targets, str):
        _compile(targets, "target_modules")
    elif not (isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets)):
        raise FormatError("adapter_config.json: target_modules must be a regular expression or a list of module names")
    for key, what in _UNSUPPORTED.items():
        if config.get(key):
            raise FormatError(f"adapter_config.json sets {key}, which {what}: not a pure LoRA adapter, not supported")
    for key in ("rank_pattern", "alpha_pattern"):
        value = config.get(key) or {}
        if not isinstance(value, dict):
            raise FormatError(f"adapter_config.json: {key} must be an object")
        for pattern, number in value.items():
            _compile(pattern, key)
            if key == "rank_pattern" and (type(number) is not int or not 1 <= number <= MAX_RANK):
                raise FormatError(f"adapter_config.json: rank_pattern {quote(pattern)} gives rank {quote(number)}")
    excluded = config.get("exclude_modules")
    if isinstance(excluded, str):
        _compile(excluded, "exclude_modules")
    return config


def _compile(pattern: str, what: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except (re.error, RecursionError) as exc:
        raise FormatError(f"adapter_config.json: {what} {quote(pattern)} is not a regular expression: {exc}") from None


def targets_of(config: dict) -> tuple[str, ...]:
    """target_modules as the manifest records it: sorted names, or the one regular expression."""
    targets = config["target_modules"]
    return (targets,) if isinstance(targets, str) else tuple(sorted(set(targets)))


def is_target(config: dict, module: str) -> bool:
    """Whether PEFT would adapt `module` under this config (its target_modules and exclude_modules rules)."""
    def matches(rule) -> bool:
        if not rule:
            return False
        if isinstance(rule, str):
            return re.fullmatch(rule, module) is not None
        return module in rule or any(module.endswith("." + name) for name in rule)

    return matches(config["target_modules"]) and not matches(config.get("exclude_modules"))


def module_rank(config: dict, module: str) -> int:
    """The module's rank: the first rank_pattern key matching it (as PEFT matches them), else r."""
    for pattern, rank in (config.get("rank_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return rank
    return config["r"]


# ---- the blob ------------------------------------------------------------------------------------------------


def _order(tensors: Sequence[tuple[str, TensorSpec]]) -> list[tuple[str, TensorSpec]]:
    # Widest elements first, then by name: every tensor starts aligned to its element size.
    return sorted(tensors, key=lambda t: (-DTYPES[t[1].dtype][1], t[0]))


def encode(config_text: str, tensors: Sequence[tuple[str, TensorSpec]]) -> tuple[bytes, list[str]]:
    """The safetensors header of an adapter blob and the order its tensors' bytes must follow it in."""
    for _, spec in tensors:
        if spec.dtype not in DTYPES:
            raise FormatError(f"dtype {spec.dtype} cannot be stored; supported: {', '.join(DTYPES)}")
    ordered = _order(tensors)
    header = encode_header(ordered, {"format": FORMAT, CONFIG_KEY: config_text})
    return header, [name for name, _ in ordered]


def read_header(data: bytes | memoryview, total_size: int) -> Header:
    """The safetensors header of an adapter blob (data holds at least its header)."""
    header = parse_header(data, total_size)
    if header.metadata.get("format") != FORMAT:
        raise FormatError(f"the blob is not a {FORMAT} adapter (its safetensors metadata has no format {FORMAT!r})")
    return header


def read_adapter(header: Header) -> Adapter:
    """The config and tensors of an adapter blob's header, grouped by module; FormatError for anything that is
    not a LoRA adapter's."""
    text = header.metadata.get(CONFIG_KEY)
    if text is None:
        raise FormatError(f"the blob's metadata has no {CONFIG_KEY}")
    config = parse_config(text)
    modules: dict[str, LoraModule] = {}
    dtypes, count = set(), 0
    for entry in header.entries:
        module, part, embedding = _split(entry.name)
        m = modules.setdefault(module, LoraModule(module, {}, embedding))
        if m.embedding != embedding:
            raise FormatError(f"module {module} has both linear and embedding LoRA weights")
        if part in m.parts:
            raise FormatError(f"module {module} has its {part} tensor twice")
        m.parts[part] = entry.spec
        dtypes.add(entry.spec.dtype)
        count += math.prod(entry.spec.shape)
    if not modules:
        raise FormatError("the adapter holds no tensors")
    if len(dtypes) > 1:
        raise FormatError(f"the adapter's tensors mix dtypes ({', '.join(sorted(dtypes))}); store them in one")
    return Adapter(config, text, modules, dtypes.pop(), count)


def _split(name: str) -> tuple[str, str, bool]:
    for suffix, part in _PARTS:
        if name.endswith(suffix):
            module = name[: -len(suffix)].removeprefix(PEFT_PREFIX)
            if not module:
                break
            return module, part, suffix in _EMBEDDING_PARTS
    raise FormatError(f"tensor {quote(name)} is not a LoRA weight (lora_A, lora_B, lora_embedding_A/B, "
                      "lora_magnitude_vector): only pure LoRA adapters are supported")


def check_adapter(adapter: Adapter, known_modules: Mapping[str, tuple[int, int]] | None = None) -> None:
    """Every module's tensors against the config (rank, targets, DoRA, bias) and, when the base model's module
    shapes are known ({name: (input size, output size)}), against those."""
    config = adapter.config
    for name, m in sorted(adapter.modules.items()):
        if not is_target(config, name):
            raise FormatError(f"module {name} carries LoRA weights but is not among the config's target_modules")
        if "A" not in m.parts or "B" not in m.parts:
            raise FormatError(f"module {name} lacks its lora_{'B' if 'A' in m.parts else 'A'} tensor")
        a, b = m.parts["A"].shape, m.parts["B"].shape
        rank = module_rank(config, name)
        if len(a) < 2 or len(b) < 2 or a[0] != rank or b[1] != rank:
            raise FormatError(f"module {name}: lora_A has shape {list(a)} and lora_B {list(b)}; with rank {rank} "
                              f"they must be [{rank}, in] and [out, {rank}]")
        if m.embedding and (len(a) != 2 or len(b) != 2):
            raise FormatError(f"module {name}: embedding LoRA tensors must be 2-d")
        out = b[0]
        for part, flag in (("magnitude", "use_dora"), ("bias", "lora_bias")):
            spec = m.parts.get(part)
            if spec is None:
                continue
            if not config.get(flag):
                raise FormatError(f"module {name} has a {part} tensor but the config does not set {flag}")
            if spec.shape[:1] != (out,) or math.prod(spec.shape) != out:
                raise FormatError(f"module {name}: its {part} tensor has shape {list(spec.shape)}; expected [{out}]")
        if known_modules is not None:
            if name not in known_modules:
                raise FormatError(f"module {name} is not a module of the base model that LoRA can adapt")
            fan_in, fan_out = known_modules[name]
            if len(a) == 2 and (a[1], out) != (fan_in, fan_out):
                raise FormatError(f"module {name}: the adapter maps {a[1]} -> {out} features, the base model's "
                                  f"module maps {fan_in} -> {fan_out}")
    if known_modules is not None and isinstance(config["target_modules"], list):
        for target in config["target_modules"]:
            if not any(m == target or m.endswith("." + target) for m in known_modules):
                raise FormatError(f"target module {quote(target)} names no module of the base model"
                                  " that LoRA can adapt")


def manifest_of(adapter: Adapter, sha256: str, size: int, model_fingerprint: str) -> AdapterManifest:
    """The manifest a blob with this content has."""
    config = adapter.config
    return AdapterManifest(
        blob_sha256=sha256, blob_size=size, model_fingerprint=model_fingerprint, dtype=adapter.dtype,
        peft_type=config["peft_type"], rank=config["r"], lora_alpha=float(config["lora_alpha"]),
        target_modules=targets_of(config), task_type=str(config.get("task_type") or ""),
        base_model_name=str(config.get("base_model_name_or_path") or "")[:512],
        num_modules=len(adapter.modules), num_parameters=adapter.num_parameters,
    )


def check_manifest(m: AdapterManifest) -> None:
    """What a manifest must say about itself, whatever its blob."""
    if not _is_sha256(m.blob_sha256):
        raise FormatError("blob sha256 must be 64 lowercase hex characters")
    if m.blob_size <= 0:
        raise FormatError("blob size must be positive")
    if not _is_sha256(m.model_fingerprint):
        raise FormatError("model_fingerprint (of the base model) must be a hex sha256 (64 lowercase characters)")
    if m.dtype not in DTYPES:
        raise FormatError(f"dtype {quote(m.dtype)} is not supported; supported: {', '.join(DTYPES)}")


def check_matches(declared: AdapterManifest, actual: AdapterManifest) -> None:
    """The declared manifest must say what the blob holds."""
    for name in ("blob_size", "dtype", "peft_type", "rank", "lora_alpha", "target_modules", "task_type",
                 "base_model_name", "num_modules", "num_parameters"):
        said, found = getattr(declared, name), getattr(actual, name)
        if said != found:
            raise FormatError(f"the manifest says {name} {quote(said)}, the blob holds {quote(found)}")


# ---- PEFT's two files ----------------------------------------------------------------------------------------


def peft_files(blob) -> tuple[bytes, list]:
    """(adapter_config.json bytes, [header, data] of adapter_model.safetensors) from an adapter blob: the
    tensors keep their bytes; the safetensors metadata becomes PEFT's own ({"format": "pt"})."""
    view = memoryview(blob).cast("B")
    header = read_header(view[:header_length(view[:8], len(view))], len(view))
    config = header.metadata[CONFIG_KEY]
    entries = sorted(header.entries, key=lambda e: e.begin)
    safetensors_header = encode_header([(e.name, e.spec) for e in entries], {"format": "pt"})
    return config.encode(), [safetensors_header, view[header.data_start:]]


def from_peft_files(config: bytes, safetensors: bytes) -> tuple[bytes, list]:
    """(header, [data]) of an adapter blob from PEFT's adapter_config.json and adapter_model.safetensors bytes,
    without touching a tensor; FormatError if either is not what this format carries."""
    text = bytes(config).decode("utf-8", "strict") if isinstance(config, (bytes, bytearray, memoryview)) else config
    parse_config(text)
    view = memoryview(safetensors).cast("B")
    source = parse_header(view[:header_length(view[:8], len(view))], len(view))
    entries = sorted(source.entries, key=lambda e: e.begin)
    header, order = encode(text, [(e.name, e.spec) for e in entries])
    by_name = {e.name: e for e in entries}
    parts = [view[source.data_start + by_name[n].begin:source.data_start + by_name[n].end] for n in order]
    return header, parts
