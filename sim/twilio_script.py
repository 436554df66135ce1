"""One Twilio Media Stream as Twilio runs it, without sockets or clocks (sans-I/O).

:class:`SimulatedStream` is handed events, each with the time it happened (seconds since
``start`` was sent), and returns what to do:

* :meth:`~SimulatedStream.start` -> the ``connected`` and ``start`` messages;
* :meth:`~SimulatedStream.tick`, due at :attr:`~SimulatedStream.next_frame_at`: one 20 ms frame.
  Twilio's buffer plays its window (marks whose audio has played come back), the caller's frame
  goes out (speech, silence or a barge-in), key presses that are due, and, when the caller is
  done (:class:`~sim.twilio_options.CallScript`'s hang-up rule), ``stop`` and :class:`HangUp`;
* :meth:`~SimulatedStream.receive`: a message from the gateway, checked as Twilio checks it
  (anything wrong is recorded in ``violations``, never raised) and queued for playback; a
  ``clear`` returns the pending marks at once;
* :meth:`~SimulatedStream.gateway_closed` and :meth:`~SimulatedStream.finish` -> the
  :class:`CallResult`.

An event the stream's state does not allow raises :class:`StreamStateError`, the core's only
error. The shell (:mod:`sim.twilio_call`) owns the socket and the clock.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field

import numpy as np

from sim.twilio_options import BargeIn, CallIdentity, CallScript, as_ulaw
from sim.twilio_playback import Playback, ReplyChunk
from sim.twilio_wire import (
    BYTES_PER_S,
    FRAME_BYTES,
    FRAME_S,
    SILENCE,
    GatewayMark,
    GatewayMedia,
    TwilioOutbox,
    Violation,
    parse_gateway_message,
    ulaw_decode,
)

_SOUND_THRESHOLD = 100  # |sample| above which a caller frame counts as speech (about -50 dBFS)


def speech_end_s(ulaw: bytes) -> float:
    """When the caller's last audible frame ends (trailing silence is not speech)."""
    frames = len(ulaw) // FRAME_BYTES + (len(ulaw) % FRAME_BYTES > 0)
    loud = np.flatnonzero(np.abs(ulaw_decode(ulaw).astype(np.int32)) > _SOUND_THRESHOLD)
    last = int(loud[-1]) // FRAME_BYTES + 1 if loud.size else frames
    return last * FRAME_S


@dataclass(frozen=True, slots=True)
class Send:
    """Send this text frame to the gateway, ``delay_s`` from now (delayed sends keep their order
    among themselves: a mark's way back, whose delay varies)."""

    text: str
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class HangUp:
    """The caller has hung up: close the socket."""


Action = Send | HangUp


class StreamStateError(RuntimeError):
    """An event the stream's state does not allow (a tick before ``start``, after the end...)."""


class State(enum.Enum):
    IDLE = "idle"  # not started
    STREAMING = "streaming"
    ENDED = "ended"  # hung up or closed by the gateway; messages still arriving are ignored
    FINISHED = "finished"  # the result has been taken


@dataclass
class CallResult:
    """What happened on the call. Times are seconds since ``start`` was sent (frame 0's slot).

    ``heard[i]`` played at i / 8000 s; ``clears``, ``marks_*`` and ``barge_in_at`` are arrival or
    send times on the shell's (monotonic) clock; ``*_ms`` figures are milliseconds of audio or of
    delay. The fields from ``next_streams`` on are about the TwiML followed after this stream.
    """

    call_sid: str
    stream_sid: str
    account_sid: str = ""
    stream_url: str = ""  # the URL the handshake was signed over (the TwiML's, if fetched)
    custom_parameters: dict[str, str] = field(default_factory=dict)  # as sent in start
    # Wall clock (time.time()) when start was sent, frame 0's slot: for delays measured by
    # another process on this machine (the emulator's record of the call's session).
    started_wall: float | None = None
    frames_sent: int = 0
    speech_frames: int = 0  # of which carried the caller's audio (first turn)
    frames_received: int = 0
    heard: bytes = b""  # mu-law as played to the caller, 8000 bytes a second, 0xFF when nothing
    received_audio: bytes = b""  # every media payload received, concatenated
    reply_chunks: list[ReplyChunk] = field(default_factory=list)
    marks_received: list[tuple[str, float]] = field(default_factory=list)  # from the gateway
    marks_returned: list[tuple[str, float]] = field(default_factory=list)  # echoed back
    clears: list[float] = field(default_factory=list)
    speech_end_at: float | None = None  # the end of the caller's last audible frame
    first_reply_at: float | None = None  # first media received after speech_end_at
    reply_delay_ms: float | None = None  # first_reply_at - speech_end_at
    reply_heard_at_clear_ms: float | None = None  # reply audio played when the first clear came
    played_after_clear_ms: float = 0.0  # reply audio played after the first clear
    barge_in_at: float | None = None
    clear_after_barge_ms: float | None = None  # first clear after barge_in_at, minus it
    played_after_barge_ms: float | None = None  # reply audio talked over until that clear
    violations: list[str] = field(default_factory=list)
    closed_by_gateway: bool = False
    # (StreamEvent, HTTP status) of each <Stream statusCallback> POST, when the TwiML named one
    status_callbacks: list[tuple[str, int]] = field(default_factory=list)
    close_code: int | None = None
    duration_s: float = 0.0
    # After the stream: each <Connect action> request (URL signed, HTTP status), the streams
    # its TwiML connected (each its own result), and the number a <Dial> transferred the call to.
    action_requests: list[tuple[str, int]] = field(default_factory=list)
    next_streams: list[CallResult] = field(default_factory=list)
    dialed: str | None = None


class _Caller:
    """What the caller says in each 20 ms frame: the first turn, silence, maybe a barge-in."""

    def __init__(self, first_turn: bytes, barge_in: BargeIn | None) -> None:
        self.first_turn = first_turn
        self.barge_in = barge_in
        self.barge_audio = as_ulaw(barge_in.audio) if barge_in else b""
        self.barge_pos: int | None = None  # bytes of the barge-in sent; None: not begun

    @property
    def barge_started(self) -> bool:
        return self.barge_pos is not None

    def speaking(self, k: int) -> bool:
        """Is there still something to say at frame k?"""
        if k * FRAME_BYTES < len(self.first_turn):
            return True
        return self.barge_pos is not None and self.barge_pos < len(self.barge_audio)

    def frame(self, k: int, at: float, reply_playing_since: float | None) -> bytes:
        pos = k * FRAME_BYTES
        if pos < len(self.first_turn):
            return self.first_turn[pos : pos + FRAME_BYTES].ljust(FRAME_BYTES, b"\xff")
        if (
            self.barge_in is not None
            and self.barge_pos is None
            and reply_playing_since is not None
            and at - reply_playing_since >= self.barge_in.after_s
        ):
            self.barge_pos = 0
        if self.barge_pos is not None and self.barge_pos < len(self.barge_audio):
            pos, self.barge_pos = self.barge_pos, self.barge_pos + FRAME_BYTES
            return self.barge_audio[pos : pos + FRAME_BYTES].ljust(FRAME_BYTES, b"\xff")
        return SILENCE


class SimulatedStream:
    """One Media Stream of a call, from ``start`` to hang-up (see the module's docstring).

    ``stream_url`` is what the handshake was signed over and ``parameters`` the
    ``customParameters`` sent in ``start``; both are only recorded here.
    """

    def __init__(
        self,
        script: CallScript,
        identity: CallIdentity,
        stream_url: str = "",
        parameters: dict[str, str] | None = None,
    ) -> None:
        self.script = script
        self.identity = identity
        self.state = State.IDLE
        self.playback = Playback()
        self._outbox = TwilioOutbox(identity.stream_sid)
        self._speech = as_ulaw(script.audio)
        self._caller = _Caller(self._speech, script.barge_in)
        self._speech_end = speech_end_s(self._speech)
        self._pending_dtmf = list(script.dtmf)
        self._received = bytearray()
        self._k = 0  # the next frame
        self._last_received = 0.0
        self._last_played = 0.0  # on the playback clock
        self._reply_playing_since: float | None = None  # playback clock, after the caller spoke
        self._barge_cleared = False  # a clear has come since the caller talked over the reply
        self._talked_over = 0  # reply bytes played during the barge-in, before its clear
        self._after_clear = 0  # reply bytes played after the first clear
        self._jitter = random.Random(script.mark_jitter_seed)
        self.result = CallResult(
            identity.call_sid,
            identity.stream_sid,
            identity.account_sid,
            stream_url,
            dict(parameters or {}),
            speech_end_at=self._speech_end,
        )

    @property
    def next_frame_at(self) -> float:
        """When the next :meth:`tick` is due: frame k's slot, k x 20 ms (so pacing cannot drift)."""
        return self._k * FRAME_S

    def _require(self, *states: State) -> None:
        if self.state not in states:
            wanted = " or ".join(s.value for s in states)
            raise StreamStateError(f"the stream is {self.state.value}, not {wanted}")

    # --- events ---------------------------------------------------------------------------------

    def start(self, wall: float) -> list[Action]:
        """The stream is open: ``connected`` and ``start``. ``wall``: time.time() now."""
        self._require(State.IDLE)
        self.state = State.STREAMING
        self.result.started_wall = wall
        identity = self.identity
        return [
            Send(self._outbox.connected()),
            Send(
                self._outbox.start(
                    identity.account_sid, identity.call_sid, self.result.custom_parameters
                )
            ),
        ]

    def receive(self, message: str | bytes, t: float) -> list[Action]:
        """A message from the gateway at ``t``; ignored once the caller has hung up."""
        self._require(State.STREAMING, State.ENDED)
        if self.state is State.ENDED:
            return []
        result = self.result
        try:
            parsed = parse_gateway_message(message, self.identity.stream_sid)
        except Violation as exc:
            result.violations.append(f"{t:.3f}s: {exc}")
            return []
        if isinstance(parsed, GatewayMedia):
            self.playback.add_audio(parsed.payload, t)
            self._received += parsed.payload
            result.frames_received += 1
            self._last_received = t
            if result.first_reply_at is None and t >= self._speech_end:
                result.first_reply_at = t
            return []
        if isinstance(parsed, GatewayMark):
            self.playback.add_mark(parsed.name)
            result.marks_received.append((parsed.name, t))
            return []
        result.clears.append(t)
        if result.reply_heard_at_clear_ms is None:
            result.reply_heard_at_clear_ms = self.playback.played_bytes / 8
        if result.barge_in_at is not None:
            self._barge_cleared = True
        return self._return_marks(self.playback.clear(), t)

    def tick(self, t: float) -> list[Action]:
        """Frame k, at ``t`` (about :attr:`next_frame_at`): play, speak, press, maybe hang up."""
        self._require(State.STREAMING)
        result, caller = self.result, self._caller
        k, at = self._k, self.next_frame_at  # ``at``: the playback clock, frame k's window
        played, marks = self.playback.tick(at)
        actions = self._return_marks(marks, t)
        if played:
            self._last_played = at + len(played) / BYTES_PER_S
            if at >= self._speech_end and self._reply_playing_since is None:
                self._reply_playing_since = at
            if result.clears:
                self._after_clear += len(played)
            if caller.barge_started and not self._barge_cleared:
                self._talked_over += len(played)
        barging = caller.barge_started
        actions.append(Send(self._outbox.media(k, caller.frame(k, at, self._reply_playing_since))))
        result.frames_sent += 1
        if k * FRAME_BYTES < len(self._speech):
            result.speech_frames += 1
        if caller.barge_started and not barging:
            result.barge_in_at = t
        while self._pending_dtmf and self._pending_dtmf[0][0] <= t:
            actions.append(Send(self._outbox.dtmf(self._pending_dtmf.pop(0)[1])))
        self._k += 1
        if t >= self.script.max_duration_s or self._caller_is_done():
            self.state = State.ENDED
            if self.script.stop:
                identity = self.identity
                actions.append(Send(self._outbox.stop(identity.account_sid, identity.call_sid)))
            actions.append(HangUp())
        return actions

    def hang_up(self) -> list[Action]:
        """Twilio's side ends the call now (a REST update moved it elsewhere, say): the stream
        stops as Twilio stops it."""
        self._require(State.STREAMING)
        self.state = State.ENDED
        identity = self.identity
        return [Send(self._outbox.stop(identity.account_sid, identity.call_sid)), HangUp()]

    def gateway_closed(self, code: int | None) -> None:
        """The gateway closed the stream (or it was lost: ``code`` None)."""
        self._require(State.STREAMING, State.ENDED)
        self.state = State.ENDED
        self.result.closed_by_gateway = True
        self.result.close_code = code

    def finish(self, t: float) -> CallResult:
        """The stream is over at ``t``: the figures of the whole stream. Once."""
        self._require(State.STREAMING, State.ENDED)
        self.state = State.FINISHED
        result = self.result
        result.duration_s = t
        result.heard = bytes(self.playback.heard)
        result.received_audio = bytes(self._received)
        result.reply_chunks = self.playback.chunks
        result.played_after_clear_ms = self._after_clear / 8
        if result.first_reply_at is not None:
            result.reply_delay_ms = (result.first_reply_at - self._speech_end) * 1000
        if result.barge_in_at is not None:
            result.played_after_barge_ms = self._talked_over / 8
            after = [c for c in result.clears if c >= result.barge_in_at]
            if after:
                result.clear_after_barge_ms = (after[0] - result.barge_in_at) * 1000
        return result

    # --- rules ----------------------------------------------------------------------------------

    def _return_marks(self, names: list[str], t: float) -> list[Action]:
        actions: list[Action] = []
        for name in names:
            late = self._jitter.uniform(0, self.script.mark_jitter_ms) / 1000
            self.result.marks_returned.append((name, t + late))
            actions.append(Send(self._outbox.mark(name), late))
        return actions

    def _caller_is_done(self) -> bool:
        """The hang-up rule, checked after each frame (CallScript's docstring says it)."""
        caller, result, script = self._caller, self.result, self.script
        if caller.speaking(self._k):
            return False
        waiting = script.wait_for_reply and result.frames_received == 0
        if script.barge_in and not caller.barge_started and result.first_reply_at is not None:
            waiting = True  # the reply has come; the caller is yet to interrupt it
        barge_end = (result.barge_in_at or 0.0) + len(caller.barge_audio) / BYTES_PER_S
        audio_end = len(self._speech) / BYTES_PER_S
        quiet_since = max(audio_end, self._last_received, self._last_played, barge_end)
        quiet_for = self.next_frame_at - quiet_since
        return self.playback.idle and not waiting and quiet_for >= script.hold_after_s
