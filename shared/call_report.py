"""The end-of-call report (``POST_CALL_WEBHOOK_URL``): what it says and how it is sent.

Pure. The worker that ends a call writes one :class:`ReportRequest` on ``gw:reports`` (the
call's SID and the model's ``analysis``, or why there is none); a tool runner takes it through a
consumer group, reads the call's keys, builds the report here (:func:`build_report`, the same
fold of the call's events the console shows) and POSTs it, signed like the tool requests, with
an ``Idempotency-Key`` that is the same on every try. The entry is acknowledged only once the
receiver answered 2xx (or refused it for good), so a sender that dies mid-delivery leaves it
pending, and it is delivered again: at least once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from shared.call_view import Origin, TimedEvent, detail
from shared.streams import StreamEntryError, valid_call_sid
from shared.tool_requests import SIGNATURE_HEADER, sign
from shared.usage import Prices

REPORT_VERSION = 1
MAX_ANALYSIS_BYTES = 16_384


@dataclass(frozen=True, slots=True)
class ReportRequest:
    """A report to send: the call, and the model's analysis (or why there is none)."""

    call_sid: str
    analysis: Mapping[str, Any] | None = None
    analysis_missing: str = ""

    def encode(self) -> dict[bytes, bytes]:
        fields = {b"call_sid": self.call_sid.encode()}
        if self.analysis is not None:
            fields[b"analysis"] = json.dumps(self.analysis, separators=(",", ":")).encode()
        if self.analysis_missing:
            fields[b"analysis_missing"] = self.analysis_missing.encode()
        return fields


def decode_report_request(fields: Mapping[bytes, bytes]) -> ReportRequest:
    """Raises :class:`StreamEntryError` for an entry no sender can use."""
    sid = fields.get(b"call_sid", b"").decode("utf-8", "replace")
    if not valid_call_sid(sid):
        raise StreamEntryError("bad_call_sid", repr(sid[:80]))
    analysis: Any = None
    if b"analysis" in fields:
        try:
            analysis = json.loads(fields[b"analysis"])
        except ValueError:
            raise StreamEntryError("bad_analysis", sid) from None
        if not isinstance(analysis, dict):
            raise StreamEntryError("bad_analysis", sid)
    missing = fields.get(b"analysis_missing", b"").decode("utf-8", "replace")
    return ReportRequest(sid, analysis, missing)


def build_report(
    origin: Origin,
    meta: dict[bytes, bytes],
    events: Sequence[TimedEvent],
    request: ReportRequest,
    prices: Prices,
    recording: str | None = None,
) -> dict[str, Any]:
    """The report's JSON object. Times are epoch milliseconds."""
    view = detail(origin, meta, events)
    s = view.summary
    usage = view.usage.report(prices)
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "call_sid": s.call_sid,
        "direction": s.direction,
        "from": s.from_,
        "to": s.to,
        "start": s.started_at,
        "end": s.ended_at,
        "outcome": s.outcome,
        "end_reason": s.end_reason,
        "transcript": [asdict(t) for t in view.transcript],
        "tool_calls": [asdict(t) for t in view.tools],
        "mcp_calls": view.mcp_calls,
        "dtmf": view.dtmf,
        "barge_ins": [asdict(b) for b in view.barge_ins],
        "usage": usage,
        "estimated_cost_usd": usage["estimated_cost_usd"],
        "recording": recording,
        "analysis": dict(request.analysis) if request.analysis is not None else None,
    }
    if request.analysis is None:
        report["analysis_missing"] = request.analysis_missing or "no analysis was asked for"
    return report


def report_body(report: Mapping[str, Any]) -> bytes:
    return json.dumps(report, separators=(",", ":"), ensure_ascii=False).encode()


def report_headers(call_sid: str, body: bytes, secret: str | None, now_s: int) -> dict[str, str]:
    """Headers of every try of one call's report: the same ``Idempotency-Key`` each time, a
    fresh signature (``X-Gateway-Signature``, the tool requests' recipe) when a secret is set."""
    headers = {
        "Content-Type": "application/json",
        "Idempotency-Key": f"report-{call_sid}",
        "User-Agent": "voice-gateway-report/1",
    }
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, now_s, body)
    return headers


def delivered(status: int) -> bool | None:
    """``True``: delivered; ``None``: try again later (408, 429, 5xx); ``False``: the receiver
    refuses it for good (other 4xx, 3xx): dropped, logged and counted."""
    if 200 <= status < 300:
        return True
    if status in (408, 429) or status >= 500:
        return None
    return False


# --- the model's analysis -----------------------------------------------------------------------

ANALYSIS_MARKER = "JSON Schema:"


def analysis_instructions(schema: Mapping[str, Any]) -> str:
    """What the model is told at the call's end (the schema last, after :data:`ANALYSIS_MARKER`)."""
    return (
        "The call has ended. Do not speak. Write an analysis of the whole conversation as one "
        "JSON object, and nothing else (no prose, no code fence), that validates against this "
        f"{ANALYSIS_MARKER}\n{json.dumps(schema, separators=(',', ':'))}"
    )


@dataclass
class AnalysisWait:
    """Waiting for the analysis response: fed the server's raw messages after the request was
    sent; :attr:`result` is set once it is known (the analysis, or why there is none)."""

    schema: Mapping[str, Any]
    response_id: str = ""
    result: tuple[dict[str, Any] | None, str] | None = None

    def feed(self, message: str | bytes) -> bool:
        """One server message; ``True`` once the wait is over."""
        try:
            event = json.loads(message)
        except (ValueError, UnicodeDecodeError):
            return False
        if not isinstance(event, dict):
            return False
        kind = event.get("type")
        response = event.get("response") if isinstance(event.get("response"), dict) else {}
        assert isinstance(response, dict)
        if kind == "response.created" and not self.response_id:
            metadata = response.get("metadata")
            ours = not isinstance(metadata, dict) or metadata.get("purpose") == "gateway_analysis"
            if ours:
                self.response_id = str(response.get("id", ""))
        elif kind == "error" and not self.response_id:
            error = event.get("error") if isinstance(event.get("error"), dict) else {}
            assert isinstance(error, dict)
            code = str(error.get("code") or "")
            if code != "response_cancel_not_active":  # our cancel of nothing: harmless
                self.result = (None, f"the model refused the analysis request ({code})")
        elif (
            kind == "response.done" and self.response_id and response.get("id") == self.response_id
        ):
            self.result = parse_analysis(_response_text(response), self.schema)
        return self.result is not None


def _response_text(response: Mapping[str, Any]) -> str:
    parts = []
    for item in response.get("output") or []:
        for content in item.get("content") or [] if isinstance(item, dict) else []:
            if isinstance(content, dict) and isinstance(content.get("text"), str):
                parts.append(content["text"])
    return "".join(parts)


def parse_analysis(text: str, schema: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The model's text as the analysis: a JSON object valid against ``schema`` (a code fence
    around it is tolerated), or ``None`` and why not."""
    from jsonschema import Draft202012Validator

    body = text.strip()
    if body.startswith("```"):
        body = body.strip("`").removeprefix("json").strip()
    if len(body.encode()) > MAX_ANALYSIS_BYTES:
        return None, f"the model's analysis is longer than {MAX_ANALYSIS_BYTES} bytes"
    try:
        value = json.loads(body)
    except ValueError:
        return None, "the model's analysis is not JSON"
    if not isinstance(value, dict):
        return None, "the model's analysis is not a JSON object"
    error = next(iter(Draft202012Validator(schema).iter_errors(value)), None)
    if error is not None:
        return None, f"the model's analysis does not fit the schema: {error.message[:200]}"
    return value, ""
