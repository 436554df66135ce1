"""What an operator sees of a call, folded from what the pipeline keeps in Redis.

Pure: the console reads a call's origin (its lifecycle entry, or the outbound call it placed),
its ``meta`` hash and its ``events`` stream, and hands them here; this module decides the call's
state, outcome, transcript, tool calls, barge-ins, errors and reply latencies. Times are epoch
milliseconds, taken from stream entry IDs (Redis's clock when the entry was written) or from the
edge's stamps; an entry ID is ``<ms>-<seq>``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.outbound import DIRECTION_PARAM, OUTBOUND, UNANSWERED_STATUSES
from shared.streams import (
    META_DIALED_FROM,
    META_DIALED_TO,
    META_DIALED_US,
    META_ENDED,
    META_PARAMS,
    META_STARTED_US,
    CallDialed,
    CallEvent,
    CallStarted,
    Fields,
    StreamEntryError,
    decode_event,
)

State = Literal["ringing", "in_progress", "ended"]
Direction = Literal["inbound", "outbound"]

# A stage's end reason -> the outcome an operator reads. Reasons from the tools issue are kept
# as they are; the edge's own ("stop": Twilio ended the stream, which is the caller hanging up
# on an inbound call; "socket_closed": the line dropped) and the worker's failures are folded.
_OUTCOMES = {
    "caller_hung_up": "caller_hung_up",
    "stop": "caller_hung_up",
    "model_hung_up": "model_hung_up",
    "transferred": "transferred",
    "supervisor_hung_up": "supervisor_hung_up",
    "socket_closed": "disconnected",
    "completed": "completed",
    "failed": "failed",
    "abandoned": "failed",
    # Twilio's word on an outbound call that nobody answered (the edge's /call-status)
    "no-answer": "no_answer",
    "busy": "busy",
    "canceled": "canceled",
}
_TERMINAL_STATUSES = UNANSWERED_STATUSES | {"completed"}


def entry_ms(entry_id: bytes | str) -> int:
    """The milliseconds part of a stream entry ID."""
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    head = raw.partition("-")[0]
    return int(head) if head.isdigit() else 0


@dataclass(frozen=True, slots=True)
class Origin:
    """Where the console learnt of a call: its lifecycle entry, or an outbound call it placed."""

    call_sid: str
    direction: Direction
    from_: str
    to: str
    started_ms: int
    entry_id: bytes

    @classmethod
    def from_started(cls, entry_id: bytes, started: CallStarted) -> Origin:
        params = started.custom_parameters
        direction: Direction = "outbound" if params.get(DIRECTION_PARAM) == OUTBOUND else "inbound"
        return cls(
            started.call_sid,
            direction,
            params.get("From", ""),
            params.get("To", ""),
            started.started_us // 1000,
            entry_id,
        )

    @classmethod
    def from_meta(cls, call_sid: str, meta: dict[bytes, bytes]) -> Origin | None:
        """The origin the call's hash records (``None`` when it records none: expired)."""
        if META_STARTED_US in meta:
            try:
                params = json.loads(meta.get(META_PARAMS, b"{}"))
                started_us = int(meta[META_STARTED_US])
            except ValueError:
                return None
            if not isinstance(params, dict):
                params = {}
            params = {str(k): str(v) for k, v in params.items()}
            return cls.from_started(b"0-0", CallStarted(call_sid, "", "", params, started_us))
        if META_DIALED_US in meta:
            try:
                dialed_us = int(meta[META_DIALED_US])
            except ValueError:
                return None
            text = {
                k: meta.get(k, b"").decode("utf-8", "replace")
                for k in (META_DIALED_TO, META_DIALED_FROM)
            }
            dialed = CallDialed(call_sid, text[META_DIALED_TO], text[META_DIALED_FROM], dialed_us)
            return cls.from_dialed(b"0-0", dialed)
        return None

    @classmethod
    def from_dialed(cls, entry_id: bytes, dialed: CallDialed) -> Origin:
        return cls(
            dialed.call_sid,
            "outbound",
            dialed.from_,
            dialed.to,
            dialed.created_us // 1000,
            entry_id,
        )


@dataclass(frozen=True, slots=True)
class TimedEvent:
    entry_id: bytes
    event: CallEvent

    @property
    def at(self) -> int:
        return entry_ms(self.entry_id)


def decode_events(entries: Iterable[tuple[bytes, Fields]]) -> list[TimedEvent]:
    """A call's ``events`` entries, undecodable ones skipped (counted by the caller if it
    likes: they are another stage's bug, not the operator's problem)."""
    out: list[TimedEvent] = []
    for entry_id, fields in entries:
        try:
            out.append(TimedEvent(entry_id, decode_event(fields)))
        except StreamEntryError:
            continue
    return out


@dataclass(slots=True)
class CallSummary:
    call_sid: str
    direction: Direction
    from_: str
    to: str
    state: State
    started_at: int
    ended_at: int | None
    outcome: str | None  # None while the call goes on
    end_reason: str | None  # the stage's own word, as written
    dialect: str | None  # the combo of the call's session (GA, BETA, or LIVE for GPT-Live)
    answered_by: str | None  # Twilio's AMD verdict on an outbound call


def summarize(
    origin: Origin, meta: dict[bytes, bytes], events: Sequence[TimedEvent]
) -> CallSummary:
    """The call's line in the list. ``events`` may be only the stream's first and last few
    entries: the session comes first, the end and what decided it last."""
    dialect = answered_by = end_reason = None
    ended_at: int | None = None
    supervisor = voicemail = False
    status: str | None = None
    for timed in events:
        kind, data = timed.event.kind, timed.event.data
        if kind == "session":
            dialect = dialect or data.get("combo")
        elif kind == "ended":
            end_reason = data.get("reason", "") or end_reason
            ended_at = timed.at
        elif kind == "supervisor" and data.get("action") == "hangup":
            supervisor = True
        elif kind == "amd":
            answered_by = data.get("answered_by")
            voicemail = voicemail or data.get("action") == "voicemail"
        elif kind == "call_status":
            status = data.get("status")
            if status in _TERMINAL_STATUSES and ended_at is None:
                ended_at = timed.at
    meta_ended = meta.get(META_ENDED)
    if end_reason is None and meta_ended is not None:
        end_reason = meta_ended.decode("utf-8", "replace")
    ended = end_reason is not None or status in _TERMINAL_STATUSES
    state: State
    if ended:
        state = "ended"
    elif META_STARTED_US in meta:
        state = "in_progress"
    else:
        state = "ringing"
    outcome = None
    if ended:
        outcome = _outcome(end_reason, status, supervisor=supervisor, voicemail=voicemail)
    return CallSummary(
        origin.call_sid,
        origin.direction,
        origin.from_,
        origin.to,
        state,
        origin.started_ms,
        ended_at,
        outcome,
        end_reason,
        dialect,
        answered_by,
    )


def _outcome(reason: str | None, status: str | None, *, supervisor: bool, voicemail: bool) -> str:
    if supervisor:
        return "supervisor_hung_up"
    if voicemail:
        return "voicemail"
    if status in UNANSWERED_STATUSES and reason is None:
        return status.replace("-", "_")  # busy, no_answer, failed, canceled
    if reason is None:
        return "completed"
    if reason in _OUTCOMES:
        return _OUTCOMES[reason]
    if reason.startswith("realtime_"):
        return "failed"
    return reason


@dataclass(slots=True)
class TranscriptLine:
    role: str  # caller | assistant
    text: str
    at: int


@dataclass(slots=True)
class ToolCall:
    call_id: str
    name: str
    arguments: Any  # the parsed JSON, or the text when it is not JSON
    started_at: int
    output: str | None = None
    outcome: str | None = None  # ok | error | invalid_arguments | timeout | limit; None: running
    duration_ms: float | None = None
    ended_at: int | None = None


@dataclass(slots=True)
class BargeIn:
    at: int
    item_id: str
    heard_ms: int | None


@dataclass(slots=True)
class CallError:
    at: int
    code: str
    message: str


@dataclass(slots=True)
class CallDetail:
    summary: CallSummary
    transcript: list[TranscriptLine] = field(default_factory=list)
    tools: list[ToolCall] = field(default_factory=list)
    barge_ins: list[BargeIn] = field(default_factory=list)
    errors: list[CallError] = field(default_factory=list)
    dtmf: list[dict[str, Any]] = field(default_factory=list)
    latency: dict[str, Any] = field(default_factory=dict)


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def detail(
    origin: Origin,
    meta: dict[bytes, bytes],
    events: Sequence[TimedEvent],
    clears: Sequence[bytes] = (),
) -> CallDetail:
    """The call's full view from all its events. ``clears``: the entry IDs of the worker's
    ``clear`` commands, the barge-ins of a worker that writes no ``barge_in`` events."""
    out = CallDetail(summarize(origin, meta, events))
    tools: dict[str, ToolCall] = {}
    for timed in events:
        kind, data, at = timed.event.kind, timed.event.data, timed.at
        if kind == "transcript":
            role = "caller" if data.get("role") == "caller" else "assistant"
            out.transcript.append(TranscriptLine(role, data.get("text", ""), at))
        elif kind == "tool_call":
            call_id = data.get("call_id", "") or f"unnamed-{len(tools)}"
            tool = ToolCall(
                call_id, data.get("name", ""), _arguments(data.get("arguments", "")), at
            )
            tools[call_id] = tool
            out.tools.append(tool)
        elif kind == "tool_result":
            call_id = data.get("call_id", "")
            found = tools.get(call_id)
            if found is None:  # its call entry was lost (or never written): show the result
                found = ToolCall(call_id, data.get("name", ""), None, at)
                tools[call_id] = found
                out.tools.append(found)
            found.output = data.get("output", "")
            found.outcome = data.get("outcome", "")
            found.duration_ms = _number(data.get("duration_ms"))
            found.ended_at = at
        elif kind == "barge_in":
            heard = _number(data.get("heard_ms"))
            out.barge_ins.append(
                BargeIn(at, data.get("item_id", ""), int(heard) if heard is not None else None)
            )
        elif kind == "error":
            out.errors.append(CallError(at, data.get("code", ""), data.get("message", "")))
        elif kind == "dtmf":
            out.dtmf.append({"digit": data.get("digit", ""), "at": at})
    if not out.barge_ins:
        out.barge_ins = [BargeIn(entry_ms(c), "", None) for c in clears]
    return out


# --- reply latency, from the audio streams -----------------------------------------------------

QUIET_MS = 400  # a caller's turn has ended after this much quiet


def speech_turns(
    frames: Sequence[tuple[int, bool]], quiet_ms: int = QUIET_MS
) -> list[tuple[int, int]]:
    """The caller's turns as (start, end) ms: ``frames`` are (received at ms, loud) in order;
    a turn ends at its last loud frame's end once ``quiet_ms`` of quiet follows."""
    turns: list[tuple[int, int]] = []
    first: int | None = None
    last_loud = 0
    for at, loud in frames:
        if loud:
            if first is None:
                first = at
            last_loud = at
        elif first is not None and at - last_loud >= quiet_ms:
            turns.append((first, last_loud + 20))
            first = None
    if first is not None:
        turns.append((first, last_loud + 20))
    return turns


def speech_ends(frames: Sequence[tuple[int, bool]], quiet_ms: int = QUIET_MS) -> list[int]:
    """When each of the caller's turns ended (see :func:`speech_turns`)."""
    return [end for _, end in speech_turns(frames, quiet_ms)]


def reply_turns(
    chunks: Sequence[tuple[int, str, int]], clears: Sequence[tuple[int, str]] = ()
) -> list[tuple[int, int, str]]:
    """The model's turns as (start, end, response_id) ms as the caller heard them: ``chunks``
    are (written at ms, response_id, mu-law bytes) in order. Twilio plays a reply in real time
    from its first chunk (8 bytes a ms) after the one before it, so a turn lasts as long as its
    audio, cut short by a ``clear`` of its response (a barge-in)."""
    spans: dict[str, list[int]] = {}
    order: list[str] = []
    for at, response, size in chunks:
        if response not in spans:
            spans[response] = [at, 0]
            order.append(response)
        spans[response][1] += size
    cut = {response: at for at, response in clears}
    out: list[tuple[int, int, str]] = []
    playing_until = 0
    for response in order:
        first, size = spans[response]
        start = max(first, playing_until)
        end = start + size // 8
        if response in cut:
            end = max(start, min(end, cut[response]))
        out.append((start, end, response))
        playing_until = end
    return out


def reply_latencies(
    started_ms: int, speech_end_ms: Sequence[int], reply_start_ms: Sequence[int]
) -> dict[str, Any]:
    """Per reply: the delay from the end of the caller's turn it answers to its first audio.
    A reply before the caller said anything is the greeting (timed from the call's start)."""
    replies: list[dict[str, int]] = []
    greeting_ms = None
    ends = sorted(speech_end_ms)
    answered = -1
    for start in sorted(reply_start_ms):
        before = [i for i, end in enumerate(ends) if end <= start]
        if not before:
            if greeting_ms is None and not replies:
                greeting_ms = start - started_ms
            continue
        turn = before[-1]
        if turn == answered:
            continue  # a second reply to the same turn (after a tool call, say)
        answered = turn
        replies.append({"speech_end": ends[turn], "reply_at": start, "ms": start - ends[turn]})
    return {
        "greeting_ms": greeting_ms,
        "first_reply_ms": replies[0]["ms"] if replies else None,
        "replies": replies,
    }
