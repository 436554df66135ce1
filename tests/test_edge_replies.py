"""The edge's one reader over every call's reply streams (services/twilio_edge/replies.py)."""

from __future__ import annotations

import asyncio

import fakeredis

from services.twilio_edge.replies import Entries, ReplyReader, ReplyReading
from tests.conftest import wait_for


class Collecting(ReplyReading):
    def __init__(self, name: str, fail: bool = False, start: bytes = b"0-0") -> None:
        self.cmd, self.out = f"{name}:cmd".encode(), f"{name}:out".encode()
        super().__init__({self.cmd: start, self.out: start})
        self.taken: list[tuple[bytes, bytes]] = []  # (stream, value) in the order taken
        self.fail = fail

    def take(self, read: list[tuple[bytes, Entries]]) -> None:
        if self.fail:
            raise RuntimeError("a bug in this call's handling")
        for stream, entries in read:
            for entry_id, fields in entries:
                self.cursors[stream] = entry_id
                self.taken.append((stream, fields[b"v"]))


async def test_one_read_serves_every_call_from_its_own_cursors() -> None:
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    reader = ReplyReader(redis)
    await redis.xadd(b"b:out", {b"v": b"old"}, id=b"5-0")
    a, b = Collecting("a"), Collecting("b", start=b"5-0")  # b resumes past entry 5-0
    reader.add(a)
    reader.add(b)
    for i in range(3):
        await redis.xadd(b"a:out", {b"v": b"a%d" % i})
        await redis.xadd(b"b:out", {b"v": b"b%d" % i})
    await redis.xadd(b"a:cmd", {b"v": b"clear"})
    await wait_for(lambda: len(a.taken) == 4 and len(b.taken) == 3)
    assert [v for _, v in b.taken] == [b"b0", b"b1", b"b2"]  # not the entry before its cursor
    assert [v for s, v in a.taken if s == b"a:out"] == [b"a0", b"a1", b"a2"]
    assert reader.reads < 7 + 2  # fewer reads than entries: calls share them
    reader.remove(a)
    reader.remove(b)
    await wait_for(lambda: reader.calls == 0)
    await reader.stop()


async def test_a_call_failing_on_its_entries_leaves_the_others_alone() -> None:
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    reader = ReplyReader(redis)
    bad, good = Collecting("bad", fail=True), Collecting("good")
    reader.add(bad)
    reader.add(good)
    await redis.xadd(b"bad:out", {b"v": b"x"})
    await redis.xadd(b"good:out", {b"v": b"1"})
    await wait_for(lambda: reader.calls == 1)  # the failing call is dropped
    await redis.xadd(b"good:out", {b"v": b"2"})
    await wait_for(lambda: [v for _, v in good.taken] == [b"1", b"2"])
    await reader.stop()


async def test_no_call_no_read() -> None:
    """With no call registered the edge does not touch Redis for replies (the stack at rest)."""
    redis = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    reader = ReplyReader(redis)
    call = Collecting("c")
    reader.add(call)
    await redis.xadd(b"c:out", {b"v": b"1"})
    await wait_for(lambda: call.taken)
    reader.remove(call)
    # The lane's loop ended with its last call: no task is left to read.
    await wait_for(lambda: reader.calls == 0 and not reader._lanes)
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "edge-replies"]
