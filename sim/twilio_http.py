"""The simulator's HTTP side, as Twilio makes its requests: the TwiML webhooks (the voice
webhook, each ``<Connect action>``) and the ``<Stream statusCallback>`` POSTs, each signed with
``X-Twilio-Signature`` when given the auth token (the ``twilio`` package's RequestValidator)."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from urllib.parse import urlencode, urlsplit

from twilio.request_validator import RequestValidator

from sim.twilio_options import CallIdentity
from sim.twiml import TWIML_CONTENT_TYPES, WebhookError

_HTTP_USER_AGENT = "TwilioProxy/1.1"


def signature(auth_token: str, url: str, form: dict[str, str]) -> str:
    return str(RequestValidator(auth_token).compute_signature(url, form))


def on_host(url: str, host_of: str) -> str:
    """``url``'s path (and query) on ``host_of``'s scheme and host: where a URL the TwiML names
    on the public host is reached here (this machine plays the public host)."""
    target, host = urlsplit(url), urlsplit(host_of)
    query = f"?{target.query}" if target.query else ""
    return f"{host.scheme}://{host.netloc}{target.path}{query}"


async def fetch_twiml(
    url: str,
    form: dict[str, str],
    auth_token: str | None = None,
    signed_as: str | None = None,
    timeout_s: float = 10.0,
    method: str = "POST",
) -> str:
    """Request a TwiML webhook as Twilio does (POST, or GET with the form in the query); the
    TwiML it answers. Raises WebhookError.

    ``signed_as`` is the URL Twilio was configured with (behind a proxy it differs from ``url``).
    """
    headers = {"User-Agent": _HTTP_USER_AGENT}
    body: bytes | None = None
    signed_url, signed_form = signed_as or url, form
    if method == "GET":
        query = urlencode(form)
        url, signed_url, signed_form = f"{url}?{query}", f"{signed_url}?{query}", {}
    else:
        headers["Content-Type"] = "application/x-www-form-urlencoded; charset=utf-8"
        body = urlencode(form).encode()
    if auth_token:
        headers["X-Twilio-Signature"] = signature(auth_token, signed_url, signed_form)
    request = urllib.request.Request(url, body, headers, method=method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never an env proxy

    def fetch() -> tuple[str, bytes]:
        with opener.open(request, timeout=timeout_s) as response:
            return response.headers.get_content_type(), bytes(response.read())

    try:
        content_type, answer = await asyncio.to_thread(fetch)
    except urllib.error.HTTPError as exc:
        raise WebhookError(f"webhook {url} answered {exc.code} {exc.reason}", exc.code) from None
    except (urllib.error.URLError, OSError) as exc:
        raise WebhookError(f"webhook {url} unreachable: {exc}") from None
    if content_type not in TWIML_CONTENT_TYPES:
        # Twilio's error 12300: it reads TwiML only from an XML (or HTML) response.
        raise WebhookError(f"webhook {url} answered Content-Type {content_type!r}, not TwiML", 200)
    return answer.decode("utf-8", errors="replace")


class StatusCallbacks:
    """The ``<Stream statusCallback>`` POSTs Twilio makes: stream-started, stream-stopped, or
    stream-error when the stream cannot connect. Signed like the webhook over the URL the TwiML
    names; sent to that path on the webhook's own host (the public host is this machine here).
    Twilio does not wait for them, and neither does the call; ``answered`` has each one's HTTP
    status (0: unreachable)."""

    def __init__(
        self,
        url: str | None,
        webhook: str | None,
        auth_token: str | None,
        identity: CallIdentity,
    ) -> None:
        self.url, self.auth_token, self.identity = url, auth_token, identity
        self.dial = on_host(url, webhook) if url and webhook else None
        self.answered: list[tuple[str, int]] = []
        self._posts: list[asyncio.Task[None]] = []

    def post(self, event: str, error: str = "") -> None:
        if self.url and self.dial:
            self._posts.append(asyncio.create_task(self._post(self.url, self.dial, event, error)))

    async def sent(self) -> None:
        await asyncio.gather(*self._posts)

    async def _post(self, url: str, dial: str, event: str, error: str) -> None:
        form = {
            "AccountSid": self.identity.account_sid,
            "CallSid": self.identity.call_sid,
            "StreamSid": self.identity.stream_sid,
            "StreamEvent": event,
            "Timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if error:
            form["StreamError"] = error[:300]
        headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
        if self.auth_token:
            headers["X-Twilio-Signature"] = signature(self.auth_token, url, form)
        request = urllib.request.Request(dial, urlencode(form).encode(), headers, method="POST")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        def send() -> int:
            try:
                with opener.open(request, timeout=5) as response:
                    return int(response.status)
            except urllib.error.HTTPError as exc:
                return exc.code
            except (urllib.error.URLError, OSError):
                return 0

        self.answered.append((event, await asyncio.to_thread(send)))
