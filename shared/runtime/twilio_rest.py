"""Twilio's REST API through the official ``twilio`` package: place a call, change a live one.

``TWILIO_API_BASE`` sends the package's requests to another base URL (a local stand-in in tests)
through its documented extension point, a custom HTTP client: the package builds every URL on
``https://api.twilio.com``, and the client rewrites scheme and host, keeping path and query.
The package is synchronous (``requests``); the asyncio services call these functions in a thread.
Errors come out as :class:`TwilioApiError`, carrying Twilio's own status, code and message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from shared.runtime.settings import Settings

REQUEST_TIMEOUT_S = 10.0


class TwilioApiError(Exception):
    """Twilio refused a request (``status`` its HTTP status, ``code`` its error code), or could
    not be reached (``status`` 0)."""

    def __init__(self, status: int, message: str, code: int | None = None, more_info: str = ""):
        super().__init__(f"Twilio {status or 'unreachable'}: {message}")
        self.status = status
        self.message = message
        self.code = code
        self.more_info = more_info


class NotConfigured(Exception):
    """The REST credentials are not set."""


class _RebasedHttpClient(TwilioHttpClient):
    def __init__(self, base: str) -> None:
        super().__init__(timeout=REQUEST_TIMEOUT_S)
        self._base = urlsplit(base)
        if self.session is not None:
            self.session.trust_env = False  # never an environment proxy for loopback

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        parts = urlsplit(url)
        base = self._base
        url = urlunsplit(
            (base.scheme, base.netloc, base.path.rstrip("/") + parts.path, parts.query, "")
        )
        return super().request(method, url, *args, **kwargs)


def rest_client(settings: Settings) -> Client:
    """A client for ``TWILIO_ACCOUNT_SID`` and ``TWILIO_AUTH_TOKEN``; raises NotConfigured."""
    token = settings.twilio_auth_token
    if not settings.twilio_account_sid or token is None:
        raise NotConfigured("set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
    http = (
        _RebasedHttpClient(settings.twilio_api_base)
        if settings.twilio_api_base
        else TwilioHttpClient(timeout=REQUEST_TIMEOUT_S)
    )
    return Client(settings.twilio_account_sid, token.get_secret_value(), http_client=http)


@dataclass(frozen=True, slots=True)
class PlacedCall:
    call_sid: str
    status: str


def _api_error(exc: TwilioRestException) -> TwilioApiError:
    # The package keeps Twilio's message (after its own "Unable to create record: ") and code,
    # and drops more_info, which is always the code's page in Twilio's error dictionary.
    code = exc.code if isinstance(exc.code, int) and exc.code >= 10000 else None
    more_info = f"https://www.twilio.com/docs/errors/{code}" if code else ""
    return TwilioApiError(
        int(exc.status), str(exc.msg or "Twilio refused the request"), code, more_info
    )


def create_call(client: Client, **params: Any) -> PlacedCall:
    """``calls.create(**params)``; raises TwilioApiError."""
    try:
        call = client.calls.create(**params)
    except TwilioRestException as exc:
        raise _api_error(exc) from None
    except OSError as exc:  # requests' ConnectionError and Timeout are OSErrors
        raise TwilioApiError(0, f"Twilio's REST API could not be reached: {exc}") from None
    return PlacedCall(str(call.sid), str(call.status))


def update_call(client: Client, call_sid: str, **params: Any) -> str:
    """``calls(call_sid).update(**params)``; the call's status. Raises TwilioApiError."""
    try:
        call = client.calls(call_sid).update(**params)
    except TwilioRestException as exc:
        raise _api_error(exc) from None
    except OSError as exc:
        raise TwilioApiError(0, f"Twilio's REST API could not be reached: {exc}") from None
    return str(call.status)
