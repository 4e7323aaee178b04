"""How each tensor kind's payload blob becomes files in a bundle, and back: the extension point for kinds.

Activation payloads are safetensors already (memos_client.tensor_format) and travel as one file,
tensors/<sha256>.safetensors. Parametric payloads travel in PEFT's own layout,
adapters/<sha256>/{adapter_config.json, adapter_model.safetensors}; turning the daemon's adapter blob
into those two files needs the adapter codec of memosd.runtime, which is not built yet, so a
parametric cube is refused with a message saying so rather than exported half.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from memosd.cube import MemCube, MemoryKind
from memosd.errors import FailedPrecondition


@dataclass(frozen=True)
class PayloadFile:
    """One bundle file of a payload: its name in the bundle and where its bytes are."""

    name: str
    path: Path


class PayloadCodec(Protocol):
    def files(self, cube: MemCube, blob: Path) -> list[PayloadFile]:
        """The bundle files that carry this cube's payload blob."""

    def names(self, cube: MemCube) -> list[str]:
        """The bundle names an imported cube's payload must arrive in."""

    def blob(self, cube: MemCube, files: dict[str, Path]) -> Path:
        """The payload blob to store for an imported cube, from its bundle files."""


class ActivationCodec:
    """A KV cache's blob is safetensors bytes: one file, unchanged."""

    def files(self, cube: MemCube, blob: Path) -> list[PayloadFile]:
        return [PayloadFile(*self.names(cube), blob)]

    def names(self, cube: MemCube) -> list[str]:
        return [f"tensors/{cube.manifest['blob']['sha256']}.safetensors"]

    def blob(self, cube: MemCube, files: dict[str, Path]) -> Path:
        return files[self.names(cube)[0]]


class ParametricCodec:
    """PEFT directory layout; waits for the adapter codec (see the module docstring)."""

    def files(self, cube: MemCube, blob: Path) -> list[PayloadFile]:
        raise FailedPrecondition(f"cube {cube.id} is a parametric (LoRA) cube; exporting adapters in PEFT format"
                                 " needs the adapter codec, which this memosd does not have yet. Export the other"
                                 " kinds with --kind plaintext --kind activation")

    def names(self, cube: MemCube) -> list[str]:
        sha = cube.manifest["blob"]["sha256"]
        return [f"adapters/{sha}/adapter_config.json", f"adapters/{sha}/adapter_model.safetensors"]

    def blob(self, cube: MemCube, files: dict[str, Path]) -> Path:
        raise FailedPrecondition(f"cube {cube.id} is a parametric (LoRA) cube; importing adapters needs the"
                                 " adapter codec, which this memosd does not have yet")


CODECS: dict[MemoryKind, PayloadCodec] = {
    MemoryKind.ACTIVATION: ActivationCodec(),
    MemoryKind.PARAMETRIC: ParametricCodec(),
}


class TensorSink(Protocol):
    """Where an import stores tensor cubes: the daemon's blob store and tensor vault, when it has them."""

    async def put(self, cube: MemCube, blob: Path, owner: str) -> bool:
        """Store the payload file (verified already) and the cube; False if it was imported before."""
