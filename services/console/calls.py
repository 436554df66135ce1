"""The console's routes that read calls: the list, one call's detail, its events live (server-sent
events) and its recording. What a call looks like is decided by the pure :mod:`shared.call_view`."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query
from fastapi.responses import FileResponse, StreamingResponse

from services.console.deps import ConsoleDep, authorized
from services.console.models import CallDetailOut, CallsPage
from services.console.store import ConsoleStore, Entry
from shared import call_view as cv
from shared.audio import mulaw_decode
from shared.backoff import Backoff
from shared.runtime.redis_io import RETRYABLE
from shared.streams import (
    AUDIO,
    DIALED_STREAM,
    CallKeys,
    StreamEntryError,
    decode_dialed,
    decode_event,
    decode_lifecycle,
    lifecycle_streams,
    valid_call_sid,
)

log = logging.getLogger("gateway.console")

SSE_BLOCK_MS = 1000  # like every blocking read of the gateway's (see redis_io.SOCKET_TIMEOUT_S)
SSE_KEEPALIVE_S = 5.0
_ENTRY_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
SPEECH_RMS = 300  # a caller frame louder than this (int16 RMS, about -40 dBFS) is speech
# A dialed call of which nothing at all is left after this long has expired (or never rang).
_DIALED_FORGOTTEN_MS = 10 * 60 * 1000

router = APIRouter(prefix="/api/calls", dependencies=[Depends(authorized)])


def _id_key(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms or 0), int(seq or 0)


def call_out(summary: cv.CallSummary) -> dict[str, Any]:
    out = asdict(summary)
    out["from"] = out.pop("from_")
    return out


def call_keys(call_sid: str) -> CallKeys:
    """The call's keys; 404 for what is not a CallSid."""
    if not valid_call_sid(call_sid):
        raise HTTPException(404, f"no call {call_sid[:64]!r}: not a CallSid")
    return CallKeys.for_call(call_sid)


async def load(
    store: ConsoleStore, call_sid: str
) -> tuple[CallKeys, cv.Origin, dict[bytes, bytes]]:
    """A known call's keys, origin and hash; 404 for an unknown or expired call."""
    keys = call_keys(call_sid)
    meta = await store.meta(keys)
    origin = cv.Origin.from_meta(call_sid, meta)
    if origin is None:
        raise HTTPException(404, f"no call {call_sid}: unknown, or its record has expired")
    return keys, origin, meta


async def _summaries(store: ConsoleStore, origins: list[cv.Origin]) -> list[cv.CallSummary]:
    heads = await store.heads([origin.call_sid for origin in origins])
    now_ms = time.time_ns() // 1_000_000
    out: list[cv.CallSummary] = []
    for origin, (meta, head, tail) in zip(origins, heads, strict=True):
        if not meta and not head:
            if origin.direction == "inbound" or now_ms - origin.started_ms > (_DIALED_FORGOTTEN_MS):
                continue  # its keys have expired: nothing left to show
        seen = {entry_id for entry_id, _ in head}
        entries = list(head) + [e for e in reversed(tail) if e[0] not in seen]
        out.append(cv.summarize(origin, meta, cv.decode_events(entries)))
    return out


def _origins(
    streams: list[bytes], pages: list[list[Entry]], limit: int
) -> tuple[dict[str, cv.Origin], bytes | None]:
    """The newest ``limit`` calls of the merged pages, and the last entry ID read."""
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
    return origins, last


@router.get("", response_model=CallsPage)
async def list_calls(
    console: ConsoleDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[str | None, Query(description="an entry ID from next_before")] = None,
) -> dict[str, Any]:
    """Calls in progress and recent, newest first."""
    if before is not None and not _ENTRY_ID.fullmatch(before):
        raise HTTPException(422, "before must be an entry ID like 1700000000000-0")
    high = f"({before}" if before else "+"
    streams = [*lifecycle_streams(console.settings.lifecycle_partitions), DIALED_STREAM]
    pages = await console.store.newest(streams, high, limit)
    origins, last = _origins(streams, pages, limit)
    more = last is not None and (len(origins) >= limit or any(len(p) >= limit for p in pages))
    calls = [call_out(s) for s in await _summaries(console.store, list(origins.values()))]
    return {"calls": calls, "next_before": last.decode() if more and last else None}


@router.get("/{call_sid}", response_model=CallDetailOut)
async def call_detail(console: ConsoleDep, call_sid: str) -> dict[str, Any]:
    """One call: its line, transcript, tool calls, barge-ins, errors and latencies."""
    keys, origin, meta = await load(console.store, call_sid)
    events, commands, inbound, outbound = await console.store.streams(keys)
    clears = [e for e, f in commands if f.get(b"k") == b"clear"]
    view = cv.detail(origin, meta, cv.decode_events(events), clears)
    cleared = [
        (cv.entry_ms(e), f.get(b"r", b"").decode("utf-8", "replace"))
        for e, f in commands
        if f.get(b"k") == b"clear"
    ]
    view.latency, turns = _audio_figures(origin, inbound, outbound, cleared)
    out = call_out(view.summary)
    out.update(
        transcript=[asdict(t) for t in view.transcript],
        tools=[asdict(t) for t in view.tools],
        barge_ins=[asdict(b) for b in view.barge_ins],
        errors=[asdict(e) for e in view.errors],
        dtmf=view.dtmf,
        latency=view.latency,
        usage=view.usage.report(console.settings.prices),
        mcp_calls=view.mcp_calls,
        turns=turns,
        recording=console.recording_path(call_sid) is not None,
    )
    return out


@router.get("/{call_sid}/events")
async def call_events(
    console: ConsoleDep,
    call_sid: str,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """The call's events as server-sent events (``id`` is the stream entry ID), from the
    start or after ``Last-Event-ID``; the stream closes after the call's end."""
    keys, _, _ = await load(console.store, call_sid)
    if last_event_id is not None and not _ENTRY_ID.fullmatch(last_event_id):
        raise HTTPException(400, "Last-Event-ID must be an entry ID like 1700000000000-0")
    start = (last_event_id or "0-0").encode()
    return StreamingResponse(
        _sse(console.store, keys, start),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/{call_sid}/recording",
    response_class=FileResponse,
    responses={200: {"content": {"audio/wav": {}}}},
)
async def recording(console: ConsoleDep, call_sid: str) -> FileResponse:
    """The call's stereo WAV: the caller left, what the caller heard right."""
    call_keys(call_sid)
    path = console.recording_path(call_sid)
    if path is None:
        raise HTTPException(404, f"no recording of {call_sid}")
    return FileResponse(path, media_type="audio/wav", filename=f"{call_sid}.wav")


async def _sse(store: ConsoleStore, keys: CallKeys, start: bytes) -> AsyncIterator[bytes]:
    cursor = start
    yield b"retry: 2000\n\n"
    backoff = Backoff(cap_s=2.0)
    quiet_since = time.monotonic()
    while True:
        try:
            entries = await store.events_after(keys, cursor, SSE_BLOCK_MS)
            over = not entries and await store.is_over(keys)
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
    inbound: list[Entry],
    outbound: list[Entry],
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
