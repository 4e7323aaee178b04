"""The protocol as a contract for any language: its reference is current, it stays compatible with the
last release, and nothing in it needs Python to decode."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("proto_contract", ROOT / "scripts" / "proto_contract.py")
contract = importlib.util.module_from_spec(spec)
sys.modules["proto_contract"] = contract
spec.loader.exec_module(contract)

# What a bytes field may hold: each says so in its comment or its message's.
ENCODINGS = ("json", "safetensors", "tar", "ed25519", "blob", "file")


@pytest.fixture(scope="module")
def fds():
    return contract.descriptor_set(contract.PROTOS)


@pytest.fixture(scope="module")
def current(fds):
    return contract.snapshot(fds)


def test_protos_are_compatible_with_the_last_release(current):
    release = contract.latest_release()
    import json

    assert contract.breaking_changes(json.loads(release.read_text()), current) == []


def test_docs_protocol_md_is_generated_from_the_current_protos(fds):
    assert contract.DOC.read_text() == contract.render_docs(fds), "run `make protocol-docs`"


def _break(snapshot: dict, change) -> list[str]:
    new = copy.deepcopy(snapshot)
    change(new)
    return contract.breaking_changes(snapshot, new)


def test_the_check_finds_each_kind_of_breaking_change(current):
    cube = "memos.v1.MemCube"
    fields = lambda s: s["messages"][cube]["fields"]  # noqa: E731
    cases = {
        "removed without reserving": lambda s: fields(s).pop("header"),
        "changed number": lambda s: fields(s)["header"].update(number=99),
        "changed type": lambda s: fields(s)["header"].update(type="string", type_name=""),
        "repeated and singular": lambda s: fields(s)["header"].update(repeated=True),
        "presence": lambda s: fields(s)["header"].update(optional=True),
        "moved from oneof": lambda s: fields(s)["plaintext"].update(oneof=None),
        "was renamed": lambda s: fields(s).update(head=fields(s).pop("header")),
        "message memos.v1.MemCube was removed": lambda s: s["messages"].pop(cube),
        "enum value": lambda s: s["enums"]["memos.v1.MemoryKind"]["values"].pop("MEMORY_KIND_ACTIVATION"),
        "method memos.v1.VaultService.Get was removed": lambda s: s["services"]["memos.v1.VaultService"].pop("Get"),
        "changed server_streaming": lambda s: s["services"]["memos.v1.VaultService"]["Get"].update(server_streaming=True),
        "changed input": lambda s: s["services"]["memos.v1.VaultService"]["Get"].update(input="memos.v1.PutRequest"),
        "service memos.v1.VaultService was removed": lambda s: s["services"].pop("memos.v1.VaultService"),
    }
    for expected, change in cases.items():
        problems = _break(current, change)
        assert any(expected in p for p in problems), (expected, problems)


def test_additions_and_reserved_removals_are_not_breaking(current):
    def grow(s):
        s["messages"]["memos.v1.MemCube"]["fields"]["extra"] = {
            "number": 50, "type": "string", "type_name": "", "repeated": False, "optional": False, "oneof": None}
        s["messages"]["memos.v1.NewThing"] = {"fields": {}, "reserved_numbers": [], "reserved_names": []}
        s["services"]["memos.v1.VaultService"]["NewMethod"] = {
            "input": "a", "output": "b", "client_streaming": False, "server_streaming": False}
    assert _break(current, grow) == []

    def reserve(s):
        m = s["messages"]["memos.v1.GetRequest"]
        number = m["fields"].pop("version")["number"]
        m["reserved_numbers"].append([number, number])
        m["reserved_names"].append("version")
    assert _break(current, reserve) == []


def test_no_field_needs_python_to_decode(fds):
    for f in fds.file:
        if not f.name.startswith("memos/"):
            continue
        comments = {tuple(loc.path): loc.leading_comments.lower() for loc in f.source_code_info.location}
        for mi, m in enumerate(f.message_type):
            for fi, field in enumerate(m.field):
                assert field.type_name != ".google.protobuf.Any", f"{m.name}.{field.name} is an Any"
                if field.type == field.TYPE_BYTES:
                    said = comments.get((4, mi, 2, fi), "") + comments.get((4, mi), "")
                    assert any(e in said for e in ENCODINGS), f"{f.name} {m.name}.{field.name}: say what the bytes are"
