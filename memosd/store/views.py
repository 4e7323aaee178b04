"""What a reader may see of an event: decided once per reader and event, and shared by all its streams."""

from __future__ import annotations

from dataclasses import replace

from memosd.governance import MemGovernance, Principal
from memosd.store.events import EventKind, EventRecord
from memosd.store.shares import ShareIndex
from memosd.vault import lineage

MAX_READERS = 64  # distinct readers remembered on one event; past them a reader's view is decided each time


def decide(gov: MemGovernance, shares: ShareIndex, p: Principal, record: EventRecord) -> EventRecord:
    """The event as p may see it: with its cube while p's grant covers the cube's kind and p may read it,
    through the topic's share (still published, its authority holding) or by its own grants."""
    cube = record.cube
    if record.kind is EventKind.RETRACTED or (
            cube is not None and gov.can(p, "subscribe", record.topic, cube.kind)
            and (any(gov.share_holds(s, cube) for s in shares.on(record.topic, cube.id))
                 or gov.grants_cube(p, "read", cube))):
        shown = lineage.narrow_known(cube, record.sources, gov.reader(p)) if cube is not None else None
        return record if shown is cube else replace(record, cube=shown, encoded=None)
    return EventRecord(record.topic, record.seq, EventKind.REDACTED, "", 0, "", record.ts)


class ViewMemo:
    """decide(), remembered on the event for each reader. Every stream asks it of every event, and the streams
    of one reader (all the admin's, say) would each decide the same again: at 32 subscribers that was 10-28% of
    the daemon's CPU, by profile. The view handed again is the same object, so its encoding is made once too.

    A view is reused while all it rests on stands: the reader as governance knows it (the Principal: name,
    groups, admin); governance's generation (moved by every grant, revocation and reload, and so with every
    change of the policy epoch, which is not keyed apart); the shares of the cube and of its sources
    (ShareIndex.stamp: any topic's, since a source is read through its own shares); and time, up to
    governance.decided_until() (a second at most, never past a grant's start or end)."""

    def __init__(self, gov: MemGovernance, shares: ShareIndex):
        self.gov, self.shares = gov, shares

    def view(self, p: Principal, record: EventRecord) -> EventRecord:
        gov, stamp = self.gov, self.shares.stamp
        state = (gov.generation, stamp(record.cube_id), record.sources and tuple(map(stamp, record.sources)))
        now = gov.clock()
        memo = record.views
        if memo is None:
            memo = record.views = {}
        else:
            found = memo.get(p)
            if found is not None and found[0] == state and now < found[2]:
                return found[1]
        shown = decide(gov, self.shares, p, record)
        if p in memo or len(memo) < MAX_READERS:
            memo[p] = (state, shown, gov.decided_until(now))
        return shown
