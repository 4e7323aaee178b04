"""MemLoader: checks an unpacked export bundle completely, then stores it under a chosen namespace.

Nothing is written until every file matches its digest, every cube record is valid, every payload is
present, every policy's signature verifies and the caller may write every target namespace; then the
cubes go in, in batches (an import can be re-run: cubes it stored before are skipped).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from dataclasses import dataclass, field
from pathlib import Path

from memos_mip.auth import verify_signature
from memos_mip.bounds import JSONLimitError, loads
from memos_mip.bundle_format import AGENTS, CUBES, FORMAT, MANIFEST, POLICIES, VERSION, BundleError, check_name
from memos_mip.bundle_format import sha256_file
from memosd.bundle.payloads import CODECS, TensorSink
from memosd.vault import lineage
from memosd.bundle.records import cube_from_record
from memosd.cube import MemCube, MemoryKind
from memosd.errors import AlreadyExists, FailedPrecondition, InvalidArgument, MemosError, PermissionDenied
from memosd.governance.policy import parse_policy
from memosd.limits import Limits, check_namespace, check_namespace_prefix
from memosd.vault.imported import import_cubes

BATCH = 1000
# manifest.json lists every file (at most bundle_format.MAX_FILES, ~150 bytes each).
MAX_MANIFEST_BYTES = 64 << 20
# A cube record: an activation cube's manifest carries its token ids, up to the 2**24 tokens
# tensor_format.check_manifest allows; a policy or agent record is a document of at most 64 KiB and a key.
MAX_RECORD_BYTES = 256 << 20
MAX_SMALL_RECORD_BYTES = 1 << 20


@dataclass
class ImportOptions:
    """namespace: where the bundle's root goes ("" keeps its namespaces); apply_policies: store the
    bundle's policies whose issuer is registered here with the same key; allow_pickle: read a MemOS
    dump's activation_memory.pickle (with the restricted unpickler)."""

    namespace: str = ""
    apply_policies: bool = True
    allow_pickle: bool = False


@dataclass
class ImportReport:
    format: str
    cubes: int = 0
    skipped: int = 0
    renamed: int = 0
    tensors: int = 0
    policies_applied: int = 0
    policies_skipped: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class _Policy:
    document: bytes
    signature: bytes
    issuer: str
    issuer_key: bytes
    id: str


@dataclass
class VerifiedBundle:
    root: str
    files: dict[str, Path]
    targets: set[tuple[str, MemoryKind]]
    counts: dict[str, int]
    policies: list[_Policy]


class BundleReader:
    """Reads an unpacked memosd bundle; verify() checks everything, cubes() then yields the records."""

    def __init__(self, files: dict[str, Path], limits: Limits, options: ImportOptions):
        self.files = files
        self.limits = limits
        self.options = options

    def verify(self) -> VerifiedBundle:
        """Blocking: run it on a thread."""
        manifest = self._manifest()
        listed: dict[str, dict] = {}
        for entry in manifest["files"]:
            if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
                raise BundleError("InvalidArgument", "manifest.json: each file needs a path, size and sha256")
            listed[check_name(entry["path"])] = entry
        for name in (CUBES, POLICIES, AGENTS):
            if name not in listed:
                raise BundleError("InvalidArgument", f"manifest.json does not list {name}")
        for name, entry in listed.items():
            path = self.files.get(name)
            if path is None:
                what = "payload (blob)" if name.startswith(("tensors/", "adapters/")) else "file"
                raise BundleError("DataLoss", f"the bundle lacks the {what} {name} its manifest lists")
            if name.startswith("tensors/") and name[len("tensors/"):-len(".safetensors")] != entry.get("sha256"):
                raise BundleError("DataLoss", f"{name} is listed with another digest than its name: payloads are"
                                  " named by their sha256")
            if path.stat().st_size != entry.get("size") or sha256_file(path) != entry.get("sha256"):
                raise BundleError("DataLoss", f"{name} does not match its sha256 in manifest.json: the bundle was"
                                  " changed or damaged")
        unlisted = sorted(set(self.files) - set(listed) - {MANIFEST})
        if unlisted:
            raise BundleError("InvalidArgument", f"the bundle holds {unlisted[0]}, which manifest.json does not list")
        root = manifest.get("root", "")
        if not isinstance(root, str):
            raise BundleError("InvalidArgument", "manifest.json: root must be a namespace or \"\"")
        root = _prefix(root)
        targets: set[tuple[str, MemoryKind]] = set()
        counts = {"cubes": 0, "tensors": 0}
        for cube in self._records(root):
            targets.add((cube.namespace, cube.kind))
            counts["cubes"] += 1
            if cube.kind is not MemoryKind.PLAINTEXT:
                counts["tensors"] += 1
                for name in CODECS[cube.kind].names(cube):
                    if name not in self.files:
                        raise BundleError("DataLoss", f"cube {cube.id} needs the payload {name}, which the bundle lacks")
        return VerifiedBundle(root, self.files, targets, counts, self._policies())

    def cubes(self, root: str):
        """Cubes in batches, namespaces already mapped (blocking iterator)."""
        batch: list[MemCube] = []
        for cube in self._records(root):
            batch.append(cube)
            if len(batch) >= BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    def _manifest(self) -> dict:
        path = self.files.get(MANIFEST)
        if path is None:
            raise BundleError("InvalidArgument", "the bundle has no manifest.json")
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError("InvalidArgument", f"manifest.json is over its limit of {MAX_MANIFEST_BYTES >> 20} MiB")
        manifest = _parse(path.read_bytes(), MANIFEST, MAX_MANIFEST_BYTES)
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise BundleError("InvalidArgument", f"manifest.json does not describe a {FORMAT}")
        version = manifest.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise BundleError("InvalidArgument", "manifest.json: version must be a positive integer")
        if version > VERSION:
            raise BundleError("FailedPrecondition", f"the bundle is format version {version}, from a newer memosd;"
                              f" this one reads versions up to {VERSION}. Upgrade memosd to import it")
        if not isinstance(manifest.get("files"), list):
            raise BundleError("InvalidArgument", "manifest.json: files must be a list")
        return manifest

    def _records(self, root: str):
        for number, raw in _lines(self.files[CUBES], CUBES, MAX_RECORD_BYTES):
            cube = cube_from_record(_parse(raw, f"{CUBES} line {number}", MAX_RECORD_BYTES), self.limits, number)
            cube.namespace = remap(cube.namespace, root, self.options.namespace, number)
            yield cube

    def _policies(self) -> list[_Policy]:
        keys: dict[str, bytes] = {}
        for number, rec in _jsonl(self.files[AGENTS], AGENTS):
            try:
                key = base64.b64decode(rec["public_key"], validate=True)
                keys[str(rec["name"])] = key
            except (KeyError, TypeError, binascii.Error):
                raise BundleError("InvalidArgument", f"agents.jsonl line {number}: needs a name and a base64"
                                  " public_key") from None
        policies = []
        for number, rec in _jsonl(self.files[POLICIES], POLICIES):
            try:
                document = rec["document"].encode("utf-8")
                signature = base64.b64decode(rec["signature"], validate=True)
            except (KeyError, AttributeError, TypeError, binascii.Error):
                raise BundleError("InvalidArgument", f"policies.jsonl line {number}: needs the document text and a"
                                  " base64 signature") from None
            try:
                policy = parse_policy(document)
            except InvalidArgument as exc:
                raise BundleError("InvalidArgument", f"policies.jsonl line {number}: {exc}") from None
            issuer_key = keys.get(policy.issuer)
            if issuer_key is None:
                raise BundleError("InvalidArgument", f"policies.jsonl line {number}: the bundle has no public key"
                                  f" for its issuer {policy.issuer}")
            if not verify_signature(issuer_key, document, signature):
                raise BundleError("DataLoss", f"policy {policy.id} (policies.jsonl line {number}) does not match its"
                                  f" signature by {policy.issuer}: it was altered")
            policies.append(_Policy(document, signature, policy.issuer, issuer_key, policy.id))
        return policies


def remap(namespace: str, root: str, target: str, line: int = 0) -> str:
    """The namespace a bundle cube goes to when the bundle's root is imported as `target`."""
    if not target:
        return namespace
    if namespace == root:
        mapped = target
    elif not root:
        mapped = f"{target}/{namespace}"
    elif namespace.startswith(root + "/"):
        mapped = target + namespace[len(root):]
    else:
        raise BundleError("InvalidArgument", f"cubes.jsonl line {line}: namespace {namespace} is outside the"
                          f" bundle's root {root}")
    try:
        return check_namespace(mapped)
    except InvalidArgument as exc:
        raise BundleError("InvalidArgument", f"cubes.jsonl line {line}: imported under {target}: {exc}") from None


def _prefix(text: str) -> str:
    try:
        return check_namespace_prefix(text)
    except InvalidArgument as exc:
        raise BundleError("InvalidArgument", f"manifest.json root: {exc}") from None


def _lines(path: Path, name: str, max_bytes: int):
    """(number, bytes) of each non-blank line, never reading more than max_bytes of one."""
    with open(path, "rb") as f:
        number = 0
        while raw := f.readline(max_bytes + 1):
            number += 1
            if len(raw) > max_bytes:
                raise BundleError("InvalidArgument", f"{name} line {number} is over its limit of {max_bytes} bytes")
            if raw.strip():
                yield number, raw


def _parse(raw: bytes, what: str, max_bytes: int):
    try:
        return loads(raw, what=what, max_bytes=max_bytes)
    except JSONLimitError as exc:
        raise BundleError("InvalidArgument", str(exc)) from None
    except ValueError as exc:  # UnicodeDecodeError included
        raise BundleError("InvalidArgument", f"{what} is not JSON: {exc}") from None


def _jsonl(path: Path, name: str):
    for number, raw in _lines(path, name, MAX_SMALL_RECORD_BYTES):
        rec = _parse(raw, f"{name} line {number}", MAX_SMALL_RECORD_BYTES)
        if not isinstance(rec, dict):
            raise BundleError("InvalidArgument", f"{name} line {number} is not a JSON object")
        yield number, rec


async def load_bundle(reader: BundleReader, *, vault, governance, principal, options: ImportOptions,
                      tensors: TensorSink | None = None, origin: str = "bundle") -> ImportReport:
    """Verify, check the caller's grants, then store cubes and (optionally) policies."""
    if options.namespace:
        check_namespace(options.namespace)
    verified = await asyncio.to_thread(reader.verify)
    for namespace, kind in sorted(verified.targets):
        governance.check(principal, "write", namespace, kind)
    if verified.counts["tensors"] and tensors is None:
        raise FailedPrecondition(f"the bundle holds {verified.counts['tensors']} tensor cubes, and this daemon has"
                                 " no tensor store to put them in")
    report = ImportReport(format=f"{FORMAT}/1")
    batches = reader.cubes(verified.root)
    while batch := await asyncio.to_thread(next, batches, None):
        # An agent may not claim, through a bundle, lineage to cubes it may not read (a Plan would credit it).
        batch = await lineage.claimable(vault.db, batch, governance.reader(principal))
        plain = [c for c in batch if c.kind is MemoryKind.PLAINTEXT]
        stored, skipped, renamed = await import_cubes(vault, plain, principal.name, origin, keep_ids=principal.admin)
        report.cubes += stored
        report.skipped += skipped
        report.renamed += renamed
        for cube in batch:
            if cube.kind is not MemoryKind.PLAINTEXT:
                assert tensors is not None  # verify counted every tensor cube, and a count without a store was refused
                if await tensors.put(cube, CODECS[cube.kind].blob(cube, verified.files), principal.name,
                                     any_owner=principal.admin):
                    report.tensors += 1
                    report.cubes += 1
                else:
                    report.skipped += 1
    for policy in verified.policies:
        if not options.apply_policies:
            report.policies_skipped += 1
            continue
        reason = await _apply_policy(governance, principal, policy)
        if reason:
            report.policies_skipped += 1
            report.notes.append(f"policy {policy.id} not applied: {reason}")
        else:
            report.policies_applied += 1
    return report


async def _apply_policy(governance, principal, policy: _Policy) -> str:
    """Store a verified policy if its issuer is an agent here with the same key; the reason if not."""
    try:
        here = governance.agent(policy.issuer)
    except MemosError:
        here = None
    if here is None or bytes(here.public_key) != policy.issuer_key:
        return f"its issuer {policy.issuer} is not registered here with the same key"
    try:
        await governance.put_policy(principal, policy.document, policy.signature)
    except AlreadyExists:
        return "it is here already"
    except (PermissionDenied, InvalidArgument) as exc:
        return str(exc)
    return ""
