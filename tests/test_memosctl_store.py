"""memosctl's MemStore commands against the real daemon."""

import json

from memos_client.cli import main


def run(daemon, capsys, *args):
    code = main(["--addr", daemon.address, "--key", str(daemon.admin_key), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_pub_sub_topics_retention(daemon, client, capsys):
    cube = client.put("shared summary", "agents/admin/summaries")
    assert run(daemon, capsys, "pub", "teams/x", cube.id, "--publish-id", "k1")[1].strip() == "teams/x@1"
    code, out, _ = run(daemon, capsys, "--json", "pub", "teams/x", cube.id, "--publish-id", "k1")
    assert json.loads(out) == {"topic": "teams/x", "seq": 1, "duplicate": True}
    run(daemon, capsys, "pub", "teams/x", cube.id)
    code, out, _ = run(daemon, capsys, "--json", "sub", "teams/x", "--count", "2")
    events = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [(e["seq"], e["kind"]) for e in events] == [(1, "published"), (2, "updated")]
    assert events[0]["cube"]["text"] == "shared summary"
    code, out, _ = run(daemon, capsys, "sub", "teams/x", "--after", "1", "--count", "1")
    assert "updated" in out and "shared summary" in out
    # A durable subscription acknowledges what it prints: the next run starts after it.
    code, out, _ = run(daemon, capsys, "--json", "sub", "teams/**", "--durable", "d1", "--count", "1")
    assert code == 0 and json.loads(out)["seq"] == 1
    code, out, _ = run(daemon, capsys, "--json", "sub", "teams/**", "--durable", "d1", "--count", "1")
    assert code == 0 and json.loads(out)["seq"] == 2
    code, out, _ = run(daemon, capsys, "retention", "teams/x", "--max-events", "5")
    assert code == 0 and "5 events" in out
    code, out, _ = run(daemon, capsys, "--json", "topics")
    [topic] = [json.loads(line) for line in out.splitlines()]
    assert topic["name"] == "teams/x" and topic["max_events"] == 5
    code, _, err = run(daemon, capsys, "pub", "teams/x", cube.id, "--retract")
    assert code == 0
    code, _, err = run(daemon, capsys, "pub", "Bad Topic", cube.id)
    assert code == 1 and "topic" in err
