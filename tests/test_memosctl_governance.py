"""memosctl's governance commands against the real daemon."""

import json

import pytest

from memos_client.cli import main
from tests.existence import UNKNOWN_ID


@pytest.fixture
def ctl(daemon, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def run(*args: str, key: str | None = None):
        code = main(["--addr", daemon.address, "--key", key or str(daemon.admin_key), *args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_agents_grants_policies_and_audit(ctl, tmp_path):
    code, out, _ = ctl("agent", "add", "alice")
    assert code == 0 and (tmp_path / "alice.key").stat().st_mode & 0o777 == 0o600
    assert ctl("agent", "add", "bob", "-g", "research", "--out", "b.key")[0] == 0
    code, out, _ = ctl("--json", "agent", "ls")
    assert {json.loads(line)["name"] for line in out.splitlines()} == {"admin", "alice", "bob"}

    code, out, _ = ctl("put", "for bob", "-n", "agents/alice/shared", key="alice.key")
    cube_id = out.strip()
    assert ctl("get", cube_id, key="b.key")[0] == 1
    code, out, _ = ctl("grant", "bob", "read", "agents/alice/shared/**", key="alice.key")
    policy_id = out.strip()
    assert code == 0 and policy_id.startswith("pol_")
    assert ctl("get", cube_id, key="b.key")[0] == 0
    code, out, _ = ctl("--json", "policy", "show", policy_id)
    shown = json.loads(out)
    assert shown["subject"] == "agent:bob" and shown["signature_verified"] is True
    code, _, err = ctl("grant", "bob", "delete", "agents/alice/**", key="b.key")
    assert code == 1 and "may not grant" in err
    code, _, err = ctl("grant", "bob", "fly", "teams/x")
    assert code == 1 and "unknown actions" in err
    assert ctl("policy", "revoke", policy_id, key="alice.key")[0] == 0
    # Once bob may not read it, the cube is to him as an id that names none, word for word.
    code, _, err = ctl("get", cube_id, key="b.key")
    unknown = ctl("get", UNKNOWN_ID, key="b.key")
    assert code == 1 and f"no cube with id {cube_id}" in err
    assert (code, err.replace(cube_id, "<id>")) == (unknown[0], unknown[2].replace(UNKNOWN_ID, "<id>"))

    code, out, _ = ctl("--json", "whoami", key="b.key")
    assert json.loads(out)["name"] == "bob" and json.loads(out)["groups"] == ["research"]
    code, out, _ = ctl("audit", "verify")
    assert code == 0 and "intact" in out
    code, out, _ = ctl("--json", "audit", "--limit", "3")
    assert code == 0 and len(out.splitlines()) == 3
    assert ctl("agent", "revoke", "bob")[0] == 0
    code, _, err = ctl("ls", key="b.key")
    assert code == 1 and "revoked" in err
    code, _, err = ctl("agent", "ls", key="alice.key")
    assert code == 1 and "only the admin" in err


def test_global_options_after_an_action(ctl):
    code, out, _ = ctl("agent", "ls", "--json")
    assert code == 0 and json.loads(out.splitlines()[0])["name"] == "admin"
    code, out, _ = ctl("policy", "ls", "--json")
    assert code == 0
