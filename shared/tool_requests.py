"""An HTTP tool's request and what its answer means for the model, sans I/O.

The tool runner checks the model's arguments against the tool's schema before anything is sent
(invalid JSON or a schema violation goes back to the model, which can ask the caller again),
builds the request (body, ``Idempotency-Key``, ``X-Gateway-Signature``), and turns the answer,
or the lack of one, into the text the model gets.

An answer is read as it arrives and never past ``MAX_TOOL_OUTPUT_BYTES`` (64 KiB,
:class:`CappedBody`): a longer 2xx answer is not used, cut or whole; the model gets an error that
says it was too long (a cut JSON document is not JSON, and half an answer read out as if whole
misleads the caller), and it is counted (``gateway_rejected_total{reason="tool_answer_too_large"}``
and the call's ``error`` outcome).

Signature: ``X-Gateway-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">``
with ``TOOLS_SIGNING_SECRET``. A receiver recomputes it over the raw body and refuses a ``t``
more than 5 minutes away from its clock (:func:`verify_signature` is that recipe).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.agent import Tool
from shared.streams import MAX_TOOL_OUTPUT_BYTES, ToolCall, ToolOutcome

SIGNATURE_HEADER = "X-Gateway-Signature"
SIGNATURE_TOLERANCE_S = 300
RETRY_STATUSES = frozenset({502, 503, 504})  # worth another try within the tool's timeout


@dataclass(frozen=True, slots=True)
class ToolRequest:
    url: str
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class ToolAnswer:
    """What the model gets back, and how the call went (for metrics and the events stream)."""

    output: str
    outcome: ToolOutcome
    status: int = 0


def check_arguments(tool: Tool, arguments: str) -> dict[str, Any] | ToolAnswer:
    """The model's arguments as an object, or the answer that says what is wrong with them."""
    from jsonschema import Draft202012Validator

    try:
        value = json.loads(arguments or "{}")
    except json.JSONDecodeError as exc:
        return _invalid(f"the arguments are not valid JSON ({exc.msg})")
    if not isinstance(value, dict):
        return _invalid("the arguments must be a JSON object")
    errors = sorted(
        Draft202012Validator(dict(tool.parameters)).iter_errors(value), key=lambda e: e.path
    )
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(the arguments)"
        return _invalid(f"{where}: {first.message}")
    return value


def build_request(
    tool: Tool, call: ToolCall, arguments: Mapping[str, Any], secret: str | None, now_s: int
) -> ToolRequest:
    body = json.dumps(
        {
            "call_sid": call.call_sid,
            "call_id": call.call_id,
            "name": call.name,
            "arguments": dict(arguments),
            "from": call.caller,
            "to": call.called,
            "parameters": dict(call.parameters),
        },
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    headers = {
        "Content-Type": "application/json",
        # The same call_id every time the call is tried (a runner that died mid-call, a retry):
        # the tool can tell a repeat from a new request.
        "Idempotency-Key": call.call_id,
    }
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, now_s, body)
    return ToolRequest(tool.url, body, headers)


def sign(secret: str, t: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def verify_signature(secret: str, header: str, body: bytes, now_s: int) -> bool:
    """The receiver's check: the HMAC over the raw body, and ``t`` within 5 minutes."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts.get("t", ""))
    except ValueError:
        return False
    if abs(now_s - t) > SIGNATURE_TOLERANCE_S:
        return False
    expected = sign(secret, t, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


class CappedBody:
    """A tool's answer as it arrives, kept up to ``cap`` bytes and one more: :meth:`take` says
    whether to read on, so an answer of any length costs at most the cap in memory and reading
    stops as soon as it is known to be too long."""

    def __init__(self, cap: int = MAX_TOOL_OUTPUT_BYTES) -> None:
        self.cap = cap
        self._parts: list[bytes] = []
        self._size = 0

    @property
    def too_large(self) -> bool:
        return self._size > self.cap

    def take(self, chunk: bytes) -> bool:
        """Keep ``chunk`` (as much as the cap allows); ``False``: stop reading, it is too long."""
        room = self.cap + 1 - self._size
        if room > 0 and chunk:
            kept = chunk[:room]
            self._parts.append(kept)
            self._size += len(kept)
        return not self.too_large

    def body(self) -> bytes:
        return b"".join(self._parts)


def answer(status: int, body: bytes) -> ToolAnswer:
    """A 2xx answer's body is the output; one longer than 64 KiB (as :class:`CappedBody` keeps
    it: the cap and one byte more) is an error that says so. Any other status tells the model it
    failed, so it can apologise rather than hang."""
    if 200 <= status < 300:
        if len(body) > MAX_TOOL_OUTPUT_BYTES:
            return too_large(status)
        return ToolAnswer(body.decode("utf-8", "replace") or "(empty answer)", "ok", status)
    return failure(f"the tool answered HTTP {status}", status)


def too_large(status: int) -> ToolAnswer:
    limit = f"{MAX_TOOL_OUTPUT_BYTES} bytes (64 KiB)"
    return failure(f"the tool's answer was longer than {limit} and was not used", status)


def failure(message: str, status: int = 0, outcome: ToolOutcome = "error") -> ToolAnswer:
    return ToolAnswer(
        json.dumps({"error": message, "status": status}, separators=(",", ":")), outcome, status
    )


def timed_out(timeout_ms: int) -> ToolAnswer:
    return failure(f"the tool did not answer within {timeout_ms} ms", 0, "timeout")


def _invalid(message: str) -> ToolAnswer:
    return ToolAnswer(
        json.dumps({"error": f"invalid arguments: {message}", "status": 0}, separators=(",", ":")),
        "invalid_arguments",
    )
