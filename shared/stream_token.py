"""Per-call stream tokens: what proves that a Media Stream's ``start`` carries TwiML the gateway
wrote (pure: the time is passed in).

Twilio signs the ``/media`` handshake over the ``wss://`` URL alone, so one captured signature
opens any number of streams, and the ``start`` message (unsigned) says which call and which
``<Parameter>``s (instructions, greeting, voice, From, To, ...) they carry. So every TwiML the
gateway writes carries one more ``<Parameter>``, :data:`TOKEN_PARAMETER`: an HMAC-SHA256, under a
key derived from the deployment's Twilio secret (:func:`derive_key`), of

* ``c``: the CallSid the TwiML was written for (empty for an outbound call's TwiML, written
  before Twilio names the call: such a token carries a nonce ``n`` instead, and the edge takes
  it once);
* ``e``: its expiry (Unix seconds);
* ``p``: a digest of every other ``<Parameter>`` of the TwiML, names and values
  (:func:`parameters_digest`);
* and any further claims (short text values under names of their own, e.g. an agent's name).

:func:`verify` refuses a token that is missing, forged, expired, for another CallSid, or whose
digest does not cover the stream's parameters exactly (one added, dropped or changed), each with
a closed :attr:`StreamTokenError.reason` usable as a metric label.

Wire form: ``v1.<base64url(JSON claims)>.<base64url(HMAC-SHA256(key, "v1." + claims))>``, about
150 characters (the parameters go in as their digest, so the token stays short whatever they
hold).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

TOKEN_PARAMETER: Final = "gw_token"
"""The ``<Parameter>`` that carries the token; the edge removes it from the call's parameters."""

# The TwiML the edge answers a webhook with is followed at once: the margin is for clocks.
WEBHOOK_TTL_S: Final = 300
# An outbound call's TwiML runs when it is answered: up to Twilio's longest ring (600 s) later.
OUTBOUND_TTL_S: Final = 900
MAX_TOKEN_CHARS: Final = 1024  # what a <Parameter> value may hold at the edge

_VERSION: Final = "v1"
_KEY_LABEL: Final = b"gateway stream token v1"
_RESERVED_CLAIMS: Final = frozenset({"c", "e", "p", "n"})

REASONS: Final = frozenset(
    {"missing", "malformed", "bad_signature", "expired", "other_call", "parameters"}
)
"""Every :attr:`StreamTokenError.reason`: a closed set, safe as a metric label."""


class StreamTokenError(ValueError):
    """A stream's token does not hold; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail[:160]}" if detail else reason)
        self.reason = reason


def derive_key(secret: str) -> bytes:
    """The token key from a deployment secret (``STREAM_TOKEN_SECRET``, else the Twilio Auth
    Token, else the SharedKey secret): HMAC-SHA256 under the secret of a fixed label, so every
    edge and the console agree without new setup, and the token never reveals the secret."""
    return hmac.new(secret.encode(), _KEY_LABEL, hashlib.sha256).digest()


def parameters_digest(parameters: Mapping[str, str]) -> str:
    """The digest of a stream's ``<Parameter>``s (all but the token), order aside."""
    items = sorted((k, v) for k, v in parameters.items() if k != TOKEN_PARAMETER)
    canonical = json.dumps(items, ensure_ascii=False, separators=(",", ":")).encode()
    return _b64(hashlib.sha256(canonical).digest())


@dataclass(frozen=True, slots=True)
class StreamClaims:
    """What a verified token says: its CallSid (``""``: an outbound call's, taken once by its
    ``nonce``), its expiry, and its further claims."""

    call_sid: str
    expires_s: int
    nonce: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)


def mint(
    key: bytes,
    call_sid: str | None,
    parameters: Mapping[str, str],
    now_s: int,
    ttl_s: int = WEBHOOK_TTL_S,
    claims: Mapping[str, str] | None = None,
    nonce: str | None = None,
) -> str:
    """A token for a stream of ``call_sid`` (``None``: not known yet, an outbound call's TwiML)
    carrying exactly ``parameters`` (the token's own aside), good until ``now_s + ttl_s``.
    ``claims``: further claims, names other than c, e, p and n."""
    body: dict[str, str | int] = {
        "c": call_sid or "",
        "e": now_s + ttl_s,
        "p": parameters_digest(parameters),
    }
    if call_sid is None:
        body["n"] = nonce or secrets.token_urlsafe(12)
    for name, value in (claims or {}).items():
        if name in _RESERVED_CLAIMS:
            raise ValueError(f"claim {name!r} is the token's own")
        body[name] = value
    payload = _b64(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    return f"{_VERSION}.{payload}.{_sign(key, payload)}"


def verify(
    key: bytes, token: str | None, call_sid: str, parameters: Mapping[str, str], now_s: int
) -> StreamClaims:
    """The claims of the token a stream of ``call_sid`` carrying ``parameters`` (its
    ``customParameters``, the token among them or not) presents at ``now_s``; raises
    :class:`StreamTokenError` when it does not hold."""
    if not token:
        raise StreamTokenError("missing")
    version, _, rest = token.partition(".")
    payload, _, signature = rest.partition(".")
    if version != _VERSION or not payload or not signature or len(token) > MAX_TOKEN_CHARS:
        raise StreamTokenError("malformed", token[:40])
    if not hmac.compare_digest(_sign(key, payload), signature):
        raise StreamTokenError("bad_signature")
    try:
        body = json.loads(_unb64(payload))
    except (ValueError, binascii.Error):
        raise StreamTokenError("malformed", "claims are not JSON") from None
    if (
        type(body) is not dict
        or type(body.get("c")) is not str
        or type(body.get("e")) is not int
        or type(body.get("p")) is not str
        or not all(type(v) is str for k, v in body.items() if k != "e")
    ):
        raise StreamTokenError("malformed", "claims of the wrong shape")
    if now_s > body["e"]:
        raise StreamTokenError("expired", f"{now_s - body['e']} s ago")
    if body["c"] and body["c"] != call_sid:
        raise StreamTokenError("other_call", body["c"])
    nonce = body.get("n", "")
    if not body["c"] and not nonce:
        raise StreamTokenError("malformed", "neither a CallSid nor a nonce")
    if not hmac.compare_digest(body["p"], parameters_digest(parameters)):
        raise StreamTokenError("parameters", ", ".join(sorted(parameters))[:160])
    extra = {k: v for k, v in body.items() if k not in _RESERVED_CLAIMS}
    return StreamClaims(body["c"], body["e"], nonce, extra)


def _sign(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, f"{_VERSION}.{payload}".encode(), hashlib.sha256).digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
