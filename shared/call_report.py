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
