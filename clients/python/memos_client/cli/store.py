"""memosctl's MemStore commands: pub, sub (like tail -f), topics, retention."""

from __future__ import annotations

import sys

from memos_client.cli._terminal import Table, emit, when
from memos_client.client import MemosClient
from memos_client.models import Event


def add_commands(command) -> None:
    """Register the commands with cli.app.build_parser's `command(name, run, help)`."""
    p = command("pub", _pub, "publish a cube's current version to a topic (or retract it)")
    p.add_argument("topic")
    p.add_argument("id", help="the cube to publish")
    p.add_argument("--publish-id", default="", metavar="KEY",
                   help="idempotency key: publishing again with it returns the first event's seq")
    p.add_argument("--retract", action="store_true", help="retract the cube from the topic instead")

    p = command("sub", _sub, "print a topic's events as they come, like tail -f (Ctrl-C to stop)")
    p.add_argument("topic", help='a topic, or "prefix/**" for every topic under prefix')
    p.add_argument("--after", type=int, default=0, metavar="SEQ", help="start after this seq (default: all retained)")
    p.add_argument("--live", action="store_true", help="only events published from now on")
    p.add_argument("--durable", default="", metavar="NAME",
                   help="a durable subscription: the daemon keeps its position; each printed event is acknowledged")
    p.add_argument("--count", type=int, default=0, metavar="N", help="stop after N events")

    p = command("topics", _topics, "list the topics you may publish or subscribe to")
    p.add_argument("prefix", nargs="?", default="", help="only topics under this prefix")

    p = command("retention", _retention, "set how many events (and for how long) a topic keeps (its owner or admin)")
    p.add_argument("topic")
    p.add_argument("--max-events", type=int, default=0, metavar="N", help="keep the newest N events (0: no limit)")
    p.add_argument("--max-age", type=int, default=0, metavar="SECONDS", help="drop older events (0: no limit)")


def _pub(client: MemosClient, args) -> int:
    act = client.retract if args.retract else client.publish
    seq, duplicate = act(args.topic, args.id, publish_id=args.publish_id)
    if args.json:
        emit({"topic": args.topic, "seq": seq, "duplicate": duplicate})
    else:
        print(f"{args.topic}@{seq}{' (already published with this --publish-id)' if duplicate else ''}")
    return 0


def _sub(client: MemosClient, args) -> int:
    sub = client.subscribe(args.topic, args.after, live_only=args.live, durable_name=args.durable)
    table = Table(("SEQ", "TOPIC", "KIND", "TIME", "CUBE", "TEXT"), sizes=((3, 8), (5, 24), (4, 9), (16, 16), (26, 26)),
                  buffer=1)
    shown = 0
    try:
        for event in sub:
            _print_event(event, table, args.json)
            if args.durable:
                sub.ack(event)
            shown += 1
            if shown == args.count:
                break
    finally:
        sub.close()
    return 0


def _print_event(event: Event, table: Table, as_json: bool) -> None:
    if as_json:
        emit(event.to_json())
        return
    text = event.cube.text if event.cube and event.cube.text is not None else ""
    table.row((str(event.seq), event.topic, event.kind.name.lower(), when(event.time), event.cube_id or "-", text))


def _topics(client: MemosClient, args) -> int:
    table = Table(("TOPIC", "OWNER", "EVENTS", "RETAINED", "RETENTION"), sizes=((5, 40), (5, 16), (6, 8), (8, 16)))
    topics = client.topics(args.prefix)
    for t in topics:
        if args.json:
            emit(t.__dict__)
            continue
        limits = [f"{t.max_events} events" if t.max_events else "", f"{t.max_age_seconds}s" if t.max_age_seconds else ""]
        table.row((t.name, t.owner, str(t.last_seq), f"{t.first_seq}-{t.last_seq}" if t.last_seq >= t.first_seq else "-",
                   ", ".join(x for x in limits if x) or "unlimited"))
    table.flush()
    if not topics and not args.json:
        print("no topics you may publish or subscribe to" + (f" under {args.prefix}" if args.prefix else ""),
              file=sys.stderr)
    return 0


def _retention(client: MemosClient, args) -> int:
    t = client.set_retention(args.topic, max_age_seconds=args.max_age, max_events=args.max_events)
    if args.json:
        emit(t.__dict__)
    else:
        print(f"{t.name}: keeps {t.max_events or 'all'} events, {t.max_age_seconds or 'forever'}"
              f"{'s' if t.max_age_seconds else ''}")
    return 0
