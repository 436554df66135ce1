"""One call's function calls, sans I/O: which to run, what the model gets back and when, and the
model hanging up or transferring once the caller has heard its last words.

Fed by the conversation core (:mod:`shared.conversation`): the calls a completed response made,
the tool runner's results, returned marks and the time. It returns actions
(:mod:`shared.call_actions`). The rules:

* Only a completed response's calls run (a barge-in cancels the response, and its calls with it).
* An HTTP tool goes to the tool runner (:class:`~shared.call_actions.RunTool`); at most
  ``max_calls`` a call and ``max_in_flight`` at once, beyond which the model is told so at once.
* Outputs go to the model as ``function_call_output`` items, then one ``response.create``, never
  while a response is active (the live API refuses that): they wait for ``response.done``.
* A result for a call this session did not make (the worker died and a new session took over)
  reaches the model as a system text item: the function call item went with the old session.
* ``hang_up`` and ``transfer`` end the call only after the caller has heard what the model said
  (the returned marks), or after what was left to play plus a margin, if marks stop coming.
* A tool still running after ``filler_after_us`` gets the model to say, out of band, that it is
  still on it, once: the caller does not sit in dead air.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from shared.agent import Tool
from shared.call_actions import (
    Action,
    EndCall,
    RunTool,
    SetDisposition,
    WriteCommand,
    WriteEvent,
    send,
)
from shared.playback import HeardTracker
from shared.realtime_dialect import FunctionCall
from shared.streams import (
    MAX_TOOL_ARGUMENTS_BYTES,
    MAX_TOOL_OUTPUT_BYTES,
    CallEvent,
    HangUp,
    ToolCall,
    ToolResult,
)

ENDING_MARGIN_US = 2_000_000  # past the audio left to play when marks stop coming back
STILL_WORKING = (
    "A tool you called is still running. In a few words, tell the caller you are still on it. "
    "Do not make up the answer."
)


@dataclass(frozen=True, slots=True)
class CallIdentity:
    """What a tool request says about the call."""

    call_sid: str
    stream_sid: str = ""
    caller: str = ""
    called: str = ""
    parameters: Mapping[str, str] = field(default_factory=dict)


@dataclass
class _InFlight:
    name: str
    started_us: int
    filled: bool = False


@dataclass(frozen=True, slots=True)
class _Ending:
    reason: str  # the call's outcome: model_hung_up | transferred
    disposition: str  # hang_up | transfer
    target: str
    deadline_us: int


class ToolReplies(Protocol):
    """How a dialect words what the tools send the model: :class:`RealtimeDialect` (combos A
    and B) and :class:`shared.live_dialect.LiveReplies` (combo C)."""

    def function_call_output(self, call_id: str, output: str) -> dict[str, Any]: ...

    def system_text_item(self, text: str) -> dict[str, Any]: ...

    def response_create(
        self, instructions: str | None = None, *, out_of_band: bool = False
    ) -> dict[str, Any]: ...


def error_output(message: str, **extra: Any) -> str:
    """A tool output that tells the model what went wrong, so it can say so or ask again."""
    return json.dumps({"error": message, **extra}, separators=(",", ":"))


@dataclass
class CallTools:
    """The tool state of one call, across its Realtime sessions."""

    tools: Mapping[str, Tool]
    identity: CallIdentity
    max_calls: int = 50
    max_in_flight: int = 4
    filler_after_us: int = 3_000_000
    calls_made: int = 0
    in_flight: dict[str, _InFlight] = field(default_factory=dict)
    session_calls: set[str] = field(default_factory=set)  # made in the current session
    answered: set[str] = field(default_factory=set)
    # Outputs waiting for the active response to end: (call_id, name, output).
    waiting: list[tuple[str, str, str]] = field(default_factory=list)
    ending: _Ending | None = None
    # A response.create was sent for our outputs or a word while waiting, and its
    # response.created has not come yet: do not ask for another one meanwhile.
    awaiting_response: bool = False

    # --- the model's calls -------------------------------------------------------------------
    def response_done(
        self,
        calls: tuple[FunctionCall, ...],
        status: str,
        heard: HeardTracker,
        now_us: int,
    ) -> list[Action]:
        """A response ended: run its calls if it completed (and take note of them either way)."""
        if status != "completed":
            return []
        actions: list[Action] = []
        for call in calls:
            if call.call_id in self.answered or call.call_id in self.in_flight:
                continue  # the same call listed again
            actions.extend(self._call(call, heard, now_us))
        return actions

    def _call(self, call: FunctionCall, heard: HeardTracker, now_us: int) -> list[Action]:
        arguments = call.arguments[:MAX_TOOL_ARGUMENTS_BYTES]
        actions: list[Action] = [
            WriteEvent(
                CallEvent(
                    "tool_call",
                    {"call_id": call.call_id, "name": call.name, "arguments": arguments[:2000]},
                )
            )
        ]
        tool = self.tools.get(call.name)
        self.session_calls.add(call.call_id)
        if tool is None:
            return actions + self._answer_now(
                call, error_output(f"there is no tool named {call.name!r}"), "error"
            )
        if len(call.arguments.encode()) > MAX_TOOL_ARGUMENTS_BYTES:
            return actions + self._answer_now(
                call, error_output("the arguments are too long"), "invalid_arguments"
            )
        if tool.kind == "hang_up":
            return actions + self._end(
                "model_hung_up", "hang_up", "", heard, now_us, call, "hanging up"
            )
        if tool.kind == "transfer":
            try:
                args = json.loads(call.arguments or "{}")
            except ValueError:
                args = None
            target = tool.destination(args) if isinstance(args, dict) else None
            if target is None:
                allowed = sorted(tool.destinations)
                return actions + self._answer_now(
                    call,
                    error_output("choose a destination", destinations=allowed),
                    "invalid_arguments",
                )
            return actions + self._end(
                "transferred", "transfer", target, heard, now_us, call, "transferring"
            )
        if self.calls_made >= self.max_calls or len(self.in_flight) >= self.max_in_flight:
            why = (
                f"at most {self.max_calls} tool calls a phone call"
                if self.calls_made >= self.max_calls
                else f"at most {self.max_in_flight} tool calls at once; wait for the others"
            )
            return actions + self._answer_now(call, error_output(why), "limit")
        self.calls_made += 1
        self.in_flight[call.call_id] = _InFlight(call.name, now_us)
        ident = self.identity
        actions.append(
            RunTool(
                ToolCall(
                    ident.call_sid,
                    ident.stream_sid,
                    call.call_id,
                    call.name,
                    arguments,
                    ident.caller,
                    ident.called,
                    dict(ident.parameters),
                )
            )
        )
        return actions

    def _answer_now(self, call: FunctionCall, output: str, outcome: str) -> list[Action]:
        """An answer the gateway gives itself (no tool ran): it waits like any other."""
        self.answered.add(call.call_id)
        self.waiting.append((call.call_id, call.name, output))
        return [_result_event(call.call_id, call.name, outcome, 0, output)]

    def _end(
        self,
        reason: str,
        disposition: str,
        target: str,
        heard: HeardTracker,
        now_us: int,
        call: FunctionCall,
        note: str,
    ) -> list[Action]:
        self.answered.add(call.call_id)
        if self.ending is None:
            left_us = int(heard.unheard_ms() * 1000)
            self.ending = _Ending(reason, disposition, target, now_us + left_us + ENDING_MARGIN_US)
        return [_result_event(call.call_id, call.name, "ok", 0, note)]

    # --- results ---------------------------------------------------------------------------------
    def result(self, result: ToolResult) -> list[Action]:
        """The tool runner's answer; kept until no response is active."""
        if result.call_id in self.answered:
            return []  # a result delivered twice (a runner that died after answering)
        self.answered.add(result.call_id)
        self.in_flight.pop(result.call_id, None)
        output = result.output.encode()[:MAX_TOOL_OUTPUT_BYTES].decode("utf-8", "ignore")
        self.waiting.append((result.call_id, result.name, output))
        return [
            _result_event(result.call_id, result.name, result.outcome, result.duration_ms, output)
        ]

    def deliver(self, dialect: ToolReplies) -> list[Action]:
        """The waiting outputs, now that no response is active, then one response for them."""
        if not self.waiting or self.ending is not None:
            return []
        actions: list[Action] = []
        for call_id, name, output in self.waiting:
            if call_id in self.session_calls:
                actions.append(send(dialect.function_call_output(call_id, output)))
            else:
                actions.append(
                    send(
                        dialect.system_text_item(
                            f"Result of the {name} tool you called earlier "
                            f"(call {call_id}): {output}"
                        )
                    )
                )
        self.waiting.clear()
        actions.append(send(dialect.response_create()))
        self.awaiting_response = True
        return actions

    def idle(self) -> bool:
        """Nothing running, waiting to be told, or ending: the calls' state can change session."""
        return not (self.in_flight or self.waiting or self.awaiting_response or self.ending)

    def new_session(self) -> None:
        """A new Realtime session: the function call items of the old one are gone with it."""
        self.session_calls.clear()

    # --- time and playback -------------------------------------------------------------------
    def due(
        self, heard: HeardTracker, now_us: int, response_active: bool, dialect: ToolReplies
    ) -> list[Action]:
        """What is due now: ending the call once its last words were heard, a word while a
        slow tool runs."""
        ending = self.ending
        if ending is not None:
            waiting = response_active or heard.playing() is not None
            if waiting and now_us < ending.deadline_us:
                return []
            self.ending = None
            return [
                SetDisposition(ending.disposition, ending.target),
                WriteCommand(HangUp(ending.reason)),
                EndCall(ending.reason),
            ]
        if response_active:
            return []
        for flight in self.in_flight.values():
            if not flight.filled and now_us - flight.started_us >= self.filler_after_us:
                flight.filled = True
                self.awaiting_response = True
                return [send(dialect.response_create(STILL_WORKING, out_of_band=True))]
        return []

    def extend_ending(self, deadline_us: int) -> None:
        """Move the ending's deadline (GPT-Live: the goodbye is spoken after the call ends it)."""
        if self.ending is not None:
            self.ending = replace(
                self.ending, deadline_us=max(self.ending.deadline_us, deadline_us)
            )

    @property
    def ending_reason(self) -> str | None:
        return self.ending.reason if self.ending is not None else None


def _result_event(call_id: str, name: str, outcome: str, duration_ms: int, output: str) -> Action:
    return WriteEvent(
        CallEvent(
            "tool_result",
            {
                "call_id": call_id,
                "name": name,
                "outcome": outcome,
                "duration_ms": str(duration_ms),
                "output": output[:2000],
            },
        )
    )
