"""The console's HTTP API (FastAPI) and page: calls live and recent, read from Redis.

The console reads Redis only; what it changes goes through Redis too (a supervisor's hang-up is a
``hangup`` command on the call's ``cmd`` stream, which the edge carries out) or through Twilio's
REST API (placing an outbound call). Every ``/api`` route needs ``Authorization: Bearer
<CONSOLE_TOKEN>``; ``/healthz`` and the page's own files, which hold no call data, are open.
What a call looks like is decided by the pure :mod:`shared.call_view`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import call_view as cv
from shared.audio import mulaw_decode
from shared.backoff import Backoff
from shared.outbound import (
    AMD_PATH,
    CALL_STATUS_PATH,
    OutboundError,
    outbound_parameters,
    outbound_twiml,
    valid_e164,
)
from shared.runtime.redis_io import RETRYABLE
from shared.runtime.settings import Settings
from shared.runtime.twilio_rest import (
    NotConfigured,
    TwilioApiError,
    create_call,
    rest_client,
    update_call,
)
from shared.streams import (
    AUDIO,
    DIALED_STREAM,
    META_DIALED_FROM,
    META_DIALED_TO,
    META_DIALED_US,
    CallDialed,
    CallEvent,
    CallKeys,
    HangUp,
    StreamEntryError,
    decode_dialed,
    decode_event,
    decode_lifecycle,
    lifecycle_streams,
    valid_call_sid,
)

log = logging.getLogger("gateway.console")

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY_BYTES = 16 * 1024
SUMMARY_EVENTS = 20  # first and last entries of a call's events read for its line in the list
SSE_BLOCK_MS = 1000  # like every blocking read of the gateway's (see redis_io.SOCKET_TIMEOUT_S)
SSE_KEEPALIVE_S = 5.0
_ENTRY_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_VOICE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
SPEECH_RMS = 300  # a caller frame louder than this (int16 RMS, about -40 dBFS) is speech
# A dialed call of which nothing at all is left after this long has expired (or never rang).
_DIALED_FORGOTTEN_MS = 10 * 60 * 1000


_BEARER = HTTPBearer(auto_error=False, description="CONSOLE_TOKEN")

# --- wire models -------------------------------------------------------------------------------


class CallOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    call_sid: str
    direction: str = Field(description="inbound | outbound")
    from_: str = Field(alias="from")
    to: str
    state: str = Field(description="ringing | in_progress | ended")
    started_at: int = Field(description="epoch ms")
    ended_at: int | None = Field(None, description="epoch ms")
    outcome: str | None = Field(
        None,
        description="caller_hung_up | model_hung_up | transferred | supervisor_hung_up | "
        "voicemail | no_answer | busy | canceled | failed | disconnected | completed",
    )
    end_reason: str | None = Field(None, description="the stage's own end reason")
    dialect: str | None = Field(None, description="Model combo of the session (GA | BETA | LIVE)")
    answered_by: str | None = Field(None, description="Twilio's AMD verdict (outbound)")


class CallsPage(BaseModel):
    calls: list[CallOut]
    next_before: str | None = Field(None, description="pass as ?before= for the next page")


class CallDetailOut(CallOut):
    transcript: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    barge_ins: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    dtmf: list[dict[str, Any]]
    latency: dict[str, Any] = Field(
        description="greeting_ms, first_reply_ms and per reply: end of the caller's turn to the "
        "reply's first audio"
    )
    turns: list[dict[str, Any]] = Field(
        description="who spoke when, from the audio the streams still hold: "
        "{role: caller|assistant, start, end} in epoch ms"
    )
    recording: bool = Field(description="a recording can be fetched at .../recording")


class OutboundIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    to: str = Field(description="E.164, e.g. +15551234567")
    from_: str | None = Field(None, alias="from", description="E.164; default TWILIO_FROM_NUMBER")
    instructions: str | None = Field(None, max_length=1024)
    greeting: str | None = Field(None, max_length=1024)
    voice: str | None = Field(None, max_length=32)
    parameters: dict[str, Annotated[str, Field(max_length=1024)]] | None = Field(
        None, description="more <Parameter>s for the stream (at most 20)"
    )
    machine_detection: bool = Field(
        True, description="answering-machine detection: a machine gets the voicemail message"
    )

    @field_validator("to", "from_")
    @classmethod
    def _e164(cls, value: str | None) -> str | None:
        if value is not None and not valid_e164(value):
            raise ValueError("must be an E.164 phone number: + then up to 15 digits")
        return value

    @field_validator("voice")
    @classmethod
    def _voice(cls, value: str | None) -> str | None:
        if value is not None and not _VOICE.fullmatch(value):
            raise ValueError("must be a voice name (lower case letters, digits, - and _)")
        return value


class PlacedOut(BaseModel):
    call_sid: str
    status: str


# --- helpers -----------------------------------------------------------------------------------


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                await _too_large(scope, receive, send, self.limit)
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _BodyTooLarge:
            await _too_large(scope, receive, send, self.limit)


class _BodyTooLarge(Exception):
    pass


async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    response = JSONResponse({"detail": f"request body larger than {limit} bytes"}, status_code=413)
    await response(scope, receive, send)


def _id_key(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms or 0), int(seq or 0)


def _call_out(summary: cv.CallSummary) -> dict[str, Any]:
    out = asdict(summary)
    out["from"] = out.pop("from_")
    return out


def _keys(call_sid: str) -> CallKeys:
    if not valid_call_sid(call_sid):
        raise HTTPException(404, f"no call {call_sid[:64]!r}: not a CallSid")
    return CallKeys.for_call(call_sid)


def _now_us() -> int:
    return time.time_ns() // 1000


# --- the application ---------------------------------------------------------------------------


def create_app(settings: Settings, redis: aioredis.Redis) -> FastAPI:
    token = settings.console_token.get_secret_value().encode() if settings.console_token else b""
    if not token:
        raise ValueError("CONSOLE_TOKEN is required")
    recordings = Path(settings.recordings_dir) if settings.recordings_dir else None

    async def authorized(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
    ) -> None:
        given = credentials.credentials.encode() if credentials else b""
        if not secrets.compare_digest(given, token):
            raise HTTPException(
                401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    app = FastAPI(
        title="Voice gateway console",
        description="Calls live and recent, outbound calls, recordings. Every /api route needs "
        "`Authorization: Bearer <CONSOLE_TOKEN>`.",
        version="1",
        docs_url=None,  # served below from the vendored Swagger UI: nothing from the internet
        redoc_url=None,
    )
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    try:
        import swagger_ui_bundle  # type: ignore[import-untyped]

        app.mount("/docs-assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path))
        have_swagger = True
    except ImportError:  # pragma: no cover - a test dependency; /openapi.json still works
        have_swagger = False

    api = [Depends(authorized)]

    async def _redis_away(request: Request, exc: Exception) -> JSONResponse:
        log.warning("redis unavailable: %s", exc)
        return JSONResponse({"detail": "the console cannot reach Redis right now"}, 503)

    for error in RETRYABLE:
        app.add_exception_handler(error, _redis_away)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        if not have_swagger:
            return HTMLResponse("Swagger UI is not installed; see /openapi.json", 404)
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="Voice gateway console API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> JSONResponse:
        try:
            ok = bool(await asyncio.wait_for(redis.ping(), 1.0))
        except (*RETRYABLE, TimeoutError):
            ok = False
        return JSONResponse({"ok": ok}, 200 if ok else 503)

    # --- reading calls ----------------------------------------------------------------------

    async def summaries(origins: list[cv.Origin]) -> list[cv.CallSummary]:
        pipe = redis.pipeline(transaction=False)
        for origin in origins:
            keys = CallKeys.for_call(origin.call_sid)
            pipe.hgetall(keys.meta)
            pipe.xrange(keys.events, count=SUMMARY_EVENTS)
            pipe.xrevrange(keys.events, count=SUMMARY_EVENTS)
        replies = await pipe.execute()
        now_ms = _now_us() // 1000
        out: list[cv.CallSummary] = []
        for i, origin in enumerate(origins):
            meta, head, tail = replies[3 * i : 3 * i + 3]
            if not meta and not head:
                if origin.direction == "inbound" or now_ms - origin.started_ms > (
                    _DIALED_FORGOTTEN_MS
                ):
                    continue  # its keys have expired: nothing left to show
            seen = {entry_id for entry_id, _ in head}
            entries = list(head) + [e for e in reversed(tail) if e[0] not in seen]
            out.append(cv.summarize(origin, meta, cv.decode_events(entries)))
        return out

    @app.get("/api/calls", dependencies=api, response_model=CallsPage)
    async def list_calls(
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        before: Annotated[str | None, Query(description="an entry ID from next_before")] = None,
    ) -> dict[str, Any]:
        """Calls in progress and recent, newest first."""
        if before is not None and not _ENTRY_ID.fullmatch(before):
            raise HTTPException(422, "before must be an entry ID like 1700000000000-0")
        high = f"({before}" if before else "+"
        streams = [*lifecycle_streams(settings.lifecycle_partitions), DIALED_STREAM]
        pipe = redis.pipeline(transaction=False)
        for stream in streams:
            pipe.xrevrange(stream, max=high, min="-", count=limit)
        pages = await pipe.execute()
        # Entries older than the oldest of a full page may have newer ones unread in that
        # stream: stop there, and the next page starts there.
        floor = max((_id_key(p[-1][0]) for p in pages if len(p) >= limit), default=(0, 0))
        merged: list[tuple[bytes, bytes, dict[bytes, bytes]]] = sorted(
            (
                (entry_id, stream, fields)
                for stream, p in zip(streams, pages, strict=True)
                for entry_id, fields in p
            ),
            key=lambda e: _id_key(e[0]),
            reverse=True,
        )
        origins: dict[str, cv.Origin] = {}
        last: bytes | None = None
        for entry_id, stream, fields in merged:
            if _id_key(entry_id) < floor or len(origins) >= limit:
                break
            last = entry_id
            try:
                if stream == DIALED_STREAM:
                    origin = cv.Origin.from_dialed(entry_id, decode_dialed(fields))
                else:
                    origin = cv.Origin.from_started(entry_id, decode_lifecycle(fields))
            except StreamEntryError:
                continue
            # An answered outbound call has both entries: the newer (its stream) stands for it.
            origins.setdefault(origin.call_sid, origin)
        more = last is not None and (len(origins) >= limit or any(len(p) >= limit for p in pages))
        calls = [_call_out(s) for s in await summaries(list(origins.values()))]
        return {"calls": calls, "next_before": last.decode() if more and last else None}

    async def load(call_sid: str) -> tuple[CallKeys, cv.Origin, dict[bytes, bytes]]:
        keys = _keys(call_sid)
        meta: dict[bytes, bytes] = await redis.hgetall(keys.meta)  # type: ignore[assignment]
        origin = cv.Origin.from_meta(call_sid, meta)
        if origin is None:
            raise HTTPException(404, f"no call {call_sid}: unknown, or its record has expired")
        return keys, origin, meta

    @app.get("/api/calls/{call_sid}", dependencies=api, response_model=CallDetailOut)
    async def call_detail(call_sid: str) -> dict[str, Any]:
        """One call: its line, transcript, tool calls, barge-ins, errors and latencies."""
        keys, origin, meta = await load(call_sid)
        pipe = redis.pipeline(transaction=False)
        pipe.xrange(keys.events)
        pipe.xrange(keys.cmd)
        pipe.xrange(keys.in_pcmu)
        pipe.xrange(keys.out_pcmu)
        events, commands, inbound, outbound = await pipe.execute()
        clears = [e for e, f in commands if f.get(b"k") == b"clear"]
        view = cv.detail(origin, meta, cv.decode_events(events), clears)
        cleared = [
            (cv.entry_ms(e), f.get(b"r", b"").decode("utf-8", "replace"))
            for e, f in commands
            if f.get(b"k") == b"clear"
        ]
        view.latency, turns = _audio_figures(origin, inbound, outbound, cleared)
        out = _call_out(view.summary)
        out.update(
            transcript=[asdict(t) for t in view.transcript],
            tools=[asdict(t) for t in view.tools],
            barge_ins=[asdict(b) for b in view.barge_ins],
            errors=[asdict(e) for e in view.errors],
            dtmf=view.dtmf,
            latency=view.latency,
            turns=turns,
            recording=bool(recordings and (recordings / f"{call_sid}.wav").is_file()),
        )
        return out

    @app.get("/api/calls/{call_sid}/events", dependencies=api)
    async def call_events(
        call_sid: str,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> StreamingResponse:
        """The call's events as server-sent events (``id`` is the stream entry ID), from the
        start or after ``Last-Event-ID``; the stream closes after the call's end."""
        keys, _, _ = await load(call_sid)
        if last_event_id is not None and not _ENTRY_ID.fullmatch(last_event_id):
            raise HTTPException(400, "Last-Event-ID must be an entry ID like 1700000000000-0")
        start = (last_event_id or "0-0").encode()
        return StreamingResponse(
            _sse(redis, keys, start),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.get(
        "/api/calls/{call_sid}/recording",
        dependencies=api,
        response_class=FileResponse,
        responses={200: {"content": {"audio/wav": {}}}},
    )
    async def recording(call_sid: str) -> FileResponse:
        """The call's stereo WAV: the caller left, what the caller heard right."""
        _keys(call_sid)
        path = recordings / f"{call_sid}.wav" if recordings else None
        if path is None or not path.is_file():
            raise HTTPException(404, f"no recording of {call_sid}")
        return FileResponse(path, media_type="audio/wav", filename=f"{call_sid}.wav")

    # --- changing calls ---------------------------------------------------------------------

    async def twilio(action: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            client = rest_client(settings)
        except NotConfigured:
            raise HTTPException(
                503, "outbound calls need TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN"
            ) from None
        try:
            return await asyncio.to_thread(action, client, *args, **kwargs)
        except TwilioApiError as exc:
            raise _twilio_http_error(exc) from None

    @app.post("/api/calls", dependencies=api, status_code=201, response_model=PlacedOut)
    async def place_call(body: OutboundIn) -> dict[str, str]:
        """Place an outbound call; when answered it is connected to the agent with these
        overrides. With machine detection, a machine gets the voicemail message instead."""
        caller = body.from_ or settings.twilio_from_number
        if not caller:
            raise HTTPException(422, "from is required when TWILIO_FROM_NUMBER is not set")
        if not settings.public_url:
            raise HTTPException(
                503, "PUBLIC_URL is not set: Twilio would not know where to stream the call"
            )
        try:
            params = outbound_parameters(
                body.to,
                caller,
                instructions=body.instructions,
                greeting=body.greeting,
                voice=body.voice,
                parameters=body.parameters,
            )
            twiml = outbound_twiml(
                settings.public_media_url(),
                settings.public_url + "/stream-status",
                params,
            )
        except OutboundError as exc:
            raise HTTPException(422, str(exc)) from None
        request: dict[str, Any] = {
            "to": body.to,
            "from_": caller,
            "twiml": twiml,
            "status_callback": settings.public_url + CALL_STATUS_PATH,
            "status_callback_event": ["initiated", "ringing", "answered", "completed"],
            "status_callback_method": "POST",
        }
        if body.machine_detection:
            request.update(
                machine_detection="DetectMessageEnd",
                async_amd="true",
                async_amd_status_callback=settings.public_url + AMD_PATH,
                async_amd_status_callback_method="POST",
            )
        placed = await twilio(create_call, **request)
        if not valid_call_sid(placed.call_sid):
            raise HTTPException(502, "Twilio answered with a CallSid the gateway cannot use")
        keys = CallKeys.for_call(placed.call_sid)
        now_us = _now_us()
        pipe = redis.pipeline(transaction=False)
        pipe.hset(
            keys.meta,
            mapping={
                META_DIALED_US: now_us,
                META_DIALED_TO: body.to,
                META_DIALED_FROM: caller,
            },
        )
        pipe.expire(keys.meta, settings.call_max_seconds)
        # Phone numbers are personal data: the list of placed calls keeps a call no longer than
        # its own keys may live.
        keep_ms = (settings.call_max_seconds + settings.call_retention_seconds) * 1000
        pipe.xadd(
            DIALED_STREAM,
            CallDialed(placed.call_sid, body.to, caller, now_us).encode(),  # type: ignore[arg-type]
            minid=str(now_us // 1000 - keep_ms),
            approximate=True,
        )
        await pipe.execute()
        log.info("placed an outbound call", extra={"call_sid": placed.call_sid})
        return {"call_sid": placed.call_sid, "status": placed.status}

    @app.post("/api/calls/{call_sid}/hangup", dependencies=api, status_code=202)
    async def hang_up(call_sid: str) -> dict[str, str]:
        """A supervisor ends a live call (a ringing outbound call is cancelled at Twilio)."""
        keys, origin, meta = await load(call_sid)
        summary = cv.summarize(origin, meta, [])
        if summary.state == "ended":
            raise HTTPException(409, f"call {call_sid} has already ended")
        if summary.state == "ringing":
            await twilio(update_call, call_sid, status="canceled")
        else:
            pipe = redis.pipeline(transaction=False)
            pipe.xadd(keys.cmd, HangUp("supervisor_hung_up").encode())  # type: ignore[arg-type]
            supervisor = CallEvent("supervisor", {"action": "hangup"}).encode()
            pipe.xadd(keys.events, supervisor)  # type: ignore[arg-type]  # redis-py's stubs
            await pipe.execute()
        log.info("a supervisor hung up a call", extra={"call_sid": call_sid})
        return {"call_sid": call_sid, "status": "hanging_up"}

    return app


def _twilio_http_error(exc: TwilioApiError) -> HTTPException:
    """Twilio's refusal as the console's answer: the caller's mistake (a bad number, an unknown
    call) stays a 4xx; our credentials or Twilio's trouble is a 5xx."""
    if exc.status == 0:
        status = 504
    elif exc.status in (401, 403):
        status = 502
    elif exc.status == 404:
        status = 404
    elif exc.status == 429:
        status = 503
    elif 400 <= exc.status < 500:
        status = 400
    else:
        status = 502
    return HTTPException(
        status,
        {
            "message": exc.message,
            "twilio_status": exc.status,
            "twilio_code": exc.code,
            "more_info": exc.more_info,
        },
    )


async def _sse(redis: aioredis.Redis, keys: CallKeys, start: bytes) -> AsyncIterator[bytes]:
    cursor = start
    yield b"retry: 2000\n\n"
    backoff = Backoff(cap_s=2.0)
    quiet_since = time.monotonic()
    while True:
        try:
            reply: Any = await redis.xread({keys.events: cursor}, count=200, block=SSE_BLOCK_MS)
            entries = reply[0][1] if reply else []
            over = not entries and (
                not await redis.exists(keys.meta) or await redis.hexists(keys.meta, b"ended")
            )
        except RETRYABLE as exc:
            # Redis away for a moment: the stream goes on from its cursor once it is back,
            # rather than break the page's connection half-way through a response.
            log.warning("reading a call's events failed (%s); retrying", exc)
            await asyncio.sleep(backoff.next_delay())
            continue
        backoff.reset()
        if over:
            return  # over (or expired), and everything has been sent
        if not entries:
            if time.monotonic() - quiet_since >= SSE_KEEPALIVE_S:
                quiet_since = time.monotonic()
                yield b": keepalive\n\n"
            continue
        quiet_since = time.monotonic()
        ended = False
        for entry_id, fields in entries:
            cursor = entry_id
            try:
                event = decode_event(fields)
            except StreamEntryError:
                continue
            data = {"kind": event.kind, "at": cv.entry_ms(entry_id), **event.data}
            text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
            yield f"id: {entry_id.decode()}\nevent: {event.kind}\ndata: {text}\n\n".encode()
            ended = ended or event.kind == "ended"
        if ended:
            return


def _audio_figures(
    origin: cv.Origin,
    inbound: list[tuple[bytes, dict[bytes, bytes]]],
    outbound: list[tuple[bytes, dict[bytes, bytes]]],
    clears: list[tuple[int, str]],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Reply latencies and who spoke when, from what the audio streams still hold (they are
    capped: a long call's early turns are gone)."""
    import numpy as np

    frames: list[tuple[int, bool]] = []
    for _, fields in inbound:
        audio = fields.get(b"a")
        if fields.get(b"k") != AUDIO or not audio:
            continue
        samples = mulaw_decode(audio).astype(np.float32)
        loud = float(np.sqrt(np.mean(samples * samples))) > SPEECH_RMS
        frames.append((int(fields.get(b"u", b"0")) // 1000, loud))
    chunks = [
        (cv.entry_ms(entry_id), fields[b"r"].decode("utf-8", "replace"), len(fields[b"a"]))
        for entry_id, fields in outbound
        if fields.get(b"k") == AUDIO and b"r" in fields and b"a" in fields
    ]
    caller = cv.speech_turns(frames)
    replies = cv.reply_turns(chunks, clears)
    latency = cv.reply_latencies(
        origin.started_ms, [end for _, end in caller], [start for start, _, _ in replies]
    )
    turns = [{"role": "caller", "start": a, "end": b} for a, b in caller]
    turns += [{"role": "assistant", "start": a, "end": b} for a, b, _ in replies]
    return latency, sorted(turns, key=lambda t: t["start"])
