"""A stand-in for Twilio's REST API (Calls), on 127.0.0.1, for outbound-call tests.

It speaks what the ``twilio`` package sends: form-encoded POSTs to
``/2010-04-01/Accounts/{AccountSid}/Calls.json`` (create) and ``.../Calls/{CallSid}.json``
(update), HTTP basic auth with the Account SID and Auth Token, and Twilio's JSON error shape
(``code``, ``message``, ``more_info``, ``status``). Twilio's test numbers behave as Twilio's
test credentials make them: ``+15005550001`` is invalid (21211), ``+15005550002`` cannot be
routed (21612).

A created call is then carried out the way Twilio would: the status callbacks (signed like any
webhook) for initiated, ringing and answered, the inline TwiML's ``<Connect><Stream>`` played by
the call simulator (:func:`sim.twilio_call.place_call`, the callee's words as its audio), the
asynchronous AMD verdict (``AnsweredBy``, signed) posted while the stream runs, and ``completed``
at the end. An update with TwiML (a voicemail's ``<Say>``) ends the stream and records what was
said; ``Status=canceled|completed`` ends the call.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import urlencode

import numpy as np
from aiohttp import web
from twilio.request_validator import RequestValidator

from sim.twilio_call import CallResult, parse_connect_stream, place_call

_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_API = "/2010-04-01/Accounts/{account}/Calls"


@dataclass
class SimulatedCall:
    """One call the stand-in placed, for a test to look at."""

    sid: str
    form: dict[str, str]
    answered_by: str | None
    statuses: list[tuple[str, int]] = field(default_factory=list)  # (CallStatus, HTTP answer)
    amd_answer: int | None = None  # the edge's HTTP answer to the AMD callback
    updates: list[dict[str, str]] = field(default_factory=list)
    said: list[str] = field(default_factory=list)  # <Say> texts of an update's TwiML
    result: CallResult | None = None
    error: str = ""
    status: str = "queued"
    hang_up: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class TwilioRestStandIn:
    """``async with TwilioRestStandIn(account_sid, auth_token) as rest: rest.base_url``.

    ``answer``: how the callee answers the next calls: ``"human"``, ``"machine_end_beep"`` (or
    another AnsweredBy value), or ``None`` for a call nobody answers (``no-answer``).
    ``callee_audio``: what the callee says (int16 8 kHz), ``amd_after_s``: when the AMD verdict
    is posted after the stream starts.
    """

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        answer: str | None = "human",
        callee_audio: np.ndarray | bytes | None = None,
        amd_after_s: float = 0.6,
        hold_after_s: float = 1.5,
        media_url: str | None = None,
    ) -> None:
        self.account_sid, self.auth_token = account_sid, auth_token
        self.answer = answer
        self.callee_audio = callee_audio if callee_audio is not None else b"\xff" * 8000
        self.amd_after_s = amd_after_s
        self.hold_after_s = hold_after_s
        self.media_url = media_url  # dial this instead of the TwiML's (a proxy in front)
        self.calls: dict[str, SimulatedCall] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> TwilioRestStandIn:
        app = web.Application(client_max_size=64 * 1024)
        prefix = _API.format(account="{account}")
        app.router.add_post(prefix + ".json", self._create)
        app.router.add_post(prefix + "/{sid}.json", self._update)
        app.router.add_get(prefix + "/{sid}.json", self._fetch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for call in self.calls.values():
            call.hang_up.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        if self._runner is not None:
            await self._runner.cleanup()

    # --- the REST API -----------------------------------------------------------------------

    @staticmethod
    def _error(status: int, code: int, message: str) -> web.Response:
        body = {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        }
        return web.json_response(body, status=status)

    def _refused(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        expected = (
            "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        )
        if not secrets.compare_digest(header, expected):
            return self._error(401, 20003, "Authenticate")
        if request.match_info["account"] != self.account_sid:
            return self._error(403, 20003, "Authenticate")
        return None

    def _resource(self, call: SimulatedCall) -> dict[str, object]:
        return {
            "sid": call.sid,
            "account_sid": self.account_sid,
            "to": call.form.get("To", ""),
            "from": call.form.get("From", ""),
            "status": call.status,
            "direction": "outbound-api",
            "api_version": "2010-04-01",
            "uri": f"{_API.format(account=self.account_sid)}/{call.sid}.json",
        }

    async def _create(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.requests.append(("create", "", form))
        to, from_ = form.get("To", ""), form.get("From", "")
        if not to:
            return self._error(400, 21201, "No 'To' number is specified")
        if not from_:
            return self._error(400, 21603, "A 'From' phone number is required.")
        if not _E164.fullmatch(to) or to == "+15005550001":
            return self._error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if to == "+15005550002":
            return self._error(
                400, 21612, f"The 'To' phone number: {to}, is not currently reachable"
            )
        if not form.get("Twiml") and not form.get("Url"):
            return self._error(400, 21205, "Url parameter is required.")
        if len(form.get("Twiml", "")) > 4000:
            return self._error(400, 21215, "Twiml is longer than 4000 characters.")
        call = SimulatedCall("CA" + secrets.token_hex(16), form, self.answer)
        self.calls[call.sid] = call
        task = asyncio.create_task(self._carry_out(call))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response(self._resource(call), status=201)

    async def _update(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        sid = request.match_info["sid"]
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.requests.append(("update", sid, form))
        call = self.calls.get(sid)
        if call is None:
            return self._error(404, 20404, f"The requested resource {request.path} was not found")
        if call.status in ("completed", "canceled", "busy", "no-answer", "failed"):
            return self._error(400, 21220, "Call is not in-progress. Cannot redirect.")
        call.updates.append(form)
        if form.get("Twiml"):
            try:
                root = ET.fromstring(form["Twiml"])
            except ET.ParseError:
                return self._error(400, 12100, "Document parse failure")
            call.said.extend(say.text or "" for say in root.iter("Say"))
        if form.get("Status") in ("canceled", "completed") or form.get("Twiml"):
            call.hang_up.set()
        return web.json_response(self._resource(call))

    async def _fetch(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        call = self.calls.get(request.match_info["sid"])
        if call is None:
            return self._error(404, 20404, f"The requested resource {request.path} was not found")
        return web.json_response(self._resource(call))

    # --- the call itself --------------------------------------------------------------------

    async def _post(self, url: str, form: dict[str, str]) -> int:
        headers = {
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            "X-Twilio-Signature": RequestValidator(self.auth_token).compute_signature(url, form),
        }
        request = urllib.request.Request(url, urlencode(form).encode(), headers, method="POST")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        def send() -> int:
            try:
                with opener.open(request, timeout=5) as response:
                    return int(response.status)
            except urllib.error.HTTPError as exc:
                return exc.code
            except (urllib.error.URLError, OSError):
                return 0

        return await asyncio.to_thread(send)

    async def _status(self, call: SimulatedCall, status: str, **extra: str) -> None:
        call.status = status
        url = call.form.get("StatusCallback")
        if not url:
            return
        form = {
            "AccountSid": self.account_sid,
            "CallSid": call.sid,
            "CallStatus": status,
            "From": call.form.get("From", ""),
            "To": call.form.get("To", ""),
            "Direction": "outbound-api",
            "ApiVersion": "2010-04-01",
            "Timestamp": time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime()),
            **extra,
        }
        call.statuses.append((status, await self._post(url, form)))

    async def _amd(self, call: SimulatedCall, answered_by: str) -> None:
        await asyncio.sleep(self.amd_after_s)
        url = call.form.get("AsyncAmdStatusCallback")
        if not url or call.hang_up.is_set():
            return
        form = {
            "AccountSid": self.account_sid,
            "CallSid": call.sid,
            "AnsweredBy": answered_by,
            "MachineDetectionDuration": str(int(self.amd_after_s * 1000)),
        }
        call.amd_answer = await self._post(url, form)

    async def _carry_out(self, call: SimulatedCall) -> None:
        try:
            await self._status(call, "initiated")
            await self._status(call, "ringing")
            if call.answered_by is None:
                await self._status(call, "no-answer")
                return
            if call.hang_up.is_set():
                await self._status(call, "canceled")
                return
            stream_url, params = parse_connect_stream(call.form["Twiml"])
            await self._status(call, "in-progress")
            amd = None
            if call.form.get("MachineDetection") and call.form.get("AsyncAmd") == "true":
                amd = asyncio.create_task(self._amd(call, call.answered_by))
            started = time.monotonic()
            call.result = await place_call(
                self.media_url or stream_url,
                self.callee_audio,
                call_sid=call.sid,
                account_sid=self.account_sid,
                custom_parameters=params,
                auth_token=self.auth_token,
                signed_url=stream_url,
                hold_after_s=self.hold_after_s,
                wait_for_reply=False,
                max_duration_s=20.0,
                hang_up=call.hang_up,
            )
            if amd is not None:
                await amd
            duration = str(int(time.monotonic() - started))
            await self._status(call, "completed", CallDuration=duration)
        except Exception as exc:  # a test reads it; the stand-in itself goes on
            call.error = repr(exc)
            call.status = "failed"
        finally:
            call.done.set()
