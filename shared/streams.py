"""The pipeline's Redis stream contract: every key, who writes it, who reads it, and its entries.

One call crosses three processes that meet only here::

    edge --in.pcmu--> transcoder --in.pcm--> worker --(OpenAI)--> worker --out.pcm--> transcoder
    edge <--out.pcmu-- transcoder                                   worker --cmd--> edge
    edge --ctl--> worker            worker --events--> (operators, transcripts)
    edge --lifecycle (gw:calls)--> transcoder group, worker group (call assignment)

* ``gw:calls`` (lifecycle): one ``CallStarted`` per call, written by the edge. Each stage reads it
  through its own consumer group, so each call is owned by exactly one instance of each stage
  (see :mod:`shared.runtime.claims`).
* ``call:{CA..}:in.pcmu``: the caller's audio as Twilio sent it (raw mu-law bytes, one entry per
  20 ms frame), then one ``end`` entry when the call stops. Edge -> transcoder.
* ``call:{CA..}:in.pcm``: the same frames as PCM16 24 kHz, **under the same entry IDs**.
  Transcoder -> worker. Mirroring IDs makes the transcoder's output idempotent: a frame handled
  twice after a crash is refused by Redis (IDs must grow), so the model gets each frame once.
* ``call:{CA..}:out.pcm``: the model's audio deltas (PCM16 24 kHz) with their response and item
  IDs and their offset within the item. Worker -> transcoder.
* ``call:{CA..}:out.pcmu``: the same chunks as mu-law 8 kHz, same IDs. Transcoder -> edge.
* ``call:{CA..}:ctl``: what Twilio tells about the caller: played marks, DTMF. Edge -> worker.
* ``call:{CA..}:cmd``: what the worker asks of the edge: clear, hang-up. Worker -> edge.
* ``call:{CA..}:events``: transcripts, errors, session changes; kept after the call for reading
  back.
* ``call:{CA..}:meta``: a hash: the call's start details and progress cursors.

Every per-call key carries the CallSid as a hash tag so that a Redis Cluster keeps a call in one
slot. Audio travels as raw bytes fields, never base64 or JSON. All decoding raises
:class:`StreamEntryError`; a shell counts it, logs it and skips the entry.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeGuard, get_args

LIFECYCLE_STREAM = b"gw:calls"  # the single partition (LIFECYCLE_PARTITIONS=1)
TRANSCODER_GROUP = b"transcoder"
WORKER_GROUP = b"worker"
LIFECYCLE_MAXLEN = 100_000


def lifecycle_streams(partitions: int) -> list[bytes]:
    """Every lifecycle partition's key; each carries its own hash tag (its own cluster slot)."""
    if partitions <= 1:
        return [LIFECYCLE_STREAM]
    return [f"gw:calls:{{{p}}}".encode() for p in range(partitions)]


def lifecycle_stream_for(call_sid: str, partitions: int) -> bytes:
    """The partition a call's start goes to (stable, spread evenly by CRC32 of the CallSid)."""
    if partitions <= 1:
        return LIFECYCLE_STREAM
    return f"gw:calls:{{{zlib.crc32(call_sid.encode()) % partitions}}}".encode()


def handover_stream(stream: bytes, group: bytes) -> bytes:
    """Where an instance of ``group`` that stops says which of ``stream``'s entries it handed
    over, so that a peer blocked on ``stream`` wakes and claims them at once
    (:mod:`shared.runtime.claims`). In ``stream``'s cluster slot (its hash tag, or its whole
    name as the tag), so one group read covers both."""
    # Redis's rule: the first "{" and the first "}" after it, if anything lies between.
    start = stream.find(b"{")
    end = stream.find(b"}", start + 1) if start >= 0 else -1
    tag = stream[start + 1 : end] if 0 <= start < end - 1 else stream
    return b"gw:handover:{" + tag + b"}:" + group


HANDOVER_MAXLEN = 10_000
# Each worker's last heartbeat (a sorted set: consumer name -> wall-clock ms), so that a
# draining worker knows whether a peer is alive to take its calls (:mod:`shared.drain`).
WORKERS_ALIVE = b"gw:alive:worker"


def encode_handover(entry_id: bytes) -> dict[bytes, bytes]:
    return {b"k": b"handover", b"e": entry_id}


def decode_handover(fields: Fields) -> bytes:
    """The handed-over entry's ID."""
    if _kind(fields) != b"handover":
        raise StreamEntryError("unknown_kind", repr(_kind(fields)[:20]))
    entry_id = fields.get(b"e", b"")
    if not re.fullmatch(rb"\d{1,20}-\d{1,20}", entry_id):
        raise StreamEntryError("bad_entry_id", repr(entry_id[:40]))
    return entry_id


# Twilio's CallSids are CA + 32 hex digits; we accept any short token without hash-tag braces so
# a malformed SID can never move a call's keys into another slot or key space.
_CALL_SID_RE = re.compile(r"[A-Za-z0-9_-]{2,64}")

Fields = Mapping[bytes, bytes]


class StreamEntryError(ValueError):
    """An entry that does not decode; carries a short ``reason`` for the rejection counter."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def valid_call_sid(call_sid: str) -> bool:
    return bool(_CALL_SID_RE.fullmatch(call_sid))


@dataclass(frozen=True, slots=True)
class CallKeys:
    """The Redis keys of one call; construct with :meth:`for_call`."""

    call_sid: str
    in_pcmu: bytes
    in_pcm: bytes
    out_pcm: bytes
    out_pcmu: bytes
    ctl: bytes
    cmd: bytes
    events: bytes
    meta: bytes

    @classmethod
    def for_call(cls, call_sid: str) -> CallKeys:
        if not valid_call_sid(call_sid):
            raise StreamEntryError("bad_call_sid", repr(call_sid[:80]))
        tag = f"call:{{{call_sid}}}:"

        def key(name: str) -> bytes:
            return (tag + name).encode()

        return cls(
            call_sid=call_sid,
            in_pcmu=key("in.pcmu"),
            in_pcm=key("in.pcm"),
            out_pcm=key("out.pcm"),
            out_pcmu=key("out.pcmu"),
            ctl=key("ctl"),
            cmd=key("cmd"),
            events=key("events"),
            meta=key("meta"),
        )

    def capped(self, key: bytes) -> bool:
        """Whether writes to ``key`` are trimmed to ``STREAM_MAXLEN``: every stream but
        ``events``, the call's record, which is never trimmed by count, only expired with the
        call (``CALL_RETENTION_SECONDS`` after its end)."""
        return key != self.events

    def all(self) -> tuple[bytes, ...]:
        return (
            self.in_pcmu,
            self.in_pcm,
            self.out_pcm,
            self.out_pcmu,
            self.ctl,
            self.cmd,
            self.events,
            self.meta,
        )


# --- helpers -------------------------------------------------------------------------------------


def _int(fields: Fields, name: bytes) -> int:
    raw = fields.get(name)
    if raw is None:
        raise StreamEntryError("missing_field", name.decode())
    try:
        return int(raw)
    except ValueError:
        raise StreamEntryError("bad_field", f"{name.decode()}={raw[:40]!r}") from None


def _str(fields: Fields, name: bytes, default: str | None = None) -> str:
    raw = fields.get(name)
    if raw is None:
        if default is not None:
            return default
        raise StreamEntryError("missing_field", name.decode())
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise StreamEntryError("bad_field", f"{name.decode()} is not UTF-8") from None


def _kind(fields: Fields) -> bytes:
    kind = fields.get(b"k")
    if kind is None:
        raise StreamEntryError("missing_field", "k")
    return kind


# --- audio entries -------------------------------------------------------------------------------

AUDIO = b"a"
END = b"e"


@dataclass(frozen=True, slots=True)
class InboundFrame:
    """One 20 ms frame of the caller's audio (``in.pcmu`` as mu-law, ``in.pcm`` as PCM16 24 kHz).

    ``stamp_us`` is the wall-clock time the edge received it from Twilio, carried through so the
    worker can measure the edge -> OpenAI hop per call.
    """

    audio: bytes
    sequence: int
    timestamp_ms: int
    stamp_us: int

    def encode(self) -> dict[bytes, bytes | int]:
        return {
            b"k": AUDIO,
            b"a": self.audio,
            b"s": self.sequence,
            b"t": self.timestamp_ms,
            b"u": self.stamp_us,
        }

    def with_audio(self, audio: bytes) -> dict[bytes, bytes | int]:
        """This frame's encoding with other audio (the transcoder's output), other fields kept."""
        return {
            b"k": AUDIO,
            b"a": audio,
            b"s": self.sequence,
            b"t": self.timestamp_ms,
            b"u": self.stamp_us,
        }


@dataclass(frozen=True, slots=True)
class OutboundChunk:
    """One piece of the model's reply (``out.pcm`` as PCM16 24 kHz, ``out.pcmu`` as mu-law).

    ``offset_us`` is where this chunk starts within the item's audio: the edge turns it into the
    names of the marks it asks Twilio to return, which tell the worker what the caller has heard.
    ``stamp_us`` is when the worker received the delta (for the OpenAI -> edge hop).
    """

    audio: bytes
    response_id: str
    item_id: str
    offset_us: int
    stamp_us: int

    def encode(self) -> dict[bytes, bytes | int]:
        return {
            b"k": AUDIO,
            b"a": self.audio,
            b"r": self.response_id.encode(),
            b"i": self.item_id.encode(),
            b"o": self.offset_us,
            b"u": self.stamp_us,
        }


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last entry of an audio stream: the call is over for the stages downstream."""

    reason: str

    def encode(self) -> dict[bytes, bytes | int]:
        return {b"k": END, b"r": self.reason.encode()}


def decode_inbound(fields: Fields) -> InboundFrame | StreamEnd:
    kind = _kind(fields)
    if kind == END:
        return StreamEnd(_str(fields, b"r", ""))
    if kind != AUDIO:
        raise StreamEntryError("unknown_kind", repr(kind[:20]))
    audio = fields.get(b"a")
    if audio is None:
        raise StreamEntryError("missing_field", "a")
    return InboundFrame(audio, _int(fields, b"s"), _int(fields, b"t"), _int(fields, b"u"))


def decode_outbound(fields: Fields) -> OutboundChunk | StreamEnd:
    kind = _kind(fields)
    if kind == END:
        return StreamEnd(_str(fields, b"r", ""))
    if kind != AUDIO:
        raise StreamEntryError("unknown_kind", repr(kind[:20]))
    audio = fields.get(b"a")
    if audio is None:
        raise StreamEntryError("missing_field", "a")
    return OutboundChunk(
        audio,
        _str(fields, b"r"),
        _str(fields, b"i"),
        _int(fields, b"o"),
        _int(fields, b"u"),
    )


# --- control (edge -> worker) and commands (worker -> edge) -----------------------------------


@dataclass(frozen=True, slots=True)
class MarkPlayed:
    """Twilio returned a mark: the caller has heard the audio sent before it."""

    name: str

    def encode(self) -> dict[bytes, bytes | int]:
        return {b"k": b"mark", b"n": self.name.encode()}


@dataclass(frozen=True, slots=True)
class DtmfPressed:
    digit: str

    def encode(self) -> dict[bytes, bytes | int]:
        return {b"k": b"dtmf", b"d": self.digit.encode()}


ToolOutcome = Literal["ok", "error", "invalid_arguments", "timeout", "limit"]
_TOOL_OUTCOMES: frozenset[str] = frozenset(get_args(ToolOutcome))


def _is_tool_outcome(outcome: str) -> TypeGuard[ToolOutcome]:
    return outcome in _TOOL_OUTCOMES


@dataclass(frozen=True, slots=True)
class ToolResult:
    """A tool's answer for the call's worker (written to the call's ``ctl`` by the tool runner):
    ``output`` is the text the model gets as the call's ``function_call_output``."""

    call_id: str
    name: str
    output: str
    outcome: ToolOutcome
    duration_ms: int

    def encode(self) -> dict[bytes, bytes | int]:
        return {
            b"k": b"tool_result",
            b"i": self.call_id.encode(),
            b"n": self.name.encode(),
            b"o": self.output.encode(),
            b"r": self.outcome.encode(),
            b"t": self.duration_ms,
        }


Control = MarkPlayed | DtmfPressed | ToolResult


def decode_control(fields: Fields) -> Control:
    kind = _kind(fields)
    if kind == b"mark":
        return MarkPlayed(_str(fields, b"n"))
    if kind == b"dtmf":
        return DtmfPressed(_str(fields, b"d"))
    if kind == b"tool_result":
        outcome = _str(fields, b"r")
        if not _is_tool_outcome(outcome):
            raise StreamEntryError("bad_field", f"tool outcome {outcome[:20]!r}")
        return ToolResult(
            _str(fields, b"i"),
            _str(fields, b"n"),
            _str(fields, b"o", ""),
            outcome,
            _int(fields, b"t"),
        )
    raise StreamEntryError("unknown_kind", repr(kind[:20]))


# --- tool calls (worker -> tool runner) ------------------------------------------------------

TOOL_CALLS_STREAM = b"gw:tools"
TOOL_RUNNER_GROUP = b"tool_runner"
TOOL_CALLS_MAXLEN = 100_000
# End-of-call reports to deliver (POST_CALL_WEBHOOK_URL): one entry per ended call, written by
# the worker, taken by the tool runners' group (shared.call_report has the entry's codec).
REPORTS_STREAM = b"gw:reports"
REPORTS_GROUP = b"reporters"
REPORTS_MAXLEN = 100_000
MAX_TOOL_ARGUMENTS_BYTES = 16 * 1024  # the model's arguments, as JSON text
MAX_TOOL_OUTPUT_BYTES = 64 * 1024  # a tool's answer, as the model gets it


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call of the model's for the tool runner (``gw:tools``, one consumer group: any
    instance may run any call; one that dies has its pending calls taken over)."""

    call_sid: str
    stream_sid: str
    call_id: str
    name: str
    arguments: str  # JSON text, as the model wrote it
    caller: str = ""  # From
    called: str = ""  # To
    parameters: Mapping[str, str] = field(default_factory=dict)  # the call's <Parameter>s

    def encode(self) -> dict[bytes, bytes | int]:
        return {
            b"k": b"tool_call",
            b"c": self.call_sid.encode(),
            b"s": self.stream_sid.encode(),
            b"i": self.call_id.encode(),
            b"n": self.name.encode(),
            b"a": self.arguments.encode(),
            b"f": self.caller.encode(),
            b"t": self.called.encode(),
            b"p": json.dumps(dict(self.parameters), separators=(",", ":")).encode(),
        }


def _call_sid_and_parameters(fields: Fields) -> tuple[str, dict[str, str]]:
    """An entry's CallSid (``c``) and a call's ``<Parameter>``s (``p``, a JSON string map)."""
    call_sid = _str(fields, b"c")
    if not valid_call_sid(call_sid):
        raise StreamEntryError("bad_call_sid", repr(call_sid[:80]))
    try:
        params = json.loads(fields.get(b"p", b"{}"))
    except ValueError:
        raise StreamEntryError("bad_field", "p is not JSON") from None
    if not isinstance(params, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in params.items()
    ):
        raise StreamEntryError("bad_field", "p is not a string map")
    return call_sid, params


def decode_tool_call(fields: Fields) -> ToolCall:
    kind = _kind(fields)
    if kind != b"tool_call":
        raise StreamEntryError("unknown_kind", repr(kind[:20]))
    call_sid, params = _call_sid_and_parameters(fields)
    return ToolCall(
        call_sid,
        _str(fields, b"s", ""),
        _str(fields, b"i"),
        _str(fields, b"n"),
        _str(fields, b"a", ""),
        _str(fields, b"f", ""),
        _str(fields, b"t", ""),
        params,
    )


@dataclass(frozen=True, slots=True)
class ClearPlayback:
    """Barge-in: discard the reply audio the caller has not heard yet.

    Chunks of ``response_id`` still on their way (in Redis, at the transcoder) are dropped too.
    """

    response_id: str

    def encode(self) -> dict[bytes, bytes | int]:
        return {b"k": b"clear", b"r": self.response_id.encode()}


@dataclass(frozen=True, slots=True)
class HangUp:
    reason: str

    def encode(self) -> dict[bytes, bytes | int]:
        return {b"k": b"hangup", b"r": self.reason.encode()}


Command = ClearPlayback | HangUp


def decode_command(fields: Fields) -> Command:
    kind = _kind(fields)
    if kind == b"clear":
        return ClearPlayback(_str(fields, b"r", ""))
    if kind == b"hangup":
        return HangUp(_str(fields, b"r", ""))
    raise StreamEntryError("unknown_kind", repr(kind[:20]))


# --- events (transcripts, errors, session changes) ------------------------------------------

EventKind = Literal[
    "transcript",
    "error",
    "session",
    "ended",
    "dtmf",
    "tool_call",
    "tool_result",
    "barge_in",
    "amd",
    "call_status",
    "supervisor",
    "stream_resumed",
    "usage",
    "mcp_call",
    "idle",
]


@dataclass(frozen=True, slots=True)
class CallEvent:
    """Something worth keeping about a call, readable after it ends (``events`` stream).

    ``data`` holds short text fields: for a transcript ``role`` (caller|assistant), ``text`` and
    ``item_id``; for an error ``code`` and ``message``; for a session ``combo``; for the end
    ``reason`` (caller_hung_up, model_hung_up, transferred, supervisor_hung_up, failed, or a
    stage's own: stop, socket_closed, realtime_*, ...); for a DTMF key ``digit``; for a
    resumed stream (written by the edge) ``stream_sid``, the new one, and ``mark``, the last
    mark the caller's phone had returned, from which the reply plays on.

    Written by the worker's tools: ``tool_call`` {call_id, name, arguments (JSON text)} and
    ``tool_result`` {call_id, name, outcome (ok|error|invalid_arguments|timeout|limit),
    duration_ms, output}; ``barge_in`` {item_id, heard_ms}. Written by the edge for an outbound
    call: ``amd`` {answered_by, action (voicemail|agent)} and ``call_status`` {status}, Twilio's
    word on the call (queued, ringing, in-progress, completed, busy, no-answer, failed,
    canceled). Written by the console: ``supervisor`` {action: hangup}. Written by the worker
    for each response that used tokens: ``usage`` {model, response_id, and the counts by kind of
    :mod:`shared.usage` (text_in, text_cached, audio_in, audio_cached, image_in, image_cached,
    text_out, audio_out), those above 0 only}; ``mcp_call`` {item_id, server, name, arguments,
    outcome (approved|refused: the gateway's answer to an approval request; ok|error: the call
    the server ran), output, error, duration_ms}; ``idle`` {timeouts (since the caller last
    spoke), hang_up (1: one too many, the goodbye follows)}.
    """

    kind: EventKind
    data: dict[str, str] = field(default_factory=dict)

    def encode(self) -> dict[bytes, bytes | int]:
        out: dict[bytes, bytes | int] = {b"k": self.kind.encode()}
        for name, value in self.data.items():
            out[b"f:" + name.encode()] = value.encode()
        return out


_EVENT_KINDS: frozenset[str] = frozenset(get_args(EventKind))


def _is_event_kind(kind: str) -> TypeGuard[EventKind]:
    return kind in _EVENT_KINDS


def decode_event(fields: Fields) -> CallEvent:
    kind = _str(fields, b"k")
    if not _is_event_kind(kind):
        raise StreamEntryError("unknown_kind", repr(kind[:20]))
    data: dict[str, str] = {}
    for name, value in fields.items():
        if name.startswith(b"f:"):
            try:
                data[name[2:].decode()] = value.decode()
            except UnicodeDecodeError:
                raise StreamEntryError("bad_field", "event field is not UTF-8") from None
    return CallEvent(kind, data)


# --- lifecycle -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallStarted:
    """A call the edge accepted; every stage's consumer group hands it to one of its instances."""

    call_sid: str
    stream_sid: str
    account_sid: str
    custom_parameters: dict[str, str]
    started_us: int

    def encode(self) -> dict[bytes, bytes | int]:
        return {
            b"k": b"started",
            b"c": self.call_sid.encode(),
            b"s": self.stream_sid.encode(),
            b"a": self.account_sid.encode(),
            b"p": json.dumps(self.custom_parameters, separators=(",", ":")).encode(),
            b"u": self.started_us,
        }


def decode_lifecycle(fields: Fields) -> CallStarted:
    kind = _kind(fields)
    if kind != b"started":
        raise StreamEntryError("unknown_kind", repr(kind[:20]))
    call_sid, params = _call_sid_and_parameters(fields)
    return CallStarted(
        call_sid, _str(fields, b"s", ""), _str(fields, b"a", ""), params, _int(fields, b"u")
    )


# --- outbound calls (console -> people) ----------------------------------------------------------

# One entry per outbound call the console placed through Twilio's REST API, before Twilio has
# even rung the number: a call that is never answered has no Media Stream, so it would otherwise
# leave no trace for the call list. Written by the console, read by the console.
DIALED_STREAM = b"gw:dialed"


@dataclass(frozen=True, slots=True)
class CallDialed:
    """An outbound call the console asked Twilio to place."""

    call_sid: str
    to: str
    from_: str
    created_us: int

    def encode(self) -> dict[bytes, bytes | int]:
        return {
            b"k": b"dialed",
            b"c": self.call_sid.encode(),
            b"t": self.to.encode(),
            b"f": self.from_.encode(),
            b"u": self.created_us,
        }


def decode_dialed(fields: Fields) -> CallDialed:
    kind = _kind(fields)
    if kind != b"dialed":
        raise StreamEntryError("unknown_kind", repr(kind[:20]))
    call_sid = _str(fields, b"c")
    if not valid_call_sid(call_sid):
        raise StreamEntryError("bad_call_sid", repr(call_sid[:80]))
    return CallDialed(call_sid, _str(fields, b"t", ""), _str(fields, b"f", ""), _int(fields, b"u"))


# The recorder's consumer group, on the lifecycle stream (which instance records which call) and
# on each call's in.pcmu, out.pcmu, ctl and cmd (what it has saved: entries are acknowledged only
# once they are on disk, so a restarted recorder re-reads exactly the rest).
RECORDER_GROUP = b"recorder"

# --- call meta (a hash) ------------------------------------------------------------------------

META_ENDED = b"ended"  # set by the edge (to the reason) when its stream ends
# Written by the edge alone, when it registers the call: other stages update the hash too (and
# a stage that has not yet noticed Redis restarting empty recreates it), so the call is lost
# exactly when this field is.
META_STARTED_US = b"started_us"
META_WORKER_CURSOR = b"worker_in"  # last in.pcm entry the worker sent to OpenAI
META_CONTROL_CURSOR = b"worker_ctl"  # last ctl entry the worker acted on
META_GREETED = b"greeted"  # the greeting was asked for once: a new session does not greet again
# Set by the edge when it registered a call again after Redis lost it: the call is well under
# way (no greeting) and what was said before is gone.
META_REANNOUNCED = b"reannounced"
META_STREAM_SID = b"stream_sid"
# How the model ended the call, for the edge that answers Twilio's <Connect action> request:
# "hang_up", or "transfer" with META_TRANSFER_TO the destination. Unset: the stream ended
# without the model asking (the caller hung up, a fault).
META_DISPOSITION = b"disposition"
META_TRANSFER_TO = b"transfer_to"
# Written by the edge that answered a <Connect action> for a stream that broke: the one-time
# grant the new stream must present to be taken as the same call (see shared.resumption).
META_RESUME_GRANT = b"resume_grant"
META_RESUMES = b"resumes"  # how many times the call's stream was resumed
# When the grant expires (wall clock, µs): a grant is for the break it answered, not for later.
META_RESUME_GRANT_EXPIRES_US = b"resume_grant_expires_us"
# Written once per break by the edge that grants its resumption (HSETNX, its name holds the
# broken stream's streamSid): a second <Connect action> for the same break is hung up.
META_GRANTED_PREFIX = b"granted:"
# The streamSid of a stream its edge saw break (ended with no stop from Twilio and no close
# asked for by the gateway): the evidence a resumption needs (see shared.resumption).
META_BROKEN = b"broken"
# "heard:<streamSid>": the last time (wall clock, µs) the stream's edge heard from Twilio on it,
# written about once a second while it holds the stream: when it goes stale, the stream or its
# edge is gone. One field per stream, so a stream's old edge never writes over its successor's.
META_HEARD_PREFIX = b"heard:"
# The call's custom parameters (JSON), as its lifecycle entry carries them: who called whom and
# how, for a reader that has the CallSid alone (the console's call view).
META_PARAMS = b"params"
# Written by the console when it places an outbound call, before Twilio rings anybody: such a
# call has a hash (and so a state, "ringing") before the edge registers it.
META_DIALED_US = b"dialed_us"
META_DIALED_TO = b"dialed_to"
META_DIALED_FROM = b"dialed_from"


def call_meta(started: CallStarted, *, reannounced: bool = False) -> dict[bytes, bytes | int]:
    """The fields the edge writes when it registers a call (again, after Redis lost it)."""
    meta: dict[bytes, bytes | int] = {
        b"call_sid": started.call_sid.encode(),
        META_STREAM_SID: started.stream_sid.encode(),
        META_STARTED_US: started.started_us,
        META_PARAMS: json.dumps(started.custom_parameters, separators=(",", ":")).encode(),
    }
    if reannounced:
        meta[META_REANNOUNCED] = b"1"
    return meta


def call_ttl_s(started_us: int, now_us: int, call_max_seconds: int) -> int | None:
    """How long a call's keys may still live: what is left of ``CALL_MAX_SECONDS`` since its
    start, or None once that is spent and the call is not to be registered again."""
    left = call_max_seconds - max(0, now_us - started_us) // 1_000_000
    return left if left > 0 else None


class KeyExpiry:
    """Which of a call's keys have had their expiry set by this writer: each key gets it with
    its first write (``CALL_MAX_SECONDS`` while the call runs), so that no key of a call that
    dies half-way lives for ever, and later writes pay nothing for it."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set: set[bytes] = set()

    def first_write(self, key: bytes) -> bool:
        """True the first time ``key`` is written (the write must then set its expiry)."""
        if key in self._set:
            return False
        self._set.add(key)
        return True

    def forget(self, key: bytes) -> None:
        """``key`` is gone (Redis lost it): its next write sets the expiry again."""
        self._set.discard(key)


class InboundIds:
    """Entry IDs for one call's ``in.pcmu``, whose only writer is the edge's bridge: the call's
    start in ms, then a count. Redis refuses a repeated ID, so a write sent again after a
    connection lost mid-pipeline lands once instead of doubling a frame."""

    __slots__ = ("_ms", "_count")

    def __init__(self, call_start_ms: int) -> None:
        self._ms = call_start_ms
        self._count = 0

    def next(self) -> bytes:
        self._count += 1
        return b"%d-%d" % (self._ms, self._count)


def stream_id_after(entry_id: bytes) -> bytes:
    """The smallest stream ID greater than ``entry_id`` (for exclusive range reads)."""
    ms, _, seq = entry_id.partition(b"-")
    return ms + b"-" + str(int(seq or b"0") + 1).encode()
