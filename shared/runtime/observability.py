"""Structured logs and Prometheus metrics, the same for every service.

Logs: one JSON object a line on standard output (supervisord and container runtimes collect it
there), with ``call_sid``/``stream_sid`` taken from context variables that each call's task sets,
so every line about a call carries them without threading them through every call. Secrets are
registered at start and scrubbed from every line as a last line of defence.

Metrics: one registry per process; the edge serves it on its own port, the other services through
:func:`serve_metrics` on ``METRICS_PORT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import re
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

call_sid_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("call_sid", default=None)
stream_sid_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "stream_sid", default=None
)
_secrets: list[str] = []
_service = "gateway"


def register_secret(value: str | None) -> None:
    """Never let ``value`` reach a log line (it is replaced by ``***``)."""
    if value and len(value) >= 6 and value not in _secrets:
        _secrets.append(value)


def register_settings_secrets(settings: Any) -> None:
    """The OpenAI key, the Twilio token and shared key, the console token, and any password in
    ``REDIS_URL``."""
    from urllib.parse import urlsplit

    for secret in (
        settings.openai_api_key,
        settings.twilio_auth_token,
        settings.twilio_shared_key_secret,
        getattr(settings, "tools_signing_secret", None),
        getattr(settings, "console_token", None),
    ):
        register_secret(secret.get_secret_value() if secret else None)
    register_secret(urlsplit(settings.redis_url).password)


def scrub(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


class JsonFormatter(logging.Formatter):
    _skip = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "service": _service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        call_sid = call_sid_var.get()
        if call_sid:
            entry["call_sid"] = call_sid
        stream_sid = stream_sid_var.get()
        if stream_sid:
            entry["stream_sid"] = stream_sid
        for key, value in record.__dict__.items():
            if key not in self._skip and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return scrub(json.dumps(entry, default=str, ensure_ascii=False))


def setup_logging(service: str, level: str = "INFO") -> None:
    """JSON lines on stdout for the whole process."""
    global _service
    _service = service
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # websockets logs every failed handshake at INFO with a traceback; ours are counted instead.
    logging.getLogger("websockets").setLevel(logging.WARNING)


def bind_call(call_sid: str | None, stream_sid: str | None = None) -> None:
    """Tag every later log line of the current task, and of the tasks it starts, with the call's
    SIDs: for a task that serves one call from start to end (a context variable set in a task
    lives and dies with it)."""
    call_sid_var.set(call_sid)
    stream_sid_var.set(stream_sid)


@contextlib.contextmanager
def call_context(call_sid: str | None, stream_sid: str | None = None) -> Iterator[None]:
    """Tag every log line inside with the call's SIDs."""
    t1 = call_sid_var.set(call_sid)
    t2 = stream_sid_var.set(stream_sid)
    try:
        yield
    finally:
        call_sid_var.reset(t1)
        stream_sid_var.reset(t2)


# --- metrics ---------------------------------------------------------------------------------
# Fine below 20 ms: the pipeline's budget per hop is a few milliseconds, and percentiles are
# interpolated from these buckets by the benchmark.
_MS = (
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.004,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)

ACTIVE_CALLS = Gauge("gateway_active_calls", "Calls this process is serving now")
CALLS = Counter("gateway_calls_total", "Calls this process served, by outcome", ["outcome"])
CONNECT_ACTIONS = Counter(
    "gateway_connect_actions_total",
    "Twilio's <Connect action> requests after a stream ended, by what the edge answered",
    ["answer"],
)
STREAM_RESUMES = Counter(
    "gateway_stream_resumes_total",
    "Calls whose Media Stream broke and went on on a new one, by step: granted (a <Connect "
    "action> answered with a new stream), resumed (the new stream taken as the same call), "
    "refused (a grant that did not match), handed_over (the old edge saw the call go on "
    "elsewhere), not_resumed (no new stream came within EDGE_RESUME_GRACE_SECONDS)",
    ["step"],
)
STREAM_EVENTS = Counter(
    "gateway_stream_events_total", "Twilio's Media Stream status callbacks, by event", ["event"]
)
REDIS_ROUND_TRIPS = Counter(
    "gateway_redis_round_trips_total",
    "Batches the per-frame loops sent to Redis, one round trip each, by loop (read: the shared "
    "reader, its writes riding along; write: the batched writer)",
    ["loop"],
)
FRAMES = Counter(
    "gateway_frames_total", "Audio entries handled, by direction (in: caller->model)", ["direction"]
)
HOP_LATENCY = Histogram(
    "gateway_hop_latency_seconds",
    "Pipeline delay per hop: edge_to_openai (Twilio frame in -> append sent), "
    "openai_to_edge (delta received -> Twilio media sent)",
    ["hop"],
    buckets=_MS,
)
FIRST_REPLY = Histogram(
    "gateway_first_reply_seconds",
    "From the caller's end of speech (or the call's start, for a greeting) to first reply audio",
    buckets=(0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
)
REALTIME_ERRORS = Counter("gateway_realtime_errors_total", "OpenAI error events by code", ["code"])
RECONNECTS = Counter("gateway_reconnects_total", "Reconnects by target", ["target"])
BETA_RETIRED = Counter(
    "gateway_realtime_beta_retired_total",
    "Sessions the server refused in the beta dialect as retired (beta_api_shape_disabled) and "
    "that went on in GA (combo A); after the first, a process opens GA directly",
)
ROLLOVERS = Counter(
    "gateway_session_rollovers_total",
    "Calls moved to a new Realtime session before the old one reached its time limit",
)
RECOVERED = Counter(
    "gateway_calls_recovered_total", "Calls taken over from a dead or restarted instance"
)
REANNOUNCED = Counter(
    "gateway_calls_reannounced_total", "Calls the edge registered again after Redis lost them"
)
REJECTED = Counter("gateway_rejected_total", "Inputs rejected, by reason", ["reason"])
# A stage instance's load, for an autoscaler (docs/deploy.md, "Load metrics").
STAGE_CALLS = Gauge(
    "gateway_stage_calls",
    "Calls this stage instance holds now (the tool runner: tool calls it is running)",
    ["stage"],
)
LOOP_LAG = Gauge(
    "gateway_loop_lag_seconds",
    "How late the event loop's periodic timer fires, smoothed (shared/loop_load.py)",
    ["stage"],
)
SATURATION = Gauge(
    "gateway_saturation",
    "The event loop's load from 0 to 1: its smoothed lag over one 20 ms frame, capped at 1",
    ["stage"],
)
MCP_CALLS = Counter(
    "gateway_mcp_calls_total",
    "Remote MCP calls, by the agent file's server label and outcome (approved, refused: the "
    "gateway's answers to approval requests; ok, error: the calls the server ran)",
    ["server", "outcome"],
)
REALTIME_TOKENS = Counter(
    "gateway_realtime_tokens_total",
    "Tokens the Realtime sessions used, from response.done's usage, by kind (text_in, "
    "text_cached, audio_in, audio_cached, image_in, image_cached, text_out, audio_out)",
    ["kind"],
)

_LABEL_RE = re.compile(r"^[a-z0-9_.]{1,48}$")


def label(value: str) -> str:
    """A metric label from outside data: kept only if short and plain, so no value can leak."""
    return value if _LABEL_RE.match(value) else "other"


def reject(reason: str, count: int = 1) -> None:
    REJECTED.labels(label(reason)).inc(count)


def metrics_text() -> bytes:
    return generate_latest()


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on the event loop (no thread). Closing it also
    drops the connections still open: one that never sends a request (a load balancer's spare, a
    port scan) must not hold a service's clean stop.

    ``/healthz``: 200 while Redis answers (the process can work). ``/readyz``: 200 while the
    stage takes new calls; otherwise 503 with the reason ``unready`` gives (e.g. ``stopping``).
    """

    def __init__(
        self,
        healthy: Callable[[], Awaitable[bool]],
        unready: Callable[[], Awaitable[str | None]] | None = None,
    ) -> None:
        self._healthy = healthy
        self._unready = unready
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> MetricsServer:
        self._server = await asyncio.start_server(self._handle, host, port)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        sockets: Any = getattr(self._server, "sockets", ())  # asyncio.Server's; not the ABC's
        return int(sockets[0].getsockname()[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            parts = head.split(b" ", 2)
            path = parts[1].split(b"?")[0] if len(parts) > 1 else b""
            if path == b"/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, metrics_text()
            elif path == b"/healthz":
                ok = await self._healthy()
                status = "200 OK" if ok else "503 Service Unavailable"
                ctype, body = "text/plain", b"ok\n" if ok else b"unhealthy\n"
            elif path == b"/readyz":
                reason = await self._unready() if self._unready else None
                status = "200 OK" if reason is None else "503 Service Unavailable"
                ctype = "text/plain"
                body = b"ready\n" if reason is None else f"not ready: {reason}\n".encode()
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


async def serve_metrics(
    host: str,
    port: int,
    healthy: Callable[[], Awaitable[bool]],
    unready: Callable[[], Awaitable[str | None]] | None = None,
) -> MetricsServer:
    """Start a :class:`MetricsServer` on ``host:port``."""
    return await MetricsServer(healthy, unready).start(host, port)
