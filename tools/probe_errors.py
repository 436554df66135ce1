"""What an endpoint said, kept for a probe's report: a server ``error`` event verbatim and JSON
trimmed to a readable size.

A leaf: the dialect probe's judgement (:mod:`tools.probe_findings`) and the GPT-Live probe
(:mod:`tools.probe_live`) both record errors this way without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BETA_DISABLED_CODE = "beta_api_shape_disabled"


@dataclass(frozen=True)
class ErrorSeen:
    """A server ``error`` event's payload, verbatim."""

    code: str | None = None
    message: str | None = None
    param: str | None = None
    type: str | None = None
    event_id: str | None = None
    gateway_kind: str | None = None  # how the gateway's dialect layer classifies it

    @classmethod
    def from_event(cls, event: dict[str, Any]) -> ErrorSeen:
        body = event.get("error")
        body = body if isinstance(body, dict) else {}

        def text(key: str) -> str | None:
            value = body.get(key)
            return None if value is None else str(value)

        return cls(text("code"), text("message"), text("param"), text("type"), text("event_id"))

    @property
    def beta_disabled(self) -> bool:
        return self.code == BETA_DISABLED_CODE or BETA_DISABLED_CODE in (self.message or "")


def trim(value: Any, depth: int = 0) -> Any:
    """A copy of a JSON value small enough for a report: long strings and lists are cut."""
    if isinstance(value, str):
        return value if len(value) <= 120 else value[:117] + "..."
    if depth >= 6:
        return "..."
    if isinstance(value, dict):
        return {str(k): trim(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        head = [trim(v, depth + 1) for v in value[:8]]
        return head + [f"... (+{len(value) - 8})"] if len(value) > 8 else head
    return value
