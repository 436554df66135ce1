"""When a call's model session cannot be opened: retry with backoff, or end the call.

One policy for every dialect (Realtime and GPT-Live alike): a credentials refusal ends the call
at once (``realtime_auth``), any other failure to connect is retried with capped, jittered
backoff until ``REALTIME_RESTORE_SECONDS`` have passed since the first failure in a row
(``realtime_unavailable``), and a session that opens resets both.
"""

from __future__ import annotations

import asyncio
import logging
import time

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from shared.backoff import Backoff
from shared.runtime.observability import RECONNECTS

log = logging.getLogger("gateway.worker")

# What opening a session raises for a failure worth retrying (a refusal has its own type).
CONNECT_FAILURES = (OSError, TimeoutError, InvalidHandshake, ConnectionClosed)


class Reconnects:
    """The retry state of one call's model sessions."""

    def __init__(self, restore_seconds: float) -> None:
        self.restore_seconds = restore_seconds
        self.backoff = Backoff(base_s=0.2, cap_s=2.0)
        self.deadline: float | None = None  # when retrying stops; None: the last open worked

    async def failed(self, exc: BaseException, what: str) -> str | None:
        """The call's end reason, or ``None`` after waiting the next delay (then try again)."""
        if isinstance(exc, InvalidStatus) and exc.response.status_code in (401, 403):
            log.error("OpenAI refused our credentials (%s)", exc.response.status_code)
            return "realtime_auth"
        now = time.monotonic()
        self.deadline = self.deadline or now + self.restore_seconds
        if now >= self.deadline:
            return "realtime_unavailable"
        RECONNECTS.labels("openai").inc()
        delay = self.backoff.next_delay()
        log.warning("%s connect failed (%s); retrying in %.2fs", what, exc, delay)
        await asyncio.sleep(delay)
        return None

    def lost(self) -> None:
        """An open session was lost: the restore window runs from now."""
        self.deadline = time.monotonic() + self.restore_seconds

    def opened(self) -> None:
        self.backoff.reset()
        self.deadline = None
