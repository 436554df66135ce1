"""The edge's HTTP side: every request that is not a Media Stream's WebSocket, and the guards
that stand before each (host, method, body, signature).

Routes: ``/media`` (the WebSocket's handshake: signed, and refused at ``MAX_CALLS``), ``/twiml``,
``/stream-status``, ``/connect-action``, the outbound-call callbacks ``/amd`` and
``/call-status`` (:mod:`services.twilio_edge.outbound`) and ``/healthz``. :class:`Webhooks` is
what those callbacks use (:class:`~services.twilio_edge.interfaces.CallbackHost`).
"""

from __future__ import annotations

import asyncio
import http
import logging
from collections.abc import Callable
from urllib.parse import parse_qsl, urlsplit

import redis.asyncio as aioredis
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from services.twilio_edge.http import EdgeConnection, Form, respond
from services.twilio_edge.outbound import amd_callback, call_status_callback
from services.twilio_edge.resume import answer_action
from services.twilio_edge.token import StreamTokens
from shared import twilio_media as tw
from shared.outbound import AMD_PATH, CALL_STATUS_PATH, STREAM_STATUS_PATH
from shared.resumption import (
    RESUME_PARAMETER,
)
from shared.runtime.lifecycle import wall_clock_us
from shared.runtime.observability import (
    CONNECT_ACTIONS,
    STREAM_EVENTS,
    STREAM_RESUMES,
    call_context,
    reject,
)
from shared.runtime.redis_io import (
    RETRYABLE,
    answers,
)
from shared.runtime.settings import Settings
from shared.streams import (
    META_TRANSFER_TO,
    CallKeys,
    valid_call_sid,
)

log = logging.getLogger("gateway.edge")

_TWIML_TYPE = "text/xml; charset=utf-8"
CONNECT_ACTION_PATH = "/connect-action"


def _one_header(request: Request, name: str) -> str | None:
    """A header's value; ``None`` when it is missing or repeated (a request cannot be trusted to
    mean either of two values)."""
    values = request.headers.get_all(name)
    return values[0] if len(values) == 1 else None


class Webhooks:
    """The edge's webhook router (websockets' ``process_request``)."""

    def __init__(
        self,
        settings: Settings,
        redis: aioredis.Redis,
        tokens: StreamTokens,
        background: set[asyncio.Task[None]],
        calls_held: Callable[[], int],
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.tokens = tokens
        self.background = background  # REST requests under way (the edge awaits them)
        self.calls_held = calls_held
        token, shared = settings.twilio_auth_token, settings.twilio_shared_key_secret
        verify = settings.verifies_signatures
        self.signatures = tw.TwilioSignatures(
            token.get_secret_value() if token and verify else None,
            shared.get_secret_value() if shared and verify else None,
        )

    def _base_url(self, request: Request) -> str | None:
        """The edge's public base URL: ``PUBLIC_URL``, else the address the request was sent to
        (its Host, and the scheme a TLS-terminating proxy reports), which is the URL Twilio
        signed. ``None`` when the Host header is not a host name."""
        return tw.public_base_url(
            self.settings.public_url,
            _one_header(request, "Host"),
            _one_header(request, "X-Forwarded-Proto"),
        )

    def _signed_url(self, base: str, request: Request) -> str:
        """What Twilio signed for this request: the public URL of its path, with its query."""
        parts = urlsplit(request.path)
        if parts.path == "/media":
            url = self.settings.public_media_url(base)
        else:
            url = base.rstrip("/") + parts.path
        return f"{url}?{parts.query}" if parts.query else url

    def _signed(self, url: str, params: dict[str, str], request: Request) -> bool:
        refusal = self.signatures.refusal(
            url,
            params,
            _one_header(request, "X-Twilio-Signature"),
            _one_header(request, tw.SIGNATURE_SETTINGS_HEADER),
        )
        if refusal is not None:
            reject(refusal)
            if refusal.endswith("_not_configured"):
                log.error(
                    "a request was signed with a secret this edge does not have (%s): set %s",
                    refusal,
                    "TWILIO_SHARED_KEY_SECRET"
                    if refusal.startswith("shared")
                    else "TWILIO_AUTH_TOKEN",
                )
        return refusal is None

    async def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/media":
            if request.method != "GET":
                return respond(http.HTTPStatus.METHOD_NOT_ALLOWED, "use a WebSocket GET\n")
            base = self._base_url(request)
            if base is None:
                reject("edge_bad_host")
                return respond(http.HTTPStatus.BAD_REQUEST, "bad Host header\n")
            if not self._signed(self._signed_url(base, request), {}, request):
                return respond(http.HTTPStatus.FORBIDDEN, "invalid Twilio signature\n")
            if self.calls_held() >= self.settings.max_calls:
                reject("edge_max_calls")
                return respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "too many calls\n")
            return None
        if path == "/twiml":
            return self._twiml(conn, request)
        if path == STREAM_STATUS_PATH:
            return self._stream_status(conn, request)
        if path == CONNECT_ACTION_PATH:
            return await self._connect_action(conn, request)
        if path == AMD_PATH:
            return await amd_callback(self, conn, request)
        if path == CALL_STATUS_PATH:
            return await call_status_callback(self, conn, request)
        if path == "/healthz":
            ok = await answers(self.redis)
            return respond(
                http.HTTPStatus.OK if ok else http.HTTPStatus.SERVICE_UNAVAILABLE,
                "ok\n" if ok else "redis unreachable\n",
            )
        return respond(http.HTTPStatus.NOT_FOUND, "not found\n")

    def _guarded(
        self, conn: ServerConnection, request: Request, methods: tuple[str, ...]
    ) -> tuple[str, Form] | Response:
        """The one set of guards every webhook passes, answering alike whatever the route: a
        bad Host 400, another method 405, a body too large 413 or chunked 411, a bad signature
        403. Passed: the edge's public base URL and the request's form (empty for a GET)."""
        base = self._base_url(request)
        if base is None:
            reject("edge_bad_host")
            return respond(http.HTTPStatus.BAD_REQUEST, "bad Host header\n")
        if request.method not in methods:
            return respond(http.HTTPStatus.METHOD_NOT_ALLOWED, " or ".join(methods) + "\n")
        form = Form([])
        if request.method == "POST":
            assert isinstance(conn, EdgeConnection)
            if conn.body_too_large:
                reject("edge_body_too_large")
                return respond(http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "body too large\n")
            if conn.length_required:
                reject("edge_body_chunked")
                return respond(http.HTTPStatus.LENGTH_REQUIRED, "send a Content-Length\n")
            form = conn.form()
        if not self._signed(self._signed_url(base, request), form, request):
            return respond(http.HTTPStatus.FORBIDDEN, "invalid Twilio signature\n")
        return base, form

    def _twiml(self, conn: ServerConnection, request: Request) -> Response:
        guarded = self._guarded(conn, request, ("GET", "POST"))
        if isinstance(guarded, Response):
            return guarded
        base, form = guarded
        fields = form if request.method == "POST" else dict(parse_qsl(urlsplit(request.path).query))
        return respond(http.HTTPStatus.OK, self._stream_twiml(base, fields), _TWIML_TYPE)

    def _stream_twiml(
        self, base: str, fields: dict[str, str], extra: dict[str, str] | None = None
    ) -> str:
        """The call's ``<Connect><Stream>``: the caller's numbers and CallSid as parameters
        (``extra`` besides), the stream's status callback, and the action Twilio asks when it
        ends."""
        parameters = {k: fields[k] for k in ("From", "To", "CallSid") if fields.get(k)}
        parameters = self.tokens.with_token(fields.get("CallSid"), parameters | (extra or {}))
        return tw.connect_stream_twiml(
            self.settings.public_media_url(base),
            parameters,
            status_callback=base.rstrip("/") + STREAM_STATUS_PATH,
            action=base.rstrip("/") + CONNECT_ACTION_PATH,
        )

    async def _connect_action(self, conn: ServerConnection, request: Request) -> Response:
        """Twilio asks what to do now that a call's stream has ended (``<Connect action>``):
        dial the destination of a call the model transferred, hang up one it ended or that is
        over, connect a stream that broke again as the same call (a resumption: the edge that
        held it died, a network cut), and one whose keys are gone as a new call (see
        :func:`~shared.resumption.after_stream`). Any edge can answer: the call is in Redis."""
        form = self.signed_callback(conn, request)
        if isinstance(form, Response):
            return form
        call_sid = form.get("CallSid", "")
        if not valid_call_sid(call_sid):
            reject("twilio_bad_call_sid")
            return respond(http.HTTPStatus.BAD_REQUEST, "bad CallSid\n")
        base = self._base_url(request)
        assert base is not None  # signed_callback refused a request without one
        keys = CallKeys.for_call(call_sid)
        extra: dict[str, str] = {}
        try:
            decided = await answer_action(
                self.redis, keys, form.get("CallStatus", ""), wall_clock_us
            )
        except RETRYABLE as exc:
            log.warning("cannot read how the call ended (%s); hanging up", exc)
            meta: dict[bytes, bytes] = {}
            answer = "ended"
        else:
            meta, answer = decided.meta, decided.answer
            if decided.grant is not None:
                extra[RESUME_PARAMETER] = decided.grant
                STREAM_RESUMES.labels("granted").inc()
        CONNECT_ACTIONS.labels(answer).inc()
        with call_context(call_sid):
            (log.info if answer in ("hang_up", "transfer", "ended") else log.warning)(
                "stream ended; Twilio asks what next",
                extra={"answer": answer, "call_status": form.get("CallStatus", "")},
            )
        if answer in ("resume", "new_call"):
            twiml = self._stream_twiml(base, form, extra)
        else:
            twiml = tw.after_stream_twiml(
                answer,
                meta.get(META_TRANSFER_TO, b"").decode("utf-8", "replace"),
                caller_id=form.get("To", ""),
            )
        return respond(http.HTTPStatus.OK, twiml, _TWIML_TYPE)

    def signed_callback(self, conn: ServerConnection, request: Request) -> Form | Response:
        """A Twilio callback's form (a POST, through the same guards as every webhook), or the
        response that refuses it."""
        guarded = self._guarded(conn, request, ("POST",))
        return guarded if isinstance(guarded, Response) else guarded[1]

    def _stream_status(self, conn: ServerConnection, request: Request) -> Response:
        """Twilio's word on a stream: counted by event, and a stream-error logged, since a
        stream that failed its handshake never reaches ``/media`` to say so itself."""
        form = self.signed_callback(conn, request)
        if isinstance(form, Response):
            return form
        try:
            status = tw.stream_status(form)
        except tw.TwilioProtocolError as exc:
            reject(f"twilio_{exc.reason}")
            return respond(http.HTTPStatus.BAD_REQUEST, "not a stream status callback\n")
        STREAM_EVENTS.labels(status.event).inc()
        with call_context(status.call_sid, status.stream_sid):
            if status.event == "stream-error":
                log.warning("Twilio reports a stream error: %s", status.error)
            else:
                log.info("Twilio reports %s", status.event)
        return respond(http.HTTPStatus.NO_CONTENT, b"")
