"""The console's routes that change calls: placing an outbound call (Twilio's REST API) and a
supervisor's hang-up (a ``hangup`` command on the call's ``cmd`` stream, which the edge carries
out; a ringing outbound call is cancelled at Twilio instead)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, HTTPException

from services.console.calls import load
from services.console.deps import ConsoleDep, authorized
from services.console.models import OutboundIn, PlacedOut
from shared import call_view as cv
from shared.outbound import (
    AMD_PATH,
    CALL_STATUS_PATH,
    STREAM_STATUS_PATH,
    OutboundError,
    outbound_parameters,
    outbound_twiml,
)
from shared.runtime.settings import Settings
from shared.runtime.twilio_rest import (
    NotConfigured,
    TwilioApiError,
    create_call,
    rest_client,
    update_call,
)
from shared.streams import CallDialed, valid_call_sid

log = logging.getLogger("gateway.console")

router = APIRouter(prefix="/api/calls", dependencies=[Depends(authorized)])


async def _twilio(settings: Settings, action: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
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


def _call_request(settings: Settings, body: OutboundIn, caller: str) -> dict[str, Any]:
    """Twilio's create-call arguments: the TwiML that streams the answered call to the edge
    with the body's overrides, the status callbacks and, if asked, answering-machine detection."""
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
            settings.public_url + STREAM_STATUS_PATH,
            params,
            settings.stream_token_key(),
            int(time.time()),
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
    return request


@router.post("", status_code=201, response_model=PlacedOut)
async def place_call(console: ConsoleDep, body: OutboundIn) -> dict[str, str]:
    """Place an outbound call; when answered it is connected to the agent with these
    overrides. With machine detection, a machine gets the voicemail message instead."""
    settings = console.settings
    caller = body.from_ or settings.twilio_from_number
    if not caller:
        raise HTTPException(422, "from is required when TWILIO_FROM_NUMBER is not set")
    request = _call_request(settings, body, caller)
    placed = await _twilio(settings, create_call, **request)
    if not valid_call_sid(placed.call_sid):
        raise HTTPException(502, "Twilio answered with a CallSid the gateway cannot use")
    # Phone numbers are personal data: the list of placed calls keeps a call no longer than
    # its own keys may live.
    await console.store.record_dialed(
        CallDialed(placed.call_sid, body.to, caller, time.time_ns() // 1000),
        meta_ttl_s=settings.call_max_seconds,
        keep_ms=(settings.call_max_seconds + settings.call_retention_seconds) * 1000,
    )
    log.info("placed an outbound call", extra={"call_sid": placed.call_sid})
    return {"call_sid": placed.call_sid, "status": placed.status}


@router.post("/{call_sid}/hangup", status_code=202)
async def hang_up(console: ConsoleDep, call_sid: str) -> dict[str, str]:
    """A supervisor ends a live call (a ringing outbound call is cancelled at Twilio)."""
    keys, origin, meta = await load(console.store, call_sid)
    summary = cv.summarize(origin, meta, [])
    if summary.state == "ended":
        raise HTTPException(409, f"call {call_sid} has already ended")
    if summary.state == "ringing":
        await _twilio(console.settings, update_call, call_sid, status="canceled")
    else:
        await console.store.hang_up(keys)
    log.info("a supervisor hung up a call", extra={"call_sid": call_sid})
    return {"call_sid": call_sid, "status": "hanging_up"}


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
