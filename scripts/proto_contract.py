"""The protocol as a contract: its reference (docs/protocol.md, from the proto comments) and a buf-style
breaking-change check against the snapshot of the last release (protos/release/*.json).

    python scripts/proto_contract.py docs [--check]       write (or check) docs/protocol.md
    python scripts/proto_contract.py breaking [--against protos/release/v0.1.0.json]
    python scripts/proto_contract.py snapshot --ref GIT_REF --out protos/release/vX.Y.Z.json

A change breaks the contract when a client built against the release could misread or fail on what the
current protos send: a removed or renumbered message, field, enum value, service or method (a removed
field or value is fine once its number and name are reserved), a field whose type, cardinality,
presence or oneof changed, a renamed field or value (JSON carries names), or a method whose request,
response or streaming changed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
DOC = ROOT / "docs" / "protocol.md"
AUTHENTICATION = PROTOS / "authentication.md"
RELEASES = PROTOS / "release"
F = descriptor_pb2.FieldDescriptorProto
TYPES = {v: k.removeprefix("TYPE_").lower() for k, v in F.Type.items()}


def descriptor_set(proto_root: Path) -> descriptor_pb2.FileDescriptorSet:
    sources = sorted(str(p.relative_to(proto_root)) for p in (proto_root / "memos").rglob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.binpb"
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_root}", "--include_source_info",
                        f"--descriptor_set_out={out}", *sources], check=True)
        fds = descriptor_pb2.FileDescriptorSet()
        fds.ParseFromString(out.read_bytes())
    return fds


# ---- snapshot --------------------------------------------------------------------------------------------


def snapshot(fds: descriptor_pb2.FileDescriptorSet) -> dict:
    """What clients depend on, per fully qualified name."""
    messages, enums, services = {}, {}, {}

    def walk_message(prefix: str, m) -> None:
        name = f"{prefix}.{m.name}"
        messages[name] = {
            "fields": {f.name: {"number": f.number, "type": TYPES[f.type], "type_name": f.type_name.lstrip("."),
                                "repeated": f.label == F.LABEL_REPEATED, "optional": f.proto3_optional,
                                "oneof": (m.oneof_decl[f.oneof_index].name
                                          if f.HasField("oneof_index") and not f.proto3_optional else None)}
                       for f in m.field},
            "reserved_numbers": [[r.start, r.end - 1] for r in m.reserved_range],
            "reserved_names": list(m.reserved_name),
        }
        for nested in m.nested_type:
            walk_message(name, nested)
        for e in m.enum_type:
            walk_enum(name, e)

    def walk_enum(prefix: str, e) -> None:
        enums[f"{prefix}.{e.name}"] = {"values": {v.name: v.number for v in e.value},
                                      "reserved_numbers": [[r.start, r.end] for r in e.reserved_range],
                                      "reserved_names": list(e.reserved_name)}

    for f in fds.file:
        if not f.name.startswith("memos/"):
            continue
        for m in f.message_type:
            walk_message(f.package, m)
        for e in f.enum_type:
            walk_enum(f.package, e)
        for s in f.service:
            services[f"{f.package}.{s.name}"] = {
                m.name: {"input": m.input_type.lstrip("."), "output": m.output_type.lstrip("."),
                         "client_streaming": m.client_streaming, "server_streaming": m.server_streaming}
                for m in s.method}
    return {"messages": messages, "enums": enums, "services": services}


def snapshot_of_ref(ref: str) -> dict:
    """The snapshot of protos/ as committed at a git ref (a release tag)."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", ref, "protos"],
                                 check=True, capture_output=True).stdout
        with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        return snapshot(descriptor_set(Path(tmp) / "protos"))


# ---- breaking changes ------------------------------------------------------------------------------------


def _reserved(number: int, ranges) -> bool:
    return any(lo <= number <= hi for lo, hi in ranges)


def breaking_changes(old: dict, new: dict) -> list[str]:
    problems = []
    for name, m in old["messages"].items():
        now = new["messages"].get(name)
        if now is None:
            problems.append(f"message {name} was removed")
            continue
        by_number = {f["number"]: (n, f) for n, f in now["fields"].items()}
        for fname, f in m["fields"].items():
            cur = now["fields"].get(fname)
            if cur is None:
                if f["number"] in by_number:
                    problems.append(f"field {name}.{fname} ({f['number']}) was renamed to {by_number[f['number']][0]}")
                elif not (_reserved(f["number"], now["reserved_numbers"]) and fname in now["reserved_names"]):
                    problems.append(f"field {name}.{fname} ({f['number']}) was removed without reserving its number"
                                    " and name")
                continue
            if cur["number"] != f["number"]:
                problems.append(f"field {name}.{fname} changed number {f['number']} -> {cur['number']}")
            if (cur["type"], cur["type_name"]) != (f["type"], f["type_name"]):
                problems.append(f"field {name}.{fname} changed type {f['type_name'] or f['type']} ->"
                                f" {cur['type_name'] or cur['type']}")
            if cur["repeated"] != f["repeated"]:
                problems.append(f"field {name}.{fname} changed between repeated and singular")
            if cur["optional"] != f["optional"]:
                problems.append(f"field {name}.{fname} changed presence (optional)")
            if cur["oneof"] != f["oneof"]:
                problems.append(f"field {name}.{fname} moved from oneof {f['oneof']} to {cur['oneof']}")
    for name, e in old["enums"].items():
        now = new["enums"].get(name)
        if now is None:
            problems.append(f"enum {name} was removed")
            continue
        numbers = {v: k for k, v in now["values"].items()}
        for vname, number in e["values"].items():
            cur = now["values"].get(vname)
            if cur is None:
                if number in numbers:
                    problems.append(f"enum value {name}.{vname} ({number}) was renamed to {numbers[number]}")
                elif not (_reserved(number, now["reserved_numbers"]) and vname in now["reserved_names"]):
                    problems.append(f"enum value {name}.{vname} ({number}) was removed without reserving it")
            elif cur != number:
                problems.append(f"enum value {name}.{vname} changed number {number} -> {cur}")
    for name, methods in old["services"].items():
        now = new["services"].get(name)
        if now is None:
            problems.append(f"service {name} was removed")
            continue
        for mname, m in methods.items():
            cur = now.get(mname)
            if cur is None:
                problems.append(f"method {name}.{mname} was removed")
                continue
            for key in ("input", "output", "client_streaming", "server_streaming"):
                if cur[key] != m[key]:
                    problems.append(f"method {name}.{mname} changed {key}: {m[key]} -> {cur[key]}")
    return problems


def latest_release() -> Path:
    found = sorted(RELEASES.glob("v*.json"), key=lambda p: tuple(int(x) for x in p.stem[1:].split(".")))
    if not found:
        raise SystemExit(f"no release snapshot in {RELEASES}")
    return found[-1]


# ---- docs ------------------------------------------------------------------------------------------------


def _comments(f) -> dict[tuple, str]:
    return {tuple(loc.path): " ".join(loc.leading_comments.split()).replace("|", "\\|")
            for loc in f.source_code_info.location if loc.leading_comments}


def _type(f) -> str:
    base = f.type_name.lstrip(".").removeprefix("memos.v1.") if f.type_name else TYPES[f.type]
    anchor = f"[{base}](#{base.lower().replace('.', '')})" if f.type_name.startswith(".memos.") else f"`{base}`"
    if f.label == F.LABEL_REPEATED:
        return f"repeated {anchor}"
    return f"optional {anchor}" if f.proto3_optional else anchor


def render_docs(fds: descriptor_pb2.FileDescriptorSet) -> str:
    out = ["# The Memory Interchange Protocol (memos.v1)", "",
           "Generated by `scripts/proto_contract.py docs` from the comments in `protos/memos/v1/*.proto`;",
           "do not edit by hand. Every message is plain protobuf 3: any language's protobuf and gRPC",
           "libraries read it, and no field holds anything that needs Python to decode (bytes fields say",
           "what they hold: JSON, safetensors, tar, raw Ed25519 keys and signatures). Calls carry",
           "`authorization: Bearer TOKEN` metadata (see [Authentication](#authentication) for the token",
           "format). Compatibility with the last release is checked by `scripts/proto_contract.py breaking`.",
           ""]
    # The hand-written parts (tokens, keys, policy documents), which no proto comment can hold.
    out += [AUTHENTICATION.read_text().rstrip(), ""]
    files = sorted((f for f in fds.file if f.name.startswith("memos/")), key=lambda f: f.name)
    out.append("| file | services |")
    out.append("|---|---|")
    for f in files:
        out.append(f"| `{f.name}` | {', '.join(f'[{s.name}](#{s.name.lower()})' for s in f.service) or '-'} |")
    out.append("")
    for f in files:
        c = _comments(f)
        out += [f"## {f.name}", ""]
        header = next((loc.leading_detached_comments for loc in f.source_code_info.location
                       if tuple(loc.path) == (12,) and loc.leading_detached_comments), None)
        syntax_comment = c.get((12,)) or (" ".join(header[0].split()) if header else "")
        if syntax_comment:
            out += [syntax_comment, ""]
        for si, s in enumerate(f.service):
            out += [f"### {s.name}", "", c.get((6, si), ""), "", "| method | request | response | what it does |",
                    "|---|---|---|---|"]
            for mi, m in enumerate(s.method):
                req = ("stream " if m.client_streaming else "") + m.input_type.lstrip(".").removeprefix("memos.v1.")
                resp = ("stream " if m.server_streaming else "") + m.output_type.lstrip(".").removeprefix("memos.v1.")
                out.append(f"| `{m.name}` | {req} | {resp} | {c.get((6, si, 2, mi), '')} |")
            out.append("")
        for ei, e in enumerate(f.enum_type):
            out += _enum_doc(e, c, (5, ei), e.name)
        for mi, m in enumerate(f.message_type):
            out += _message_doc(m, c, (4, mi), m.name)
    return "\n".join(out).rstrip() + "\n"


def _enum_doc(e, c, path, name) -> list[str]:
    lines = [f"### {name}", "", c.get(path, ""), "", "| value | number | meaning |", "|---|---|---|"]
    lines += [f"| `{v.name}` | {v.number} | {c.get((*path, 2, vi), '')} |" for vi, v in enumerate(e.value)]
    return lines + [""]


def _message_doc(m, c, path, name) -> list[str]:
    lines = [f"### {name}", "", c.get(path, ""), ""]
    if m.field:
        lines += ["| field | number | type | meaning |", "|---|---|---|---|"]
        for fi, f in enumerate(m.field):
            oneof = (f" (one of `{m.oneof_decl[f.oneof_index].name}`)"
                     if f.HasField("oneof_index") and not f.proto3_optional else "")
            lines.append(f"| `{f.name}` | {f.number} | {_type(f)} | {c.get((*path, 2, fi), '')}{oneof} |")
        lines.append("")
    for ni, nested in enumerate(m.nested_type):
        lines += _message_doc(nested, c, (*path, 3, ni), f"{name}.{nested.name}")
    for ni, e in enumerate(m.enum_type):
        lines += _enum_doc(e, c, (*path, 4, ni), f"{name}.{e.name}")
    return lines


# ---- command line ----------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("docs")
    d.add_argument("--check", action="store_true", help="fail if docs/protocol.md is not up to date")
    b = sub.add_parser("breaking")
    b.add_argument("--against", type=Path, help="a release snapshot (default: the newest in protos/release)")
    s = sub.add_parser("snapshot")
    s.add_argument("--ref", default="", help="a git ref (default: the working tree)")
    s.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "docs":
        text = render_docs(descriptor_set(PROTOS))
        if args.check:
            if not DOC.exists() or DOC.read_text() != text:
                print(f"{DOC.relative_to(ROOT)} is out of date: run `make protocol-docs`", file=sys.stderr)
                return 1
            return 0
        DOC.write_text(text)
        return 0
    if args.command == "snapshot":
        snap = snapshot_of_ref(args.ref) if args.ref else snapshot(descriptor_set(PROTOS))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(snap, indent=1, sort_keys=True) + "\n")
        return 0
    against = args.against or latest_release()
    problems = breaking_changes(json.loads(against.read_text()), snapshot(descriptor_set(PROTOS)))
    for p in problems:
        print(f"breaking: {p}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} breaking changes against {against.relative_to(ROOT)}", file=sys.stderr)
        return 1
    print(f"protos are compatible with {against.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
