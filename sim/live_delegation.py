"""Delegation in the Live emulator: the events of a delegated task, built (pure, no I/O).

The emulated model delegates only when a test scripts it (:class:`~sim.realtime_tools.
ScriptedToolCall`, "at the caller's Nth turn, call NAME with ARGUMENTS", the same
``--tool-call`` / ``tool_calls=`` the Realtime emulator takes):

* Responses delegation (``{type: "responses", responses: {model, tools: [FunctionTool...]}}``),
  for a function the session declared: ``session.delegation.created`` (target ``responses``,
  a ``response_id``), then ``response.event`` envelopes carrying the backend's Responses stream
  (``response.created`` ... ``response.output_item.done`` with a ``function_call`` item ...
  ``response.completed``). The client answers every call with ``response.item.create``
  (a ``function_call_output``) and then one ``response.create``; the continuation is a new
  backend response under the same delegation (a message carrying what the tools answered), and
  the live model speaks it.
* Client delegation (``{type: "client"}``, or null): ``session.delegation.created`` with an id
  and nothing else; the client may answer with ``session.commentary.append`` naming that id.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}{next(_ids)}"


@dataclass
class Delegation:
    """One delegated task: its backend responses, the calls they made and their outputs."""

    id: str
    target: str  # "responses" or "client"
    offset_ms: int
    turn: int  # the caller's turn (emulator-wide count) that led to it
    response_ids: list[str] = field(default_factory=list)
    calls: dict[str, str] = field(default_factory=dict)  # call_id -> function name
    arguments: dict[str, str] = field(default_factory=dict)  # call_id -> JSON text
    outputs: dict[str, str] = field(default_factory=dict)  # call_id -> output
    continued: int = 0  # response.create continuations accepted

    @property
    def waiting(self) -> bool:
        """Whether its last backend response made calls that have not been continued yet."""
        return bool(self.calls) and self.continued < self._rounds

    _rounds: int = 0  # backend responses that made calls

    def missing(self) -> list[str]:
        return [c for c in self.calls if c not in self.outputs]


def created_event(d: Delegation) -> dict[str, Any]:
    body: dict[str, Any] = {"id": d.id, "target": d.target, "type": "delegation"}
    if d.target == "responses":
        body["response_id"] = d.response_ids[-1]
    return {"type": "session.delegation.created", "delegation": body, "offset_ms": d.offset_ms}


def _snapshot(response_id: str, model: str, status: str) -> dict[str, Any]:
    # Lifecycle snapshots omit input and clear instructions, tools and output (the types'
    # documentation of response.event); the granular events carry the content.
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "model": model,
        "status": status,
        "output": [],
        "instructions": None,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
    }


def function_call_response(
    d: Delegation, model: str, calls: list[tuple[str, dict[str, Any]]]
) -> list[dict[str, Any]]:
    """A new backend response of ``d`` that calls each (name, arguments): its inner events."""
    response_id = new_id("resp")
    d.response_ids.append(response_id)
    d._rounds += 1
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": _snapshot(response_id, model, "in_progress")},
        {"type": "response.in_progress", "response": _snapshot(response_id, model, "in_progress")},
    ]
    for index, (name, arguments) in enumerate(calls):
        call_id, item_id, text = new_id("call"), new_id("fc"), json.dumps(arguments)
        d.calls[call_id] = name
        d.arguments[call_id] = text
        item = {"type": "function_call", "id": item_id, "call_id": call_id, "name": name}
        at = {"item_id": item_id, "output_index": index}
        events += [
            {
                "type": "response.output_item.added",
                "output_index": index,
                "item": {**item, "arguments": "", "status": "in_progress"},
            },
            {"type": "response.function_call_arguments.delta", **at, "delta": text},
            {"type": "response.function_call_arguments.done", **at, "arguments": text},
            {
                "type": "response.output_item.done",
                "output_index": index,
                "item": {**item, "arguments": text, "status": "completed"},
            },
        ]
    events.append(
        {"type": "response.completed", "response": _snapshot(response_id, model, "completed")}
    )
    return _numbered(events)


def message_response(d: Delegation, model: str, text: str) -> list[dict[str, Any]]:
    """The continuation after the tools answered: a new backend response under ``d`` whose
    message is ``text`` (what the live model then says)."""
    response_id = new_id("resp")
    d.response_ids.append(response_id)
    item_id = new_id("msg")
    at = {"item_id": item_id, "output_index": 0, "content_index": 0}
    part = {"type": "output_text", "text": text, "annotations": []}
    message = {"type": "message", "id": item_id, "role": "assistant"}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": _snapshot(response_id, model, "in_progress")},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {**message, "status": "in_progress", "content": []},
        },
        {"type": "response.content_part.added", **at, "part": {**part, "text": ""}},
        {"type": "response.output_text.delta", **at, "delta": text, "logprobs": []},
        {"type": "response.output_text.done", **at, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **at, "part": part},
        {
            "type": "response.output_item.done",
            "output_index": 0,
            "item": {**message, "status": "completed", "content": [part]},
        },
        {"type": "response.completed", "response": _snapshot(response_id, model, "completed")},
    ]
    return _numbered(events)


def _numbered(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**e, "sequence_number": n} for n, e in enumerate(events)]
