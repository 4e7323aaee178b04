"""How each tensor kind's payload blob becomes files in a bundle, and back: the extension point for kinds.

Activation payloads are safetensors already (memos_mip.tensor_format) and travel as one file,
tensors/<sha256>.safetensors. Parametric payloads travel in PEFT's own layout,
adapters/<sha256>/{adapter_config.json, adapter_model.safetensors}, split from and rebuilt into the
daemon's adapter blob by memos_mip.adapter_format (byte for byte, so the digest still holds).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from memos_mip.adapter_format import FormatError, from_peft_files, peft_files
from memosd.cube import MemCube, MemoryKind
from memosd.errors import InvalidArgument


@dataclass(frozen=True)
class PayloadFile:
    """One bundle file of a payload: its name in the bundle and where its bytes are."""

    name: str
    path: Path


def _blob_sha256(cube: MemCube) -> str:
    assert cube.manifest is not None  # the codecs see tensor cubes only, which always carry a manifest
    return cube.manifest["blob"]["sha256"]


class PayloadCodec(Protocol):
    def files(self, cube: MemCube, blob: Path, scratch: Path) -> list[PayloadFile]:
        """The bundle files that carry this cube's payload blob (written under scratch if need be)."""

    def names(self, cube: MemCube) -> list[str]:
        """The bundle names an imported cube's payload must arrive in."""

    def blob(self, cube: MemCube, files: dict[str, Path]) -> Path:
        """The payload blob to store for an imported cube, from its bundle files."""


class ActivationCodec:
    """A KV cache's blob is safetensors bytes: one file, unchanged."""

    def files(self, cube: MemCube, blob: Path, scratch: Path) -> list[PayloadFile]:
        return [PayloadFile(self.names(cube)[0], blob)]

    def names(self, cube: MemCube) -> list[str]:
        return [f"tensors/{_blob_sha256(cube)}.safetensors"]

    def blob(self, cube: MemCube, files: dict[str, Path]) -> Path:
        return files[self.names(cube)[0]]


class ParametricCodec:
    """An adapter blob as PEFT's two files; rebuilt into the same blob on import."""

    def files(self, cube: MemCube, blob: Path, scratch: Path) -> list[PayloadFile]:
        config_name, weights_name = self.names(cube)
        out = scratch / _blob_sha256(cube)
        out.mkdir(parents=True, exist_ok=True)
        # Adapters are megabytes, not gigabytes: read whole.
        config, weights = peft_files(blob.read_bytes())
        (out / "adapter_config.json").write_bytes(config)
        with open(out / "adapter_model.safetensors", "wb") as w:
            w.writelines(weights)
        return [PayloadFile(config_name, out / "adapter_config.json"),
                PayloadFile(weights_name, out / "adapter_model.safetensors")]

    def names(self, cube: MemCube) -> list[str]:
        sha = _blob_sha256(cube)
        return [f"adapters/{sha}/adapter_config.json", f"adapters/{sha}/adapter_model.safetensors"]

    def blob(self, cube: MemCube, files: dict[str, Path]) -> Path:
        config_name, weights_name = self.names(cube)
        target = files[weights_name].with_name("adapter.blob")
        try:
            header, parts = from_peft_files(files[config_name].read_bytes(), files[weights_name].read_bytes())
            with open(target, "wb") as out:
                out.write(header)
                out.writelines(parts)
        except (FormatError, ValueError) as exc:
            raise InvalidArgument(f"cube {cube.id}: its adapter files are not a valid PEFT LoRA adapter ({exc})") from None
        return target


CODECS: dict[MemoryKind, PayloadCodec] = {
    MemoryKind.ACTIVATION: ActivationCodec(),
    MemoryKind.PARAMETRIC: ParametricCodec(),
}


class TensorSink(Protocol):
    """Where an import stores tensor cubes: the daemon's blob store and tensor vault, when it has them."""

    async def put(self, cube: MemCube, blob: Path, owner: str, *, any_owner: bool = False) -> bool:
        """Store the payload file (verified already) and the cube; False if it was imported before (by owner, or
        by anyone with any_owner)."""
