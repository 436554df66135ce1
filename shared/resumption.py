"""A call that outlives its Media Stream: what the edge answers when a stream has ended, whether
a new stream is the same call, and where its reply picks up (pure).

Twilio cannot reconnect a stream, but ``<Connect action>`` asks the gateway what to do each time
one ends, whichever edge the request reaches. A stream that ended without the gateway or the
caller ending the call (its edge was killed, a network cut: no ``stop`` from Twilio, no close
from us) leaves the call's keys in Redis with no ``ended`` and no disposition; the edge that gets
the action request then answers a new ``<Connect><Stream>`` carrying a one-time grant
(:data:`RESUME_PARAMETER`), and the edge the new stream reaches takes it as the same call: the
stages never learn of a new call, the worker's Realtime session goes on, and the reply resumes
on the new stream from the caller's last returned mark (:class:`ReplayFinder`).

The grant is what tells a resumption from the second stream that a mis-set TwiML or a replayed
request opens on a call that is still connected, which stays refused. So a grant is given only
for a stream known to have broken (:func:`stream_broke`: its edge saw it end without ``stop``,
or stopped hearing from it), once per break, and it is good for :data:`GRANT_TTL_US` only.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from shared.playback import parse_mark_name
from shared.streams import (
    META_BROKEN,
    META_DISPOSITION,
    META_ENDED,
    META_GRANTED_PREFIX,
    META_HEARD_PREFIX,
    META_RESUME_GRANT,
    META_RESUME_GRANT_EXPIRES_US,
    META_STARTED_US,
    META_STREAM_SID,
    ClearPlayback,
    Fields,
    MarkPlayed,
    OutboundChunk,
    StreamEntryError,
    decode_command,
    decode_control,
    decode_outbound,
)

# The <Parameter> that carries a resumption's grant; the edge removes it from the call's
# parameters, so no stage sees it.
RESUME_PARAMETER = "gw_resume"
# Twilio's CallStatus values for a call whose caller is still on the line.
_LIVE_STATUSES = frozenset({"in-progress", "ringing", "queued"})

# A grant is for the break it answers: Twilio connects the new stream within a second or two.
GRANT_TTL_US = 30_000_000
# The stream's edge writes its heard field about once a second (LOSS_CHECK_S) while Twilio sends
# it 50 messages a second: this long without news, the stream or its edge is gone.
HEARD_STALE_US = 3_000_000

AfterStream = Literal[
    "hang_up", "transfer", "ended", "resume", "new_call", "not_broken", "already_granted"
]
Admission = Literal["new", "resume", "second_stream", "bad_grant", "expired_grant", "ended"]


def _text(meta: Mapping[bytes, bytes], key: bytes) -> str:
    return meta.get(key, b"").decode("utf-8", "replace")


def break_marking(stream_sid: str) -> dict[bytes, bytes]:
    """The fields an edge writes into the call's hash when the stream it holds breaks (it ended
    with no ``stop`` and no close asked for): what makes :func:`stream_broke` true for it. A
    planned hand-over marks its stream the same way."""
    return {META_BROKEN: stream_sid.encode()}


def stream_broke(meta: Mapping[bytes, bytes], now_us: int) -> bool:
    """Whether the call's current stream is known to have broken: its edge marked it
    (:func:`break_marking`), or has not heard from it for :data:`HEARD_STALE_US` (the edge was
    killed, or the network between it and Twilio cut without either side closing)."""
    stream_sid = meta.get(META_STREAM_SID, b"")
    if stream_sid and meta.get(META_BROKEN) == stream_sid:
        return True
    try:
        heard_us = int(meta.get(heard_field(stream_sid.decode("ascii", "replace")), b""))
    except ValueError:
        return False  # never heard of (an older edge's call): no evidence of a break
    return now_us - heard_us > HEARD_STALE_US


def heard_field(stream_sid: str) -> bytes:
    """The hash field where a stream's edge writes when it last heard from Twilio on it."""
    return META_HEARD_PREFIX + stream_sid.encode()


def granted_field(meta: Mapping[bytes, bytes]) -> bytes:
    """The hash field that records the grant given for the current stream's break (set once
    with HSETNX: whoever sets it first gives the grant)."""
    return META_GRANTED_PREFIX + meta.get(META_STREAM_SID, b"")


def after_stream(meta: Mapping[bytes, bytes], call_status: str, now_us: int) -> AfterStream:
    """What follows a call's ended stream, from its keys (``meta``: its hash, empty when gone),
    Twilio's ``CallStatus`` and the time.

    The model's hang-up or transfer first; then a call over on Twilio's side, or one the edge
    saw end (``stop``, a clean close): ``ended``. A live call whose keys are gone cannot be
    resumed and is connected as a new call. One whose stream is known to have broken
    (:func:`stream_broke`) is ``resume``, once per break (``already_granted`` after); one whose
    stream shows no break is ``not_broken``: the edge may wait for the evidence a moment (a
    killed edge's heartbeat going stale), and hangs up if none comes.
    """
    disposition = _text(meta, META_DISPOSITION)
    if disposition == "hang_up":
        return "hang_up"
    if disposition == "transfer":
        return "transfer"
    if call_status not in _LIVE_STATUSES or META_ENDED in meta:
        return "ended"
    if META_STARTED_US not in meta:
        return "new_call"
    if granted_field(meta) in meta:
        return "already_granted"
    if not stream_broke(meta, now_us):
        return "not_broken"
    return "resume"


def new_grant() -> str:
    """A one-time token for the resumed stream's :data:`RESUME_PARAMETER`."""
    return secrets.token_urlsafe(16)


def grant_fields(grant: str, now_us: int) -> dict[bytes, bytes]:
    """What the edge that gives a grant writes into the call's hash."""
    return {
        META_RESUME_GRANT: grant.encode(),
        META_RESUME_GRANT_EXPIRES_US: str(now_us + GRANT_TTL_US).encode(),
    }


def admit_stream(meta: Mapping[bytes, bytes], grant: str | None, now_us: int) -> Admission:
    """Whether a new socket's stream that starts on a call is a new call, the call's
    resumption, or refused.

    ``meta``: the call's hash as the stream starts; ``grant``: its :data:`RESUME_PARAMETER`
    (``None`` without one). A call Redis no longer knows is new whatever the stream says. A call
    that has started takes another stream only with its grant, whatever that stream's streamSid:
    a new socket is never the call's own stream re-registering (the bridge that holds a stream
    registers it again itself, when Redis lost it), so reusing the live stream's ids proves
    nothing.
    """
    if META_STARTED_US not in meta:
        return "new"
    if grant is None:
        return "second_stream"
    expected = _text(meta, META_RESUME_GRANT)
    if not expected or not secrets.compare_digest(expected.encode(), grant.encode()):
        return "bad_grant"
    try:
        expires_us = int(meta.get(META_RESUME_GRANT_EXPIRES_US, b""))
    except ValueError:
        return "expired_grant"
    if now_us > expires_us:
        return "expired_grant"
    if META_ENDED in meta:
        return "ended"
    return "resume"


Holding = Literal["held", "taken_over", "lost"]


def check_holding(started_us: bytes | None, holder: bytes | None, stream_sid: str) -> Holding:
    """What the bridge that holds ``stream_sid`` finds when it checks its call (the hash's
    ``started_us`` and ``stream_sid``): still its own (``held``), gone on on another stream
    after a resumption (``taken_over``: it leaves the call), or lost by Redis (``lost``: this
    very bridge registers it again, under the ids it holds; a new socket that claims them gets
    no such right, see :func:`admit_stream`)."""
    if started_us is None:
        return "lost"
    if holder is not None and holder != stream_sid.encode():
        return "taken_over"
    return "held"


def last_mark(newest_first: Iterable[tuple[bytes, Fields]]) -> tuple[str, int] | None:
    """The newest of our marks the caller's phone returned, ``(item_id, end_ms)``, among a
    call's ``ctl`` entries given newest first; ``None`` when there is none among them."""
    for _, fields in newest_first:
        try:
            entry = decode_control(fields)
        except StreamEntryError:
            continue
        if isinstance(entry, MarkPlayed):
            parsed = parse_mark_name(entry.name)
            if parsed is not None:
                return parsed
    return None


def cleared_responses(commands: Iterable[tuple[bytes, Fields]]) -> set[str]:
    """The responses a barge-in cleared, from a call's ``cmd`` entries: none of them replays."""
    cleared: set[str] = set()
    for _, fields in commands:
        try:
            command = decode_command(fields)
        except StreamEntryError:
            continue
        if isinstance(command, ClearPlayback) and command.response_id:
            cleared.add(command.response_id)
    return cleared


@dataclass(frozen=True, slots=True)
class Replay:
    """Where the resumed stream's reply starts: ``first`` (the rest of the chunk the caller was
    hearing, if any of it is left), then the ``out.pcmu`` entries after ``cursor``."""

    cursor: bytes
    first: OutboundChunk | None = None


@dataclass
class ReplayFinder:
    """Finds the reply chunk holding the last returned mark in ``out.pcmu`` read newest first,
    a page at a time: what the caller heard ends there, and the replay starts after it.

    ``mark``: :func:`last_mark` (``None``: nothing was ever heard, so the whole reply replays).
    """

    mark: tuple[str, int] | None
    undecodable: int = field(default=0)

    def older(self, page: Iterable[tuple[bytes, Fields]]) -> Replay | None:
        """Look through a page of entries (newest first); ``None`` means read the next page."""
        if self.mark is None:
            return Replay(b"0-0")
        item_id, end_ms = self.mark
        end_us = end_ms * 1000
        for entry_id, fields in page:
            try:
                chunk = decode_outbound(fields)
            except StreamEntryError:
                self.undecodable += 1
                continue
            if not isinstance(chunk, OutboundChunk) or chunk.item_id != item_id:
                continue
            if chunk.offset_us > end_us:
                continue  # after the mark: unheard
            heard_bytes = (end_us - chunk.offset_us) // 125  # 8 bytes a ms
            if heard_bytes >= len(chunk.audio):
                return Replay(entry_id)
            rest = OutboundChunk(
                chunk.audio[heard_bytes:],
                chunk.response_id,
                chunk.item_id,
                chunk.offset_us + heard_bytes * 125,
                chunk.stamp_us,
            )
            return Replay(entry_id, rest)
        return None

    def exhausted(self) -> Replay:
        """The stream holds no chunk of the marked item (trimmed away): replay what is there."""
        return Replay(b"0-0")
