"""A broken stream's call going on on a new one: the pure decisions (shared.resumption)."""

from __future__ import annotations

from typing import get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.resumption import (
    GRANT_TTL_US,
    HEARD_STALE_US,
    Admission,
    AfterStream,
    ReplayFinder,
    admit_stream,
    after_stream,
    break_marking,
    check_holding,
    cleared_responses,
    grant_fields,
    granted_field,
    heard_field,
    last_mark,
)
from shared.streams import (
    META_BROKEN,
    META_DISPOSITION,
    META_ENDED,
    META_RESUME_GRANT,
    META_RESUME_GRANT_EXPIRES_US,
    META_STARTED_US,
    META_STREAM_SID,
    ClearPlayback,
    DtmfPressed,
    HangUp,
    MarkPlayed,
    OutboundChunk,
)

LIVE = {META_STARTED_US: b"1700000000000000", META_STREAM_SID: b"MZold"}


def wire(fields: dict[bytes, bytes | int]) -> dict[bytes, bytes]:
    """An entry as Redis gives it back (every value bytes)."""
    return {k: v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()}


def chunk(item: str, offset_ms: int, ms: int, response: str = "resp_1") -> OutboundChunk:
    audio = bytes((offset_ms + i) % 251 for i in range(ms * 8))
    return OutboundChunk(audio, response, item, offset_ms * 1000, 0)


NOW = 1_700_000_010_000_000
# The stream's edge heard from it a second ago: a healthy stream as far as anyone knows.
HEALTHY = {**LIVE, heard_field("MZold"): str(NOW - 1_000_000).encode()}
BROKEN = {**HEALTHY, **break_marking("MZold")}


@pytest.mark.parametrize(
    ("meta", "status", "answer"),
    [
        ({**BROKEN, META_DISPOSITION: b"hang_up"}, "in-progress", "hang_up"),
        ({**BROKEN, META_DISPOSITION: b"transfer"}, "in-progress", "transfer"),
        ({**BROKEN, META_ENDED: b"stop"}, "in-progress", "ended"),
        (BROKEN, "completed", "ended"),  # the caller is gone: nothing to resume
        ({}, "in-progress", "new_call"),  # the keys are gone: a new call, as before
        (BROKEN, "in-progress", "resume"),  # its edge saw it break
        (HEALTHY, "in-progress", "not_broken"),  # no evidence: no grant for a live stream
        (LIVE, "in-progress", "not_broken"),  # nothing heard of at all: no evidence either
        # Its edge has not heard from it for longer than the bound: killed, or cut off.
        (
            {**LIVE, heard_field("MZold"): str(NOW - HEARD_STALE_US - 1).encode()},
            "in-progress",
            "resume",
        ),
        # Another stream's marks and heartbeat say nothing about this one.
        (
            {**HEALTHY, **break_marking("MZother"), heard_field("MZother"): b"1"},
            "in-progress",
            "not_broken",
        ),
        # The break was answered with a grant already: a second request is hung up.
        ({**BROKEN, granted_field(BROKEN): b"tok"}, "in-progress", "already_granted"),
    ],
)
def test_what_follows_a_stream_that_ended(
    meta: dict[bytes, bytes], status: str, answer: str
) -> None:
    assert after_stream(meta, status, NOW) == answer


def test_a_grant_follows_the_stream_a_break_is_of() -> None:
    """Once resumed, the new stream's own break is a new break: granted once again."""
    resumed = {
        **BROKEN,
        granted_field(BROKEN): b"tok",
        META_STREAM_SID: b"MZnew",
        heard_field("MZnew"): str(NOW).encode(),
    }
    assert after_stream(resumed, "in-progress", NOW) == "not_broken"
    assert after_stream({**resumed, **break_marking("MZnew")}, "in-progress", NOW) == "resume"


def test_a_new_stream_is_the_call_only_with_its_grant() -> None:
    granted = {**LIVE, **grant_fields("tok", NOW)}
    assert admit_stream({}, None, NOW) == "new"
    assert admit_stream({}, "tok", NOW) == "new"  # the call is gone: a new one
    # A new socket reusing the live stream's ids is no re-registration: it needs a grant.
    assert admit_stream(LIVE, None, NOW) == "second_stream"
    assert admit_stream(LIVE, "tok", NOW) == "bad_grant"  # none was given
    assert admit_stream(granted, "other", NOW) == "bad_grant"
    assert admit_stream(granted, "tok", NOW) == "resume"
    assert admit_stream(granted, "tok", NOW + GRANT_TTL_US) == "resume"
    assert admit_stream(granted, "tok", NOW + GRANT_TTL_US + 1) == "expired_grant"
    assert GRANT_TTL_US <= 30_000_000
    assert admit_stream({**granted, META_ENDED: b"socket_closed"}, "tok", NOW) == "ended"
    assert admit_stream({**LIVE, META_RESUME_GRANT: b"tok"}, "tok", NOW) == "expired_grant"


def test_only_the_bridge_that_holds_a_stream_registers_it_again() -> None:
    assert check_holding(b"1", b"MZold", "MZold") == "held"
    assert check_holding(b"1", None, "MZold") == "held"
    assert check_holding(b"1", b"MZnew", "MZold") == "taken_over"
    assert check_holding(None, None, "MZold") == "lost"  # this bridge registers it again
    # whereas a new socket claiming the same ids, on a call Redis still knows, needs a grant
    assert admit_stream(LIVE, None, NOW) == "second_stream"


@given(
    st.dictionaries(
        st.sampled_from(
            [
                META_STARTED_US,
                META_STREAM_SID,
                META_ENDED,
                META_DISPOSITION,
                META_RESUME_GRANT,
                META_BROKEN,
                META_RESUME_GRANT_EXPIRES_US,
                heard_field("MZold"),
                granted_field(LIVE),
            ]
        ),
        st.binary(max_size=12),
    ),
    st.one_of(st.none(), st.text(max_size=12)),
    st.text(max_size=12),
)
def test_any_hash_gives_an_answer_and_never_raises(
    meta: dict[bytes, bytes], grant: str | None, status: str
) -> None:
    assert after_stream(meta, status, NOW) in get_args(AfterStream)
    assert admit_stream(meta, grant, NOW) in get_args(Admission)


def test_the_newest_of_our_marks_is_where_hearing_stopped() -> None:
    ctl = [
        (b"5-0", wire(DtmfPressed("1").encode())),
        (b"4-0", wire(MarkPlayed("not-ours").encode())),
        (b"3-0", wire(MarkPlayed("item_b:300").encode())),
        (b"2-0", wire(MarkPlayed("item_b:200").encode())),
        (b"1-0", {b"k": b"nonsense"}),
    ]
    assert last_mark(ctl) == ("item_b", 300)
    assert last_mark(ctl[:2]) is None
    assert last_mark([]) is None


def test_cleared_replies_are_not_played_again() -> None:
    cmd = [
        (b"1-0", wire(ClearPlayback("resp_1").encode())),
        (b"2-0", {b"k": b"bad"}),
        (b"3-0", wire(HangUp("x").encode())),
        (b"4-0", wire(ClearPlayback("").encode())),
    ]
    assert cleared_responses(cmd) == {"resp_1"}


def test_the_replay_starts_inside_the_chunk_that_was_playing() -> None:
    out = [  # newest first, as XREVRANGE gives them
        (b"4-0", wire(chunk("item_b", 500, 500).encode())),
        (b"3-0", wire(chunk("item_b", 0, 500).encode())),
        (b"2-0", wire(chunk("item_a", 0, 500).encode())),
    ]
    replay = ReplayFinder(("item_b", 300)).older(out)
    assert replay is not None
    assert replay.cursor == b"3-0"  # what follows that chunk comes from the stream
    assert replay.first is not None
    whole = chunk("item_b", 0, 500)
    assert replay.first.audio == whole.audio[300 * 8 :]  # the caller had heard 300 ms of it
    assert replay.first.offset_us == 300_000  # so the new stream's marks go on from there
    assert (replay.first.item_id, replay.first.response_id) == ("item_b", "resp_1")


def test_a_chunk_heard_to_its_end_replays_from_the_next() -> None:
    out = [
        (b"4-0", wire(chunk("item_b", 500, 500).encode())),
        (b"3-0", wire(chunk("item_b", 0, 500).encode())),
    ]
    replay = ReplayFinder(("item_b", 500)).older(out)
    assert replay is not None
    # 500 ms is the second chunk's start: it replays whole, from its first byte.
    assert replay.cursor == b"4-0"
    assert replay.first is not None and replay.first.audio == chunk("item_b", 500, 500).audio


def test_the_marked_chunk_may_be_pages_back_and_nothing_heard_replays_all() -> None:
    finder = ReplayFinder(("item_a", 100))
    assert finder.older([(b"9-0", wire(chunk("item_b", 0, 100).encode()))]) is None
    assert finder.older([(b"8-0", {b"k": b"broken"})]) is None
    assert finder.undecodable == 1
    found = finder.older([(b"7-0", wire(chunk("item_a", 0, 100).encode()))])
    # Heard to its end: nothing of it is left, the replay is what follows it.
    assert found is not None and found.cursor == b"7-0" and found.first is None
    assert finder.exhausted().cursor == b"0-0"
    assert ReplayFinder(None).older([]) is not None
    assert ReplayFinder(None).older([]).cursor == b"0-0"  # type: ignore[union-attr]
