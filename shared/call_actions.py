"""What the worker's per-call cores ask their shell to do: the actions they return.

Pure values; the shell (``services/realtime_worker/call.py``) performs them in order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from shared.streams import CallEvent, Command, OutboundChunk, ToolCall


@dataclass(frozen=True, slots=True)
class SendToModel:
    text: str


@dataclass(frozen=True, slots=True)
class WriteOutbound:
    chunk: OutboundChunk


@dataclass(frozen=True, slots=True)
class WriteCommand:
    command: Command


@dataclass(frozen=True, slots=True)
class WriteEvent:
    event: CallEvent


@dataclass(frozen=True, slots=True)
class Measure:
    """A figure for the metrics: ``name`` is ``first_reply`` (seconds)."""

    name: str
    seconds: float


@dataclass(frozen=True, slots=True)
class RunTool:
    """Hand a function call to the tool runner (``gw:tools``)."""

    call: ToolCall


@dataclass(frozen=True, slots=True)
class SetDisposition:
    """Record how the model ended the call (``hang_up``, or ``transfer`` to ``target``) in the
    call's meta, before the hang-up: the edge that answers Twilio's ``<Connect action>``
    request reads it there."""

    kind: str
    target: str = ""


@dataclass(frozen=True, slots=True)
class EndCall:
    reason: str


Action = (
    SendToModel
    | WriteOutbound
    | WriteCommand
    | WriteEvent
    | Measure
    | RunTool
    | SetDisposition
    | EndCall
)


def send(event: dict[str, object]) -> SendToModel:
    """A client event as compact JSON text."""
    return SendToModel(json.dumps(event, separators=(",", ":"), ensure_ascii=False))
