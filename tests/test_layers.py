"""The layers hold: the daemon's core loads neither gRPC nor torch, and the daemon never imports the client."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("grpc", "torch")
# Imports each module in turn and prints, for each, which heavy packages sys.modules holds after it.
PROBE = """
import importlib, json, sys
seen = []
for name in sys.argv[2:]:
    importlib.import_module(name)
    seen.append([name, sorted(h for h in sys.argv[1].split(",") if h in sys.modules)])
print(json.dumps(seen))
"""


def _modules(package: str, skip: tuple[str, ...]) -> list[str]:
    names = []
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[1:2] and parts[1] in skip:
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _heavy_after_import(names: list[str]) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, ",".join(HEAVY), *names], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    return [f"{name} loads {', '.join(heavy)}" for name, heavy in json.loads(out.stdout) if heavy]


def test_the_daemon_core_loads_neither_grpc_nor_torch():
    # Direct imports are checked in test_contract; this catches the indirect ones (a package __init__ that
    # pulls in a client, say). runtime/ may import torch inside functions, never at import time.
    names = _modules("memosd", skip=("server",))
    assert "memosd.governance.core" in names and "memosd.runtime.lora" in names
    found = _heavy_after_import(names)
    assert not found, f"first to load them: {found[0]}"


def test_the_protocol_formats_load_neither_grpc_nor_torch():
    # memos_mip/v1 is the generated protobuf and gRPC code; the formats beside it serve the daemon's core.
    names = _modules("memos_mip", skip=("v1",))
    assert "memos_mip.auth" in names and "memos_mip.tensor_format" in names
    found = _heavy_after_import(names)
    assert not found, f"first to load them: {found[0]}"


def _imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_daemon_never_imports_the_client_and_the_protocol_imports_neither():
    # The client depends on the protocol package; so does the daemon; neither on the other.
    rules = {"memosd": ("memos_client",), "memos_mip": ("memos_client", "memosd")}
    found = []
    for package, banned in rules.items():
        files = sorted((ROOT / package).rglob("*.py"))
        assert files, f"no {package}/ at the repository root"
        for path in files:
            bad = sorted(n for n in _imported(path) if n.split(".")[0] in banned)
            found += [f"{path.relative_to(ROOT)} imports {n}" for n in bad]
    assert not found, "\n".join(found)


def test_the_client_raises_its_own_errors_where_the_formats_raise_theirs(tmp_path):
    # The formats cannot know the client's error tree; the client translates at its boundary, so that
    # callers catching MemosError (memosctl among them) see what they always saw.
    from memos_client import InvalidArgument
    from memos_client.auth import AgentKey
    from memos_mip import auth

    bad = tmp_path / "bad.key"
    bad.write_text("{}")
    with pytest.raises(auth.KeyFileError, match="not a memosd key file"):
        auth.AgentKey.load(bad)
    with pytest.raises(InvalidArgument, match="not a memosd key file"):
        AgentKey.load(bad)
    with pytest.raises(InvalidArgument, match="does not exist"):
        AgentKey.load(tmp_path / "missing.key")
    key = AgentKey.generate("alice", "d1")
    key.save(tmp_path / "alice.key")
    loaded = AgentKey.load(tmp_path / "alice.key")
    assert isinstance(loaded, AgentKey) and loaded.public_bytes == key.public_bytes
