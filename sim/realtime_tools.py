"""Function calling in the emulator, as the live API does it in each dialect.

The emulator's model never decides to call a tool by itself: a test or the demo scripts it with
:class:`ScriptedToolCall` ("at the caller's Nth turn, call NAME with ARGUMENTS"), through the
emulator's own constructor or ``--tool-call N:NAME:JSON`` (product code never uses either). The
call is made only if the session declared a function of that name, in the response that answers
that turn, after its audio: ``response.output_item.added`` (a ``function_call`` item),
``response.function_call_arguments.delta`` / ``.done`` (GA with ``name``, beta without),
``response.output_item.done``, and the item listed in ``response.done``'s output.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ScriptedToolCall:
    # The caller's turn whose answer makes the call: 1 is the first thing said to the emulator,
    # counted over all its sessions (a call that moved to a new session goes on counting); 0 is
    # the first turn of every session (every call, in a demo or a benchmark).
    turn: int
    name: str
    arguments: dict[str, Any]

    @classmethod
    def parse(cls, spec: str) -> ScriptedToolCall:
        """``N:NAME:JSON`` (the CLI's ``--tool-call``); ValueError naming what is wrong."""
        turn, sep, rest = spec.partition(":")
        name, sep2, args = rest.partition(":")
        if not (sep and sep2 and turn.isdigit() and name):
            raise ValueError(f"--tool-call wants N:NAME:JSON (N=0: every session), got {spec!r}")
        value = json.loads(args or "{}")
        if not isinstance(value, dict):
            raise ValueError("--tool-call's arguments must be a JSON object")
        return cls(int(turn), name, value)


def check_declared_tools(tools: Any, param: str) -> list[dict[str, Any]]:
    """The function tools a session.update declares, checked as the live API checks them."""
    from sim.realtime_rules import Rejection

    if not isinstance(tools, list):
        raise Rejection("invalid_type", f"Invalid type for '{param}': expected an array.", param)
    for i, tool in enumerate(tools):
        where = f"{param}[{i}]"
        if not isinstance(tool, dict):
            raise Rejection("invalid_type", f"Invalid type for '{where}'.", where)
        if tool.get("type", "function") != "function":
            continue  # MCP tools (GA) are not emulated; they are accepted and never called
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise Rejection(
                "missing_required_parameter",
                f"Missing required parameter: '{where}.name'.",
                f"{where}.name",
            )
        params = tool.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise Rejection(
                "invalid_type", f"Invalid type for '{where}.parameters'.", f"{where}.parameters"
            )
    return list(tools)


def function_call_item(item_id: str, call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "function_call",
        "status": "completed",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


async def stream_function_call(
    send: Send, dialect: str, response_id: str, output_index: int, item: dict[str, Any]
) -> None:
    """The events of one function call item, as each dialect sends them."""
    ids = {"response_id": response_id, "item_id": item["id"], "output_index": output_index}
    added = {**item, "status": "in_progress", "arguments": ""}
    await send(
        {
            "type": "response.output_item.added",
            "response_id": response_id,
            "output_index": output_index,
            "item": added,
        }
    )
    created = "conversation.item.added" if dialect == "ga" else "conversation.item.created"
    await send({"type": created, "previous_item_id": None, "item": added})
    call = {**ids, "call_id": item["call_id"]}
    await send(
        {"type": "response.function_call_arguments.delta", **call, "delta": item["arguments"]}
    )
    done = {"type": "response.function_call_arguments.done", **call, "arguments": item["arguments"]}
    if dialect == "ga":
        done["name"] = item["name"]
    await send(done)
    await send(
        {
            "type": "response.output_item.done",
            "response_id": response_id,
            "output_index": output_index,
            "item": item,
        }
    )
    if dialect == "ga":
        await send({"type": "conversation.item.done", "previous_item_id": None, "item": item})
