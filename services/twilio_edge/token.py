"""The edge's side of per-call stream tokens (:mod:`shared.stream_token`): minting one into each
TwiML it writes, checking the one a stream's ``start`` presents, and a command line for those who
write their own TwiML::

    python -m services.twilio_edge.token --call-sid CA... [--param From=+1555...] [--ttl 300]

prints the value of the ``gw_token`` ``<Parameter>`` for a stream of that call carrying exactly
those other ``<Parameter>``s, under the key this environment derives (``STREAM_TOKEN_SECRET``,
else ``TWILIO_AUTH_TOKEN``, else ``TWILIO_SHARED_KEY_SECRET``). A TwiML server in Python calls
:func:`shared.stream_token.mint` with ``Settings().stream_token_key()`` instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import redis.asyncio as aioredis

from shared import twilio_media as tw
from shared.runtime.redis_io import RETRYABLE
from shared.runtime.settings import load_settings
from shared.stream_token import (
    TOKEN_PARAMETER,
    WEBHOOK_TTL_S,
    StreamTokenError,
    mint,
    verify,
)

log = logging.getLogger("gateway.edge")

_NONCE_KEY = "gw:stream-token:{}"  # an outbound token's nonce, once it has been used


class StreamTokens:
    """Mints tokens when the edge has a key; checks them at ``start`` when ``required`` (the
    edge checks Twilio's signatures)."""

    def __init__(self, key: bytes | None, required: bool) -> None:
        self.key = key
        self.required = required and key is not None

    def with_token(self, call_sid: str | None, parameters: dict[str, str]) -> dict[str, str]:
        """``parameters`` with the token that covers them (as they are when there is no key)."""
        if self.key is None:
            return parameters
        token = mint(self.key, call_sid or None, parameters, int(time.time()), WEBHOOK_TTL_S)
        return parameters | {TOKEN_PARAMETER: token}

    async def refusal(self, redis: aioredis.Redis, event: tw.StreamStarted) -> str | None:
        """Why the stream's start is refused (a metric label's tail), or ``None``. An outbound
        call's token (no CallSid in it) is taken once: the first stream that shows it."""
        if not self.required:
            return None
        assert self.key is not None
        params = event.custom_parameters
        try:
            claims = verify(
                self.key, params.get(TOKEN_PARAMETER), event.call_sid, params, int(time.time())
            )
        except StreamTokenError as exc:
            log.warning("refused a stream's token on call %s: %s", event.call_sid, exc)
            return exc.reason
        if not claims.call_sid:
            ttl = max(1, claims.expires_s - int(time.time()) + 1)
            try:
                first = await redis.set(
                    _NONCE_KEY.format(claims.nonce), event.call_sid, nx=True, ex=ttl
                )
            except RETRYABLE as exc:
                log.warning("cannot check an outbound token's use (%s); refusing it", exc)
                return "unavailable"
            if not first:
                log.warning("refused a stream's token on call %s: used before", event.call_sid)
                return "used"
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.twilio_edge.token",
        description="Mint the gw_token <Parameter> for a Media Stream whose TwiML you write.",
    )
    parser.add_argument("--call-sid", required=True, help="the call's CallSid (CA...)")
    parser.add_argument(
        "--param", action="append", default=[], help="NAME=VALUE: every other <Parameter>"
    )
    parser.add_argument("--ttl", type=int, default=WEBHOOK_TTL_S, help="seconds it stays good")
    args = parser.parse_args(argv)
    try:
        params = dict(p.split("=", 1) for p in args.param)
    except ValueError:
        parser.error("--param takes NAME=VALUE")
    key = load_settings().stream_token_key()
    if key is None:
        print(
            "no key: set STREAM_TOKEN_SECRET, TWILIO_AUTH_TOKEN or TWILIO_SHARED_KEY_SECRET",
            file=sys.stderr,
        )
        return 2
    print(mint(key, args.call_sid, params, int(time.time()), args.ttl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
