"""The realtime worker's per-call core for GPT-Live (combo C): pure, time passed in.

The Live model decides turns and handles being talked over itself; its output is one continuous
real-time stream with silence as zero samples, and no event says that it started, stopped or was
interrupted (docs/live.md). So this core reads the stream itself:

* :class:`OutputGate`: per output delta, speech or silence (one numpy peak per delta, never a
  Python loop over samples). Speech goes to the caller as *segments* (one id per stretch of
  speech, the ``response_id``/``item_id`` of its chunks and of the marks Twilio returns), with
  the pauses inside it; silence past :data:`SILENCE_HANGOVER_US` is not forwarded at all
  (Twilio plays nothing in the gaps, which the real-time stream keeps in time). When speech
  turns to silence while the caller has just been speaking, the model yielded to them: what
  Twilio still holds of that segment is cleared, so the caller hears at most the clear's trip
  through the pipeline after the model stopped (the 200 ms rule).
* :class:`TranscriptTurns`: the transcript deltas (no done event) become a turn once that side
  has been quiet for :data:`TURN_GAP_MS` (or its next delta starts that much later on the
  session's timeline), as the call's ``transcript`` events, as for combo A.
* Tools run through :class:`shared.tool_calls.CallTools` exactly as for combo A; only the words
  differ (:class:`shared.live_dialect.LiveReplies`). ``hang_up``/``transfer`` are answered so the
  model says goodbye, and end the call once the stream went quiet and Twilio's marks say the
  caller heard it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from shared.call_actions import (
    Action,
    EndCall,
    Measure,
    SendToModel,
    WriteCommand,
    WriteEvent,
    WriteOutbound,
    send,
)
from shared.live_dialect import (
    BackendCall,
    BackendDone,
    BackendStarted,
    Closed,
    LiveError,
    LiveErrorKind,
    LiveEvent,
    LiveReplies,
    OutputAudio,
    Role,
    Started,
    TranscriptPart,
    append_audio,
    commentary,
    function_call_output,
    instructions_append,
    response_create,
)
from shared.playback import HeardTracker
from shared.realtime_dialect import FunctionCall
from shared.streams import (
    CallEvent,
    ClearPlayback,
    Control,
    DtmfPressed,
    MarkPlayed,
    OutboundChunk,
    ToolResult,
)
from shared.tool_calls import CallTools

# A delta whose samples all stay within this is silence (the API sends zeros; a little margin
# for any dither).
SILENT_PEAK = 64
# A caller frame peaking above this is the caller speaking (mu-law line noise stays far below;
# speech peaks in the thousands).
CALLER_SPEECH_PEAK = 1200
# Silence within a segment that is still forwarded (pauses between words keep their length);
# past it the segment ends and silence is no longer forwarded.
SILENCE_HANGOVER_US = 300_000
# The model went quiet within this long of the caller's last speech: it yielded to them.
BARGE_WINDOW_US = 600_000
# A side's transcript is a finished turn after this long without a delta (pipecat waits 0.8 s:
# the API sends fragments on ~200 ms boundaries).
TURN_GAP_MS = 800
# Hang-up/transfer: the goodbye is over once the stream has been quiet this long (and the
# marks say the caller heard it) ...
GOODBYE_QUIET_US = 700_000
# ... or, when the model says nothing after our answer, after this long ...
GOODBYE_WAIT_US = 2_500_000
# ... and in any case by this deadline.
ENDING_LIMIT_US = 15_000_000
ENDING_NOTE = "The call is ending now. Say a short goodbye to the caller."
WhoSpoke = Literal["caller", "assistant"]


def peak(pcm16: bytes) -> int:
    """The largest absolute sample of little-endian PCM16 (0 for nothing)."""
    if len(pcm16) < 2:
        return 0
    samples = np.frombuffer(pcm16, dtype="<i2", count=len(pcm16) // 2)
    return max(int(samples.max()), -int(samples.min()))


@dataclass
class OutputGate:
    """The model's output stream, speech or silence, delta by delta (see the module's doc)."""

    rate: int = 24000
    tag: str = "lv"  # unique per session: segment ids must not repeat across sessions/workers
    speaking: bool = False
    segments: int = 0
    segment: str = ""
    offset_us: int = 0  # where the next chunk starts within the current segment
    started_us: int = 0
    last_speech_us: int = -(10**15)
    caller_active_us: int = -(10**15)  # the caller's last speaking frame
    silent_us: int = 0  # silence since the segment's last speech
    dropped_silence_us: int = 0  # silence not forwarded (counted for the metrics/tests)

    def new_session(self, tag: str) -> None:
        self.tag, self.speaking, self.segment, self.offset_us = tag, False, "", 0
        self.silent_us = 0

    def caller(self, pcm16: bytes, now_us: int) -> None:
        if peak(pcm16) > CALLER_SPEECH_PEAK:
            self.caller_active_us = now_us

    def caller_recent(self, now_us: int) -> bool:
        return now_us - self.caller_active_us <= BARGE_WINDOW_US

    def delta(self, pcm16: bytes, now_us: int) -> tuple[OutboundChunk | None, bool, bool]:
        """``(chunk to forward, speech began, speech just stopped)`` for one output delta.

        Silence inside a segment is forwarded for up to :data:`SILENCE_HANGOVER_US` (the pauses
        between words and sentences keep their length); past that the segment ends and silence
        is dropped until the model speaks again. ``speech just stopped`` is the first silent
        delta after speech: the moment to decide whether the model yielded to the caller."""
        if len(pcm16) % 2:
            pcm16 = pcm16[:-1]
        duration_us = len(pcm16) * 1_000_000 // (2 * self.rate)
        if peak(pcm16) <= SILENT_PEAK:
            if not self.speaking:
                self.dropped_silence_us += duration_us
                return None, False, False
            stopped = self.silent_us == 0
            self.silent_us += duration_us
            if self.silent_us > SILENCE_HANGOVER_US:
                self.end_segment()
                self.dropped_silence_us += duration_us
                return None, False, stopped
            return self._chunk(pcm16, duration_us, now_us), False, stopped
        began = not self.speaking
        if began:
            self.segments += 1
            self.segment = f"{self.tag}.{self.segments}"
            self.offset_us, self.started_us, self.speaking = 0, now_us, True
        self.silent_us = 0
        self.last_speech_us = now_us
        return self._chunk(pcm16, duration_us, now_us), began, False

    def end_segment(self) -> None:
        """The segment is over (its trailing silence played, or the caller cut it off)."""
        self.speaking, self.silent_us = False, 0

    def _chunk(self, pcm16: bytes, duration_us: int, now_us: int) -> OutboundChunk:
        chunk = OutboundChunk(pcm16, self.segment, self.segment, self.offset_us, now_us)
        self.offset_us += duration_us
        return chunk


@dataclass
class _Turn:
    text: str = ""
    last_us: int = 0
    end_ms: int = 0


@dataclass
class TranscriptTurns:
    """Transcript deltas of both sides, gathered into finished turns (no done event exists)."""

    gap_ms: int = TURN_GAP_MS
    turns: dict[Role, _Turn] = field(default_factory=dict)

    def part(self, part: TranscriptPart, now_us: int) -> list[tuple[Role, str]]:
        """Take one delta; the turn it finished, if it starts well after the side's last one."""
        done: list[tuple[Role, str]] = []
        turn = self.turns.setdefault(part.role, _Turn())
        if turn.text and part.start_ms - turn.end_ms >= self.gap_ms:
            done = self._flush(part.role)
            turn = self.turns.setdefault(part.role, _Turn())
        turn.text += part.text
        turn.last_us, turn.end_ms = now_us, max(turn.end_ms, part.end_ms)
        return done

    def due(self, now_us: int) -> list[tuple[Role, str]]:
        """Turns whose side has been quiet for the gap."""
        done: list[tuple[Role, str]] = []
        for role, turn in list(self.turns.items()):
            if turn.text and now_us - turn.last_us >= self.gap_ms * 1000:
                done += self._flush(role)
        return done

    def flush(self) -> list[tuple[Role, str]]:
        done: list[tuple[Role, str]] = []
        for role in list(self.turns):
            done += self._flush(role)
        return done

    def _flush(self, role: Role) -> list[tuple[Role, str]]:
        turn = self.turns.pop(role, None)
        text = turn.text.strip() if turn else ""
        return [(role, text)] if text else []


@dataclass
class LiveConversation:
    """One call's conversation with GPT-Live, across its sessions."""

    rate: int = 24000
    greeting: str = ""
    greeted: bool = False
    tools: CallTools | None = None
    transcript: list[tuple[Role, str]] = field(default_factory=list)
    heard: HeardTracker = field(default_factory=HeardTracker)
    gate: OutputGate = field(default_factory=OutputGate)
    turns: TranscriptTurns = field(default_factory=TranscriptTurns)
    started: bool = False  # session.started came on the current session
    ready_us: int = 0
    backend_active: set[str] = field(default_factory=set)
    backend_calls: dict[str, list[FunctionCall]] = field(default_factory=dict)
    ending_since_us: int | None = None
    errors: dict[str, int] = field(default_factory=dict)
    replies: LiveReplies = field(default_factory=LiveReplies)

    def __post_init__(self) -> None:
        self.gate.rate = self.rate
        if self.tools is not None:
            # The live model acknowledges a delegation by itself; no filler of ours.
            self.tools.filler_after_us = 1 << 62

    # --- sessions -------------------------------------------------------------------------------
    def context(self) -> list[tuple[Role, str]]:
        """What a new session is given as ``input`` (trimmed by :func:`history`)."""
        return list(self.transcript)

    def session_started(self, event: Started, now_us: int) -> list[Action]:
        """``session.started``: from now on events may go; greet if nobody has yet."""
        self.started, self.ready_us = True, now_us
        self.gate.new_session(f"lv{now_us:x}")
        self.backend_active.clear()
        self.backend_calls.clear()
        if self.tools is not None:
            self.tools.new_session()
            self.tools.awaiting_response = False
        if self.greeting and not self.greeted and not self.transcript:
            self.greeted = True
            return [send(commentary(f"Greet the caller now. Say exactly: {self.greeting}"))]
        return []

    def session_lost(self) -> list[Action]:
        """The session ended (closed by the API, or its socket dropped): what was said so far
        becomes turns, for the next session's history."""
        self.started = False
        self.gate.speaking = False
        return self._turns_done(self.turns.flush())

    def restore(self, transcript: Sequence[tuple[Role, str]], greeted: bool) -> None:
        """After a worker's death: what the previous owner had (read back from Redis)."""
        self.transcript = list(transcript)
        self.greeted = greeted or bool(transcript)

    def quiet(self) -> bool:
        tools = self.tools
        return (
            not self.gate.speaking
            and self.heard.playing() is None
            and not self.backend_active
            and (tools is None or tools.idle())
        )

    # --- caller side ----------------------------------------------------------------------------
    def caller_audio(self, pcm16: bytes, now_us: int) -> list[Action]:
        self.gate.caller(pcm16, now_us)
        return [SendToModel(append_audio(pcm16))] if self.started else []

    def control(self, control: Control, now_us: int) -> list[Action]:
        if isinstance(control, MarkPlayed):
            self.heard.mark(control.name)
            return []
        if isinstance(control, ToolResult):
            if self.tools is None:
                return []
            answered = self.tools.result(control)
            if answered:
                self.transcript.append(
                    ("assistant", f"[The tool {control.name} answered: {control.output[:1000]}]")
                )
            return answered + self.tick(now_us)
        if isinstance(control, DtmfPressed):
            # Developer context rather than commentary: it stays in the conversation through
            # compaction and reaches later delegations (a tool may need the digits), and the
            # model, which owns the turns, decides when to answer (docs/live.md).
            note = (
                f"The caller pressed the key {control.digit} on the phone keypad; "
                "take it as their input."
            )
            self.transcript.append(("user", f"[pressed {control.digit}]"))
            actions: list[Action] = [WriteEvent(CallEvent("dtmf", {"digit": control.digit}))]
            if self.started:
                actions.append(send(instructions_append(note)))
            return actions
        return []

    # --- model side -----------------------------------------------------------------------------
    def server_event(self, event: LiveEvent, now_us: int) -> list[Action]:
        if isinstance(event, OutputAudio):
            return self._audio(event.audio, now_us)
        if isinstance(event, TranscriptPart):
            return self._turns_done(self.turns.part(event, now_us))
        if isinstance(event, BackendStarted):
            self.backend_active.add(_backend_key(event))
            if self.tools is not None:
                self.tools.awaiting_response = False
            return []
        if isinstance(event, BackendCall):
            self.backend_calls.setdefault(_backend_key(event), []).append(event.call)
            return []
        if isinstance(event, BackendDone):
            return self._backend_done(event, now_us)
        if isinstance(event, Started):
            return self.session_started(event, now_us)
        if isinstance(event, Closed):
            return self.session_lost()
        if isinstance(event, LiveError):
            return self._error(event)
        return []

    def _audio(self, pcm16: bytes, now_us: int) -> list[Action]:
        chunk, began, stopped = self.gate.delta(pcm16, now_us)
        actions: list[Action] = []
        if stopped and self.gate.caller_recent(now_us):
            # The model yielded to the caller: nothing more of this segment, and what Twilio
            # still holds of it is dropped.
            self.gate.end_segment()
            return self._barge_in()
        if chunk is None:
            return actions
        if began and not self.gate.caller_recent(now_us):
            since_caller = now_us - self.gate.caller_active_us
            if since_caller <= 5_000_000:
                actions.append(Measure("first_reply", since_caller / 1e6))
        self.heard.sent(chunk.item_id, (chunk.offset_us + _duration_us(chunk, self.rate)) / 1000)
        actions.append(WriteOutbound(chunk))
        return actions

    def _barge_in(self) -> list[Action]:
        """The model stopped speaking as the caller spoke: drop what Twilio still holds."""
        item = self.heard.playing()
        if item is None:
            return []
        heard_ms = self.heard.cut(item)
        return [
            WriteCommand(ClearPlayback(item)),
            WriteEvent(CallEvent("barge_in", {"item_id": item, "heard_ms": str(heard_ms)})),
        ]

    def _backend_done(self, event: BackendDone, now_us: int) -> list[Action]:
        key = _backend_key(event)
        self.backend_active.discard(key)
        calls = tuple(self.backend_calls.pop(key, ()))
        tools = self.tools
        if tools is None:
            return []
        if event.status != "completed":
            return self.tick(now_us)
        for call in calls:
            self.transcript.append(
                ("assistant", f"[I called the tool {call.name}({call.arguments[:500]})]")
            )
        was_ending = tools.ending is not None
        actions = tools.response_done(calls, "completed", self.heard, now_us)
        if tools.ending is not None and not was_ending:
            actions += self._say_goodbye(calls, now_us)
        return actions + self.tick(now_us)

    def _say_goodbye(self, calls: Sequence[FunctionCall], now_us: int) -> list[Action]:
        """The model hung up or transferred: answer that call so the backend is not left
        waiting and the model says goodbye; the call ends once that was heard."""
        tools = self.tools
        assert tools is not None
        self.ending_since_us = now_us
        tools.extend_ending(now_us + ENDING_LIMIT_US)
        actions: list[Action] = []
        for call in calls:
            tool = tools.tools.get(call.name)
            if tool is not None and tool.kind in ("hang_up", "transfer"):
                actions.append(send(function_call_output(call.call_id, ENDING_NOTE)))
        if actions:
            actions.append(send(response_create()))
        return actions

    def _goodbye_pending(self, now_us: int) -> bool:
        """Whether the model may still be saying goodbye (the call must not end yet)."""
        since = self.ending_since_us
        if since is None:
            return False
        gate = self.gate
        if gate.speaking and gate.silent_us == 0:
            return True
        if gate.last_speech_us >= since:
            return now_us - gate.last_speech_us < GOODBYE_QUIET_US
        return now_us - since < GOODBYE_WAIT_US

    def _turns_done(self, done: list[tuple[Role, str]]) -> list[Action]:
        actions: list[Action] = []
        for role, text in done:
            self.transcript.append((role, text))
            who: WhoSpoke = "caller" if role == "user" else "assistant"
            item = self.gate.segment if role == "assistant" else f"in{len(self.transcript)}"
            actions.append(
                WriteEvent(CallEvent("transcript", {"role": who, "text": text, "item_id": item}))
            )
        return actions

    def _error(self, error: LiveError) -> list[Action]:
        code = error.code or "unknown"
        self.errors[code] = self.errors.get(code, 0) + 1
        if self.tools is not None:
            self.tools.awaiting_response = False  # a response.create of ours refused
        actions: list[Action] = [
            WriteEvent(CallEvent("error", {"code": code, "message": error.message[:500]}))
        ]
        if error.kind is LiveErrorKind.FATAL:
            actions.append(EndCall(f"realtime_{code}"))
        return actions

    def tick(self, now_us: int) -> list[Action]:
        """What is due now (after each batch of caller entries): finished transcript turns,
        tool outputs once no backend response runs, the end of a call whose goodbye was heard."""
        actions = self._turns_done(self.turns.due(now_us))
        tools = self.tools
        if tools is None or not self.started:
            return actions
        busy = bool(self.backend_active) or tools.awaiting_response
        if not busy:
            actions += tools.deliver(self.replies)
        busy = busy or tools.awaiting_response
        if tools.ending is not None:
            busy = self._goodbye_pending(now_us)
        return actions + tools.due(self.heard, now_us, busy, self.replies)


def _backend_key(event: BackendStarted | BackendCall | BackendDone) -> str:
    """Which backend response an event belongs to: its delegation (the envelope names it; a
    Responses item event carries no response id), else the response id. One backend response
    runs at a time per delegation: the continuation starts after the previous one completed."""
    return event.delegation_id or event.response_id


def _duration_us(chunk: OutboundChunk, rate: int) -> int:
    return len(chunk.audio) * 1_000_000 // (2 * rate)
