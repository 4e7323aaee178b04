"""Signed checkpoints of the audit chain: its head's (seq, hash) under a key that the database does not hold."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memos_mip.auth import AgentKey, KeyFileError, b64url, canonical, fingerprint, unb64url, verify_signature
from memosd.errors import FailedPrecondition, MemosError
from memosd.governance import audit
from memosd.storage import Conn

log = logging.getLogger("memosd.governance")
AUDIT_KEY_FILE = "audit.key"
CHECKPOINT_FILE_SUFFIX = "-checkpoints.jsonl"
# Signed bytes start with this, so that no token or policy signature can pass for a checkpoint's.
DOMAIN = b"memosd-audit-checkpoint/v1\n"
# ... and the admin's endorsement of a member's audit key with this.
KEY_DOMAIN = b"memosd-audit-key/v1\n"


def endorsement_bytes(daemon_id: str, member: str, public_key: bytes) -> bytes:
    """What the admin key signs to vouch that a member's audit key signs this cluster's checkpoints."""
    return KEY_DOMAIN + canonical({"daemon": daemon_id, "member": member, "key": b64url(public_key)})


@dataclass(frozen=True)
class Checkpoint:
    """The audit chain's head at one moment, signed: number n (from 1), entry seq and its hash."""

    n: int
    seq: int
    hash: str
    ts: float
    signature: bytes

    def signed_bytes(self, daemon_id: str) -> bytes:
        return DOMAIN + canonical({"daemon": daemon_id, "n": self.n, "seq": self.seq, "hash": self.hash,
                                   "ts": self.ts})

    def line(self) -> str:
        return json.dumps({"n": self.n, "seq": self.seq, "hash": self.hash, "ts": self.ts,
                           "signature": b64url(self.signature)}, separators=(",", ":")) + "\n"

    @classmethod
    def from_line(cls, line: str) -> Checkpoint:
        """ValueError unless the line is one checkpoint as line() writes it."""
        try:
            body = json.loads(line)
            cp = cls(body["n"], body["seq"], body["hash"], body["ts"], unb64url(body["signature"]))
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(str(exc)) from None
        if not (type(cp.n) is int and type(cp.seq) is int and isinstance(cp.hash, str)
                and isinstance(cp.ts, (int, float))):
            raise ValueError("fields of the wrong type")
        return cp


@dataclass(frozen=True)
class AuditReport:
    """What `audit verify` found: the chain's verdict and what its checkpoints prove."""

    ok: bool
    entries: int
    first_bad_seq: int
    reason: str
    checkpoints: int = 0
    last_checkpoint_seq: int = 0
    unsigned_tail: int = 0
    key_fingerprint: str = ""


def _from_row(n, seq, h, ts, signature) -> Checkpoint | None:
    """A checkpoint row as stored, or None if someone wrote values of the wrong types into it."""
    if type(seq) is not int or not isinstance(h, str) or not isinstance(ts, (int, float)) \
            or not isinstance(signature, bytes):
        return None
    return Checkpoint(n, seq, h, ts, signature)


def checkpoint_file(key_path: Path) -> Path:
    """The append-only checkpoint file that lives beside an audit key."""
    return key_path.with_name(key_path.stem + CHECKPOINT_FILE_SUFFIX)


class AuditSigner:
    """Holds the audit key; signs the head when asked, after enough entries, on a timer and at stop().

    The hash chain alone shows a changed entry, but whoever can write the database can also cut the log and
    move the head, or rewrite it with recomputed hashes. So the daemon signs the head with its audit key
    (Ed25519, a 0600 file: `audit_key`, by default DATA_DIR/audit.key) every `audit_checkpoint_entries`
    entries, every `audit_checkpoint_interval` seconds and at shutdown, and stores each checkpoint twice: in
    the database (table audit_checkpoints) and as a JSON line appended to the checkpoint file beside the key
    (audit-checkpoints.jsonl). Verification needs both copies to agree, every signature to hold under the
    key, and the chain to hold each checkpointed (seq, hash): against someone who can write the database but
    not the key file, tampering up to the last checkpoint shows; the entries after it ("the unsigned tail")
    are only as good as the chain; whoever can read the key can forge everything.

    In a cluster every member signs with its own audit key, and the members number their checkpoints one after
    another (a lock orders them). Each checkpoint names its key by fingerprint; each member records its key in
    the vault (audit_keys) with the admin key's signature over (cluster, member, key), made at start from the
    admin key in its data directory. A member verifying trusts its own key (its file) and any key the admin
    endorsed, checked against the admin key in its own data directory (the vault's admin key if it has none,
    which someone who can write the vault could replace). Its own checkpoints are checked against its file as
    well; another member's, only by their signatures: a cut of the last checkpoints of another member shows
    when that member verifies.
    """

    def __init__(self, db, key_path: Path, *, clock=time.time):
        self.db = db
        self.sql = db.sql
        self.key_path = Path(key_path).expanduser()
        self.file = checkpoint_file(self.key_path)
        self.clock = clock
        self.daemon_id = ""
        self.member = ""
        self.key: AgentKey | None = None
        self.admin_public: bytes | None = None  # what another member's key must be endorsed by
        self.every_entries = 0
        self._unsigned = 0  # entries since the last checkpoint; touched only on the writer thread
        self._requested = False
        self._lock = asyncio.Lock()
        self._due = asyncio.Event()  # made again by start(); binds to a loop only when first awaited
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False

    async def open(self, daemon_id: str, *, member: str = "", admin: AgentKey | None = None,
                   admin_public: bytes | None = None) -> None:
        """Load the key (creating it on first start), record it in the vault (endorsed by the admin key, when
        given), and finish a checkpoint a crash left in the database only. admin_public: the admin key others'
        endorsements are checked against, when the admin key itself is not at hand."""
        self.daemon_id, self.member = daemon_id, member
        self.key = await asyncio.to_thread(self._load_key)
        self.admin_public = admin.public_bytes if admin is not None else admin_public
        endorsement = admin.sign(endorsement_bytes(daemon_id, member, self.key.public_bytes)) if admin else b""
        await self.db.write(lambda conn: self._enroll(conn, endorsement))
        mine = [cp for cp, signer in await self.db.read(self._stored) if signer == self.key_fingerprint]
        in_file, _ = await asyncio.to_thread(self._read_file)
        # A crash between the database's commit and the file's append leaves exactly the newest one out.
        before = mine[-2].n if len(mine) > 1 else None
        if mine and before == (in_file[-1].n if in_file else None) and self._signed(mine[-1]):
            await asyncio.to_thread(self._append, mine[-1])
            log.info("audit checkpoint %d was in the database only (a crash); appended it to %s", mine[-1].n, self.file)

    def _enroll(self, conn: Conn, endorsement: bytes) -> None:
        assert self.key is not None
        records = self.sql.governance
        records.put_audit_key(conn, self.key_fingerprint, self.key.public_bytes, self.member, endorsement, self.clock())
        # Checkpoints from before they named their signer are this key's if its signature holds on them.
        records.claim_checkpoints(conn, [cp.n for cp, signer in self._stored(conn) if not signer and self._signed(cp)],
                                  self.key_fingerprint)

    def _stored(self, conn: Conn) -> list[tuple[Checkpoint, str]]:
        """The well-formed checkpoint rows with the fingerprint of the key each names, in order of n."""
        signers = self.sql.governance.checkpoint_signers(conn)
        return [(cp, signers.get(cp.n, "")) for cp in (_from_row(*r) for r in self.sql.governance.checkpoints(conn))
                if cp is not None]

    def _load_key(self) -> AgentKey:
        if not self.key_path.exists():
            self.key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            key = AgentKey.generate("memosd-audit", self.daemon_id)
            key.save(self.key_path)
            log.info("created the audit key %s (fingerprint %s)", self.key_path, fingerprint(key.public_bytes))
            return key
        try:
            return AgentKey.load(self.key_path)
        except KeyFileError as exc:  # unreadable, or not a key file
            raise FailedPrecondition(f"cannot use the audit key: {exc}") from None

    @property
    def key_fingerprint(self) -> str:
        return fingerprint(self.key.public_bytes) if self.key else ""

    # -- signing ------------------------------------------------------------------------------

    def note_entry(self) -> None:
        """Count one appended entry (on the writer thread); past every_entries, ask for a checkpoint."""
        self._unsigned += 1
        if self.every_entries and self._unsigned >= self.every_entries and not self._requested and self._loop:
            self._requested = True
            self._loop.call_soon_threadsafe(self._due.set)

    def start(self, every_entries: int, interval: float) -> None:
        """Sign the head every `every_entries` entries and every `interval` seconds (0: never) until stop()."""
        self.every_entries = every_entries
        self._loop = asyncio.get_running_loop()
        self._due = asyncio.Event()
        self._task = asyncio.create_task(self._run(interval), name="memosd-audit-checkpoints")

    async def stop(self) -> None:
        """End the timer and sign the head a last time: a clean shutdown leaves no unsigned tail."""
        if self._task is not None:
            # Not cancelled: a checkpoint cut between its commit and its append would miss the file.
            self._stopping = True
            self._due.set()
            await self._task
            self._task = None
        try:
            await self.checkpoint()
        except (MemosError, OSError) as exc:  # the shutdown goes on; the tail stays unsigned
            log.warning("could not sign the audit log's head at shutdown: %s", exc)

    async def _run(self, interval: float) -> None:
        while True:
            try:
                await asyncio.wait_for(self._due.wait(), interval or None)
            except TimeoutError:
                pass
            self._due.clear()
            if self._stopping:
                return
            try:
                await self.checkpoint()
            except (MemosError, OSError) as exc:
                log.warning("could not sign an audit checkpoint: %s", exc)

    async def checkpoint(self) -> Checkpoint | None:
        """Sign the current head if no checkpoint covers it yet: the database first, then the file."""
        async with self._lock:
            made = await self.db.write(self._sign_head)
            if made is not None:
                await asyncio.to_thread(self._append, made)
            return made

    def _sign_head(self, conn: Conn) -> Checkpoint | None:
        self._unsigned, self._requested = 0, False
        self.sql.governance.lock_checkpoints(conn)  # another member's checkpoint would take the same n
        stored = self.sql.audit.head(conn) or None
        if stored is None:
            return None
        seq, _, head = stored.partition(":")
        last = self.sql.governance.last_checkpoint(conn)
        if not seq.isdigit() or (last is not None and str(last[1]) == seq):
            return None  # nothing new, or a head someone garbled (verify reports that)
        unsigned = Checkpoint((last[0] if last else 0) + 1, int(seq), head, round(self.clock(), 6), b"")
        assert self.key is not None, "open() loads the key before anything is signed"
        made = Checkpoint(unsigned.n, unsigned.seq, unsigned.hash, unsigned.ts,
                          self.key.sign(unsigned.signed_bytes(self.daemon_id)))
        self.sql.governance.put_checkpoint(conn, made.n, made.seq, made.hash, made.ts, made.signature,
                                           self.key_fingerprint)
        return made

    def _append(self, cp: Checkpoint) -> None:
        fd = os.open(self.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, cp.line().encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- verification -------------------------------------------------------------------------

    def _read_file(self) -> tuple[list[Checkpoint], str]:
        """The file's checkpoints, and what is wrong with it ("" if nothing)."""
        try:
            text = self.file.read_text()
        except FileNotFoundError:
            return [], ""
        found = []
        for number, line in enumerate(text.splitlines(), 1):
            try:
                found.append(Checkpoint.from_line(line))
            except ValueError:
                return found, f"line {number} of {self.file} is not a checkpoint: the file was altered"
        return found, ""

    def _signed(self, cp: Checkpoint) -> bool:
        assert self.key is not None, "open() loads the key before anything is verified"
        return verify_signature(self.key.public_bytes, cp.signed_bytes(self.daemon_id), cp.signature)

    def _other_member(self, cp: Checkpoint, signer: str, keys: dict) -> str:
        """What is wrong with a checkpoint another member's key signed ("" if nothing)."""
        if not signer:
            return (f"does not carry the audit key's signature (key {self.key_fingerprint}) and names no other:"
                    " it was forged or signed by another key")
        if signer not in keys or fingerprint(keys[signer][0]) != signer:
            return f"names audit key {signer}, which no member recorded: it was forged"
        public, member, endorsement = keys[signer]
        if not endorsement:
            return (f"is signed by member {member}'s audit key {signer}, which the admin key has not endorsed:"
                    f" give member {member} the admin key (DATA_DIR/admin.key) and restart it")
        if self.admin_public is None or not verify_signature(
                self.admin_public, endorsement_bytes(self.daemon_id, member, public), endorsement):
            return f"is signed by audit key {signer}, whose endorsement is not the admin key's: it was forged"
        if not verify_signature(public, cp.signed_bytes(self.daemon_id), cp.signature):
            return f"does not carry the signature of member {member}'s audit key {signer}: it was forged"
        return ""

    async def verify(self) -> AuditReport:
        """Check the chain, then its checkpoints: both copies, their signatures, and the entries they name."""
        async with self._lock:  # never between a checkpoint's commit and its append to the file
            in_file, damaged = await asyncio.to_thread(self._read_file)
            return await self.db.read(lambda conn: self._verify(conn, in_file, damaged))

    def _verify(self, conn: Conn, in_file: list[Checkpoint], damaged: str) -> AuditReport:
        rows = self.sql.governance.checkpoints(conn)
        in_db = [cp for cp in (_from_row(*r) for r in rows) if cp is not None]
        if len(in_db) < len(rows) and not damaged:
            damaged = "a checkpoint row in the database holds values of the wrong types: it was altered"
        chain = audit.check_chain(self.sql.audit.entries(conn), self.sql.audit.head(conn),
                                  wanted={cp.seq for cp in in_db + in_file})
        every = sorted({cp.n: cp for cp in in_file + in_db}.values(), key=lambda cp: cp.n)
        last_seq = every[-1].seq if every else 0
        report: dict[str, Any] = dict(entries=chain.entries, checkpoints=len(every), last_checkpoint_seq=last_seq,
                      unsigned_tail=max(chain.last_seq - last_seq, 0), key_fingerprint=self.key_fingerprint)
        if not chain.ok:
            return AuditReport(False, first_bad_seq=chain.first_bad_seq, reason=chain.reason, **report)
        signers = self.sql.governance.checkpoint_signers(conn)
        keys = {fp: (public, member, endorsement) for fp, public, member, endorsement in self.sql.governance.audit_keys(conn)}
        bad, reason = self._check_checkpoints(in_db, in_file, damaged, chain, signers, keys)
        return AuditReport(not reason, first_bad_seq=bad, reason=reason, **report)

    def _check_checkpoints(self, in_db, in_file, damaged, chain, signers, keys) -> tuple[int, str]:
        """(seq, reason) of the first checkpoint that does not hold, or (0, "")."""
        if damaged:
            return (in_file[-1].seq if in_file else 1), damaged
        db, file, name = {cp.n: cp for cp in in_db}, {cp.n: cp for cp in in_file}, self.file.name
        matched = 0
        for n in range(1, max([*db, *file], default=0) + 1):
            cp = db.get(n) or file.get(n)
            if cp is None:
                return matched + 1, f"checkpoint {n} is missing from both the database and {name}"
            where = f"checkpoint {n} (entry {cp.seq})"
            if n not in db:
                return cp.seq, f"{where} is in {name} but not in the database: checkpoint rows were deleted"
            signer = signers.get(n, "")
            if n in file or signer == self.key_fingerprint:  # one of this member's: both copies, this key
                if n not in file:
                    return cp.seq, f"{where} is in the database but not in {name}: the checkpoint file was cut or replaced"
                if db[n] != file[n]:
                    return cp.seq, f"{where} differs between the database and {name}"
                if not self._signed(cp):
                    return cp.seq, (f"{where} does not carry the audit key's signature (key {self.key_fingerprint}):"
                                    " it was forged or signed by another key")
                if signer != self.key_fingerprint:
                    return cp.seq, f"{where} is this member's, but the database names another signer: it was altered"
            else:
                problem = self._other_member(cp, signer, keys)
                if problem:
                    return cp.seq, f"{where} {problem}"
            if cp.seq < matched:
                return cp.seq, f"{where} names an earlier entry than the checkpoint before it"
            if cp.seq > chain.last_seq:
                return cp.seq, (f"entries {chain.last_seq + 1}..{cp.seq} were removed: {where} signed them,"
                                f" the log ends at {chain.last_seq}")
            if chain.hashes.get(cp.seq) != cp.hash:
                return cp.seq, (f"entry {cp.seq} is not the one checkpoint {n} signed: the log was rewritten"
                                f" between entries {matched + 1} and {cp.seq}")
            matched = cp.seq
        return 0, ""
