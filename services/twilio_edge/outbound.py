"""The edge's part in outbound calls: Twilio's callbacks about a call the console placed.

Twilio must reach them at a public address, and the edge is the gateway's public face (the
console listens on loopback), so they are routes here, signed and verified like every webhook:

* ``/amd``: the asynchronous answering-machine verdict. It is written to the call's ``events``;
  a machine gets the voicemail message: the call is updated through Twilio's REST API with
  ``<Say>`` then ``<Hangup/>``, which ends its Media Stream. A person changes nothing.
* ``/call-status``: the call's progress (ringing, answered, completed, busy, no-answer, ...),
  written to its ``events``. A call that ends without ever being answered has no stream, so this
  is the only word of it: its keys then get ``CALL_RETENTION_SECONDS`` like any ended call's.
"""

from __future__ import annotations

import asyncio
import http
import logging

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from services.twilio_edge.http import respond
from services.twilio_edge.interfaces import CallbackHost
from shared.outbound import (
    UNANSWERED_STATUSES,
    OutboundError,
    amd_result,
    call_status,
    voicemail_twiml,
)
from shared.runtime.observability import call_context, reject
from shared.runtime.redis_io import RETRYABLE, expire_all, fields_arg
from shared.runtime.twilio_rest import NotConfigured, TwilioApiError, rest_client, update_call
from shared.streams import META_ENDED, META_STARTED_US, CallEvent, CallKeys, valid_call_sid

log = logging.getLogger("gateway.edge")


async def _event(edge: CallbackHost, keys: CallKeys, event: CallEvent) -> None:
    pipe = edge.redis.pipeline(transaction=False)
    pipe.xadd(keys.events, fields_arg(event.encode()))
    pipe.expire(keys.events, edge.settings.call_max_seconds, nx=True)
    await pipe.execute()


async def amd_callback(edge: CallbackHost, conn: ServerConnection, request: Request) -> Response:
    form = edge.signed_callback(conn, request)
    if isinstance(form, Response):
        return form
    try:
        result = amd_result(form)
    except OutboundError as exc:
        reject("twilio_bad_amd_callback")
        log.warning("refused an AMD callback: %s", exc)
        return respond(http.HTTPStatus.BAD_REQUEST, "not an AMD callback\n")
    if not valid_call_sid(result.call_sid):
        return respond(http.HTTPStatus.BAD_REQUEST, "bad CallSid\n")
    keys = CallKeys.for_call(result.call_sid)
    with call_context(result.call_sid):
        log.info("answering machine detection", extra={"answered_by": result.answered_by})
        try:
            data = {"answered_by": result.answered_by, "action": result.action}
            await _event(edge, keys, CallEvent("amd", data))
        except RETRYABLE as exc:
            log.warning("could not record the AMD result: %s", exc)
        if result.action == "voicemail":
            task = asyncio.create_task(_leave_voicemail(edge, keys))
            edge.background.add(task)
            task.add_done_callback(edge.background.discard)
    return respond(http.HTTPStatus.NO_CONTENT, b"")


async def _leave_voicemail(edge: CallbackHost, keys: CallKeys) -> None:
    with call_context(keys.call_sid):
        try:
            message = edge.settings.voicemail
            client = rest_client(edge.settings)
            await asyncio.to_thread(
                update_call, client, keys.call_sid, twiml=voicemail_twiml(message)
            )
            log.info("left the voicemail message", extra={"chars": len(message)})
        except (NotConfigured, TwilioApiError) as exc:
            reject("edge_voicemail_failed")
            log.error("could not leave the voicemail message: %s", exc)
            try:
                error = {"code": "voicemail_failed", "message": str(exc)[:500]}
                await _event(edge, keys, CallEvent("error", error))
            except RETRYABLE:
                pass


async def call_status_callback(
    edge: CallbackHost, conn: ServerConnection, request: Request
) -> Response:
    form = edge.signed_callback(conn, request)
    if isinstance(form, Response):
        return form
    try:
        update = call_status(form)
    except OutboundError as exc:
        reject("twilio_bad_call_status")
        log.warning("refused a call status callback: %s", exc)
        return respond(http.HTTPStatus.BAD_REQUEST, "not a call status callback\n")
    if not valid_call_sid(update.call_sid):
        return respond(http.HTTPStatus.BAD_REQUEST, "bad CallSid\n")
    keys = CallKeys.for_call(update.call_sid)
    with call_context(update.call_sid):
        log.info("Twilio reports the call %s", update.status)
        try:
            await _event(edge, keys, CallEvent("call_status", {"status": update.status}))
            if update.status in UNANSWERED_STATUSES and not await edge.redis.hexists(
                keys.meta, META_STARTED_US
            ):
                await edge.redis.hset(keys.meta, META_ENDED, update.status)
                await expire_all(edge.redis, keys.all(), edge.settings.call_retention_seconds)
        except RETRYABLE as exc:
            log.warning("could not record the call status: %s", exc)
    return respond(http.HTTPStatus.NO_CONTENT, b"")
