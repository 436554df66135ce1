"""The realtime worker's per-call core: one phone conversation, dialect-neutral.

Pure: events in (caller frames, Twilio's marks and keys, normalised Realtime server events),
actions out (text to send to the model, entries to write, the call to end). It decides turns when
the server does not (``REALTIME_TURN_DETECTION=none``), speaks the greeting, turns DTMF into a
conversation item, follows what the caller has heard (from returned marks) so that a barge-in
truncates the reply exactly there and clears what is queued, and keeps the transcript that a new
session gets as context after a reconnect. The dialect object builds every client event, so
nothing here knows which dialect is in use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from shared.call_actions import (
    Action,
    EndCall,
    Measure,
    SendToModel,
    SetDisposition,
    WriteCommand,
    WriteEvent,
    WriteOutbound,
    send,
)
from shared.idle import GOODBYE, IDLE_REASON, IdleWatch
from shared.mcp import ApprovalRequest, CallMcp, McpCallStarted
from shared.playback import HeardTracker
from shared.realtime_dialect import (
    AudioDelta,
    ErrorKind,
    IdleTimeout,
    InputCommitted,
    InputTranscript,
    RealtimeDialect,
    ResponseCreated,
    ResponseDone,
    ServerError,
    ServerEvent,
    SpeechStarted,
    SpeechStopped,
    TranscriptDelta,
    TranscriptDone,
)
from shared.streams import (
    CallEvent,
    ClearPlayback,
    Control,
    DtmfPressed,
    HangUp,
    MarkPlayed,
    OutboundChunk,
    ToolResult,
)
from shared.tool_calls import CallTools
from shared.usage import usage_fields

Role = Literal["user", "assistant"]
# The live API refuses to commit less than 100 ms (input_audio_buffer_commit_empty).
MIN_COMMIT_MS = 100
# After the caller's turn ends, how long the server may take to start its reply: until then a
# switch of session would lose the reply being created, and the turn with it.
REPLY_WAIT_US = 3_000_000


@dataclass
class CallConversation:
    """State of one call's conversation with the model, across reconnects."""

    dialect: RealtimeDialect
    turn_detection: str
    commit_frames: int
    greeting: str = ""
    rate: int = 24000
    greeted: bool = False
    transcript: list[tuple[Role, str]] = field(default_factory=list)
    heard: HeardTracker = field(default_factory=HeardTracker)
    # The response being generated, and every response whose audio must no longer reach the caller.
    active_response: str | None = None
    cancelled: set[str] = field(default_factory=set)
    item_response: dict[str, str] = field(default_factory=dict)
    item_offset_us: dict[str, int] = field(default_factory=dict)
    frames_since_commit: int = 0
    bytes_since_commit: int = 0
    speech_stopped_us: int | None = None
    reply_started: set[str] = field(default_factory=set)
    errors: dict[str, int] = field(default_factory=dict)
    # When the current session became ready: frames the caller sent before it waited in Redis
    # for the session, which is start-up (or recovery) time, not the pipeline's hop delay.
    ready_us: int = 0
    # The call's function calls (None: the agent has no tools).
    tools: CallTools | None = None
    # How much of the transcript a new session is given (REALTIME_CONTEXT_CHARS).
    context_chars: int = 12_000
    caller_speaking: bool = False
    # What the model has said of each reply item not yet done (kept if the session dies).
    partial: dict[str, str] = field(default_factory=dict)
    # The model the sessions use, named in each response's ``usage`` event (its price).
    model: str = ""
    # The call's remote MCP calls (None: the agent declares no MCP server).
    mcp: CallMcp | None = None
    # A silent caller asked, then hung up on (None: the agent file sets no idle_action).
    idle: IdleWatch | None = None

    # --- session -------------------------------------------------------------------------------
    def session_ready(self, now_us: int) -> list[Action]:
        """A (new) session was accepted: give it the conversation so far, or greet the caller."""
        self.switched(now_us)
        actions = self.seed()
        if not actions and self.greeting and not self.greeted:
            self.greeted = True
            self.speech_stopped_us = now_us
            actions.append(
                send(
                    self.dialect.response_create(
                        instructions=f"Greet the caller now. Say exactly: {self.greeting}"
                    )
                )
            )
        return actions

    def seed(self) -> list[Action]:
        """The conversation so far for a new session, as text items of both sides (tool calls
        and their answers too): the newest turns within ``context_chars``."""
        return [send(e) for e in self.dialect.context_items(self.context())]

    def context(self) -> list[tuple[Role, str]]:
        """The newest turns whose text fits ``context_chars``, oldest first (what is older is
        left out: a session cannot be given an unbounded past)."""
        kept: list[tuple[Role, str]] = []
        left = self.context_chars
        for role, text in reversed(self.transcript):
            if len(text) > left:
                break
            kept.append((role, text))
            left -= len(text)
        return kept[::-1]

    def switched(self, now_us: int) -> None:
        """The caller's audio now goes to a new session: what was per-session starts afresh."""
        self.ready_us = now_us
        self.active_response = None
        self.caller_speaking = False
        self.frames_since_commit = self.bytes_since_commit = 0
        if self.tools is not None:
            self.tools.new_session()

    def session_lost(self) -> None:
        """The session ended under a reply (expiry, a dropped socket): what the model had said
        of it stays in the transcript, marked cut, for the next session's context."""
        for text in self.partial.values():
            if text.strip():
                self.transcript.append(("assistant", text.strip() + " [cut off]"))
        self.partial.clear()

    def quiet(self, now_us: int) -> bool:
        """A moment to move the call to another session: no reply being made or still playing,
        none about to be (the caller's turn just ended: the server is creating its response,
        which a switch would lose with the turn; for at most REPLY_WAIT_US), the caller not
        speaking, no tool running or answer waiting."""
        tools = self.tools
        return (
            self.active_response is None
            and not self.reply_due(now_us)
            and not self.caller_speaking
            and self.heard.playing() is None
            and (tools is None or tools.idle())
        )

    def reply_due(self, now_us: int) -> bool:
        """The caller's turn (or the greeting) has ended and its reply has not begun yet."""
        awaited = self.speech_stopped_us
        return awaited is not None and now_us - awaited <= REPLY_WAIT_US

    def may_switch(self, session_age_us: int, max_us: int, grace_us: int, now_us: int) -> bool:
        """Whether a session ``session_age_us`` old should give way to the next one now: at the
        first quiet moment past ``max_us``; past ``max_us + grace_us`` between two replies even
        if one is still playing (it was all generated: it plays on from Redis), but not while
        the caller speaks, whose turn would be split between two sessions and answered by
        neither; past ``max_us + 2 * grace_us`` between two replies whatever the caller does,
        as the server's limit comes next."""
        if max_us <= 0 or session_age_us < max_us:
            return False
        if self.quiet(now_us):
            return True
        if (
            self.active_response is not None
            or self.reply_due(now_us)
            or session_age_us < max_us + grace_us
        ):
            return False
        return not self.caller_speaking or session_age_us >= max_us + 2 * grace_us

    # --- caller side ----------------------------------------------------------------------------
    def caller_audio(self, pcm: bytes) -> list[Action]:
        """One caller frame (PCM16 at the session rate): append it; decide the turn if we must."""
        actions: list[Action] = [SendToModel(self.dialect.append_audio(pcm))]
        if self.turn_detection != "none":
            return actions
        self.frames_since_commit += 1
        self.bytes_since_commit += len(pcm)
        if self.frames_since_commit >= self.commit_frames:
            if self.bytes_since_commit * 1000 >= MIN_COMMIT_MS * self.rate * 2:
                actions.append(send(self.dialect.commit()))
                if self.active_response is None:
                    actions.append(send(self.dialect.response_create()))
            self.frames_since_commit = self.bytes_since_commit = 0
        return actions

    def control(self, control: Control) -> list[Action]:
        if isinstance(control, MarkPlayed):
            self.heard.mark(control.name)
            return []
        if isinstance(control, ToolResult):
            # Delivered to the model by tick(), once no response is active.
            if self.tools is None:
                return []
            answered = self.tools.result(control)
            if answered:
                self.transcript.append(
                    ("assistant", f"[The tool {control.name} answered: {control.output[:1000]}]")
                )
            return answered
        if isinstance(control, DtmfPressed):
            digit = control.digit
            actions: list[Action] = [
                WriteEvent(CallEvent("dtmf", {"digit": digit})),
                send(
                    self.dialect.user_text_item(
                        f"[The caller pressed the key {digit} on the phone keypad.]"
                    )
                ),
            ]
            if self.active_response is None:
                actions.append(send(self.dialect.response_create()))
            return actions
        return []

    # --- model side -----------------------------------------------------------------------------
    def server_event(self, event: ServerEvent, now_us: int) -> list[Action]:
        if isinstance(event, AudioDelta):
            return self._audio(event, now_us)
        if isinstance(event, SpeechStarted):
            self.caller_speaking = True
            if self.idle is not None:
                self.idle.caller_spoke()
            return self._barge_in()
        if isinstance(event, SpeechStopped):
            self.caller_speaking = False
            self.speech_stopped_us = now_us
            return []
        if isinstance(event, TranscriptDelta):
            self.partial[event.item_id] = self.partial.get(event.item_id, "") + event.text
            return []
        if isinstance(event, ResponseCreated):
            self.active_response = event.response_id
            if self.tools is not None:
                self.tools.awaiting_response = False
            if self.idle is not None and self.idle.response_created(event.response_id):
                # The server's answer to one silence too many: never heard; a goodbye instead.
                self.cancelled.add(event.response_id)
                return [send(self.dialect.cancel_response())]
            return []
        if isinstance(event, ResponseDone):
            if self.active_response == event.response_id:
                self.active_response = None
            used = usage_fields(self.model, event.response_id, event.usage)
            counted: list[Action] = [WriteEvent(CallEvent("usage", used))] if used else []
            counted += self._mcp_done(event, now_us)
            counted += self._idle_done(event, now_us)
            if self.tools is None:
                return counted + self._mcp_continue([])
            if event.status == "completed":
                for call in event.calls:  # for a later session's context
                    self.transcript.append(
                        ("assistant", f"[I called the tool {call.name}({call.arguments[:500]})]")
                    )
            actions = self.tools.response_done(event.calls, event.status, self.heard, now_us)
            actions += self.tick(now_us)
            return counted + actions + self._mcp_continue(actions)
        if isinstance(event, InputCommitted):
            self.frames_since_commit = self.bytes_since_commit = 0
            return []
        if isinstance(event, TranscriptDone):
            self.partial.pop(event.item_id, None)
            return self._transcript("assistant", event.transcript, event.item_id)
        if isinstance(event, InputTranscript):
            return self._transcript("user", event.transcript, event.item_id)
        if isinstance(event, ServerError):
            return self._error(event)
        if isinstance(event, ApprovalRequest):
            return self._mcp_approval(event)
        if isinstance(event, McpCallStarted) and self.mcp is not None:
            self.mcp.in_progress(event.item_id, now_us)
        if isinstance(event, IdleTimeout) and self.idle is not None:
            over = self.idle.timeout()
            return [
                WriteEvent(
                    CallEvent(
                        "idle",
                        {"timeouts": str(self.idle.timeouts), "hang_up": "1" if over else "0"},
                    )
                )
            ]
        return []

    # --- a silent caller --------------------------------------------------------------------------
    def _idle_done(self, event: ResponseDone, now_us: int) -> list[Action]:
        idle = self.idle
        if idle is None or self.active_response is not None:
            return []
        unheard_us = int(self.heard.unheard_ms() * 1000)
        if idle.response_done(event.response_id, unheard_us, now_us):
            return [send(self.dialect.response_create(GOODBYE))]
        return []

    def _idle_due(self, now_us: int) -> list[Action]:
        """The goodbye was heard: the call ends as a hang_up tool ends it."""
        idle = self.idle
        if idle is None or not idle.ends_now(self.heard.playing() is not None, now_us):
            return []
        return [
            SetDisposition("hang_up", ""),
            WriteCommand(HangUp(IDLE_REASON)),
            EndCall(IDLE_REASON),
        ]

    # --- remote MCP calls ------------------------------------------------------------------------
    def _mcp_approval(self, request: ApprovalRequest) -> list[Action]:
        """Answer the model's request to call an MCP tool from the agent file's approve list
        (refused when the agent has no such server), and record the decision."""
        if self.mcp is None:
            self.mcp = CallMcp({})  # refuse: nothing in the file approves anything
        item, record = self.mcp.approval(request)
        if item is None:
            return []
        actions: list[Action] = [
            send(self.dialect.mcp_approval_response(item)),
            WriteEvent(CallEvent("mcp_call", record)),
        ]
        return actions + self._mcp_continue([])

    def _mcp_done(self, event: ResponseDone, now_us: int) -> list[Action]:
        if self.mcp is None or not event.mcp_calls:
            return []
        return [
            WriteEvent(CallEvent("mcp_call", r)) for r in self.mcp.done(event.mcp_calls, now_us)
        ]

    def _mcp_continue(self, actions: list[Action]) -> list[Action]:
        """The ``response.create`` an approval is owed, once no response is active (and none
        is being asked for by ``actions`` already)."""
        if self.mcp is None or self.active_response is not None:
            return []
        asked = any(isinstance(a, SendToModel) and '"response.create"' in a.text for a in actions)
        if self.mcp.continue_now() and not asked:
            return [send(self.dialect.response_create())]
        return []

    def _audio(self, delta: AudioDelta, now_us: int) -> list[Action]:
        if delta.response_id in self.cancelled or not delta.audio:
            return []
        actions: list[Action] = []
        if delta.response_id not in self.reply_started:
            self.reply_started.add(delta.response_id)
            if self.speech_stopped_us is not None:
                actions.append(Measure("first_reply", (now_us - self.speech_stopped_us) / 1e6))
                self.speech_stopped_us = None
        item = delta.item_id
        self.item_response[item] = delta.response_id
        offset = self.item_offset_us.get(item, 0)
        duration_us = len(delta.audio) * 1_000_000 // (2 * self.rate)
        self.item_offset_us[item] = offset + duration_us
        self.heard.sent(item, (offset + duration_us) / 1000)
        actions.append(
            WriteOutbound(OutboundChunk(delta.audio, delta.response_id, item, offset, now_us))
        )
        return actions

    def _barge_in(self) -> list[Action]:
        """The caller started speaking: if a reply is still playing, stop it where they are."""
        item = self.heard.playing()
        if item is None:
            return []
        response_id = self.item_response.get(item, "")
        self.cancelled.add(response_id)
        heard_ms = self.heard.cut(item)
        return [
            WriteCommand(ClearPlayback(response_id)),
            send(self.dialect.truncate(item, heard_ms)),
        ]

    def _transcript(self, role: Role, text: str, item_id: str) -> list[Action]:
        text = text.strip()
        if not text:
            return []
        self.transcript.append((role, text))
        who = "caller" if role == "user" else "assistant"
        return [
            WriteEvent(CallEvent("transcript", {"role": who, "text": text, "item_id": item_id}))
        ]

    def _error(self, error: ServerError) -> list[Action]:
        code = error.code or error.type or "unknown"
        if self.tools is not None:
            # A response.create of ours refused (one was active after all): ask again later.
            self.tools.awaiting_response = False
        self.errors[code] = self.errors.get(code, 0) + 1
        actions: list[Action] = [
            WriteEvent(CallEvent("error", {"code": code, "message": error.message[:500]}))
        ]
        if error.kind is ErrorKind.FATAL:
            actions.append(EndCall(f"realtime_{code}"))
        return actions

    def tick(self, now_us: int) -> list[Action]:
        """What is due now (called after each batch of the caller's entries, and when a
        response ends): tool outputs to deliver, a call the model ended to hang up once its
        last words were heard, a word to the caller while a slow tool runs."""
        tools = self.tools
        if tools is None:
            return self._idle_due(now_us)
        busy = self.active_response is not None or tools.awaiting_response
        actions: list[Action] = [] if busy else tools.deliver(self.dialect)
        busy = busy or tools.awaiting_response
        return actions + tools.due(self.heard, now_us, busy, self.dialect) + self._idle_due(now_us)

    def restore(self, transcript: Sequence[tuple[Role, str]], greeted: bool) -> None:
        """After a worker restart: what the previous owner had (read back from Redis)."""
        self.transcript = list(transcript)
        self.greeted = greeted or bool(transcript)
