"""The export bundle format (memosd-bundle, version 1), and reading a bundle tar without trusting it.

A bundle is a directory, or a tar of one, that any language can read:

    manifest.json                      {"format": "memosd-bundle", "version": 1, "files": [{path, size, sha256}], ...}
    cubes.jsonl                        one cube per line: header fields, and "text" for plaintext
    policies.jsonl                     signed policies: the exact signed document (UTF-8 JSON text) and its signature
    agents.jsonl                       name and Ed25519 public key of each policy's issuer, to verify signatures offline
    tensors/<sha256>.safetensors       activation payloads (KV caches), named by their digest
    adapters/<sha256>/adapter_config.json, adapters/<sha256>/adapter_model.safetensors
                                       parametric payloads in PEFT's own format

Times are RFC 3339 UTC strings; bytes (signatures, keys) are base64. The daemon and the client share
this module, so both apply the same rules: only the names above, no links or devices, every file
listed in the manifest with its size and digest, and size limits checked while reading.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
from datetime import datetime, UTC
from pathlib import Path
from typing import overload

from memos_mip.bounds import quote

FORMAT = "memosd-bundle"
VERSION = 1
MANIFEST = "manifest.json"
CUBES = "cubes.jsonl"
POLICIES = "policies.jsonl"
AGENTS = "agents.jsonl"
# Every name a bundle may hold; anything else (../../etc/passwd, absolute paths, stray files) is refused.
NAME = re.compile(
    r"manifest\.json|cubes\.jsonl|policies\.jsonl|agents\.jsonl|tensors/[0-9a-f]{64}\.safetensors"
    r"|adapters/[0-9a-f]{64}/(adapter_config\.json|adapter_model\.safetensors)"
)
DIRS = re.compile(r"tensors|adapters|adapters/[0-9a-f]{64}")
# A file of a MemTensor/MemOS MemCube dump directory: MemOS names its files after each memory's
# memory_filename, and dumps carry others (a README); the importer decides what each is and ignores the rest.
MEMOS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_FILES = 250_000


def default_memos_namespace(agent: str, cube_id: str) -> str:
    """agents/AGENT/memos/CUBE: a MemOS cube id ("Ki-Seki/mem_cube_2") made a namespace segment."""
    slug = re.sub(r"[^a-z0-9_.-]+", "-", cube_id.lower()).strip("-._")[:64] or "cube"
    return f"agents/{agent}/memos/{slug}"


class BundleError(Exception):
    """A bundle that cannot be read; `kind` names the error class either side raises for it:
    InvalidArgument (malformed), DataLoss (bytes do not match their digest), FailedPrecondition
    (a newer version), ResourceExhausted (over a size limit)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def rfc3339(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@overload
def from_rfc3339(text: str) -> float: ...
@overload
def from_rfc3339(text: object) -> float | None: ...


def from_rfc3339(text: object) -> float | None:
    """Seconds since the epoch of an RFC 3339 string; None for None; BundleError for anything else."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise BundleError("InvalidArgument", f"{quote(text)} is not an RFC 3339 time")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BundleError("InvalidArgument", f"{quote(text)} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def check_name(name: str, pattern: re.Pattern = NAME) -> str:
    """A member name a bundle may hold; BundleError(InvalidArgument) for anything else."""
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or "\0" in name or ".." in parts:
        raise BundleError("InvalidArgument", f"bundle member {quote(name)} points outside the bundle; refused")
    if not pattern.fullmatch(name):
        raise BundleError("InvalidArgument", f"bundle member {quote(name)} is not a name a bundle may hold")
    return name


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def safe_extract(tar_path: Path, dest: Path, *, max_bytes: int, max_files: int = MAX_FILES,
                 pattern: re.Pattern | None = None) -> dict[str, Path]:
    """Extract a bundle tar (plain or gzip) into the empty directory dest; returns {name: path}.

    Only regular files with allowed names (and their directories) are taken; links, devices, absolute
    or '..' names and duplicates are refused, and the bytes written are counted as they are written,
    so a tar bomb stops at max_bytes or max_files instead of filling the disk."""
    files: dict[str, Path] = {}
    written = 0
    try:
        tar = tarfile.open(tar_path, mode="r:*")
    except (tarfile.TarError, OSError) as exc:
        raise BundleError("InvalidArgument", f"the bundle is not a tar archive: {exc}") from None
    with tar:
        try:
            for member in tar:
                name = member.name.removeprefix("./").rstrip("/") if member.isdir() else member.name.removeprefix("./")
                if member.isdir():
                    if name in ("", "."):
                        continue
                    if ".." in name.split("/") or name.startswith("/"):
                        check_name(name)  # says "outside the bundle"
                    if pattern is None and not DIRS.fullmatch(name):
                        raise BundleError("InvalidArgument",
                                          f"bundle directory {quote(name)} is not one a bundle may hold")
                    continue
                if member.issym() or member.islnk():
                    raise BundleError("InvalidArgument",
                                      f"bundle member {quote(member.name)} is a link; bundles hold files only")
                if not member.isfile():
                    raise BundleError("InvalidArgument", f"bundle member {quote(member.name)} is not a regular file")
                check_name(name, pattern or NAME)
                if name in files:
                    raise BundleError("InvalidArgument", f"bundle member {quote(name)} appears twice")
                if len(files) >= max_files:
                    raise BundleError("ResourceExhausted", f"the bundle holds more than {max_files} files")
                if written + member.size > max_bytes:
                    raise BundleError("ResourceExhausted", f"the bundle unpacks to more than {max_bytes} bytes"
                                      " (max_bundle_bytes)")
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                source = tar.extractfile(member)
                assert source is not None  # a regular file (checked above) always has a reader
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as out:
                    left = member.size
                    while left:
                        chunk = source.read(min(left, 1 << 20))
                        if not chunk:
                            raise BundleError("DataLoss", f"bundle member {quote(name)} is cut short")
                        out.write(chunk)
                        left -= len(chunk)
                written += member.size
                files[name] = target
        except tarfile.TarError as exc:
            raise BundleError("InvalidArgument", f"the bundle tar is damaged: {exc}") from None
        except EOFError:
            raise BundleError("DataLoss", "the bundle tar ends in the middle of a file") from None
    return files


def add_directory(tar: tarfile.TarFile, root: Path, pattern: re.Pattern = NAME,
                  skipped: list[str] | None = None) -> int:
    """Add a bundle directory's files to a tar (for sending it), refusing links and names a bundle may
    not hold (or, given `skipped`, leaving those names out and listing them there); returns the number of
    files."""
    count = 0
    for path in sorted(Path(root).rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            raise BundleError("InvalidArgument", f"{path} is a symbolic link; bundles hold files only")
        if path.is_dir():
            continue
        if not path.is_file():
            raise BundleError("InvalidArgument", f"{path} is not a regular file")
        if skipped is not None and not pattern.fullmatch(rel):
            skipped.append(rel)
            continue
        check_name(rel, pattern)
        info = tarfile.TarInfo(rel)
        info.size = path.stat().st_size
        info.mode = 0o600
        with open(path, "rb") as f:
            tar.addfile(info, f)
        count += 1
    return count
