"""What a test awaits of an emulated session (Realtime or Live): an event sent or received, a
condition, the close. Both sessions keep their events in ``server_events`` / ``client_events``,
set ``closed`` and call :meth:`SessionWaiters._notify` whenever any of it changes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


class SessionWaiters:
    """Mixin: awaiting a session's state, woken by ``_notify`` (no polling)."""

    server_events: list[dict[str, Any]]
    client_events: list[dict[str, Any]]
    closed: bool
    _changed: asyncio.Condition

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, check: Callable[[], Any], timeout: float = 5.0) -> Any:
        """``check()``'s first truthy value, re-checked at every change of the session."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                while not (found := check()):
                    await self._changed.wait()
                return found

    async def wait_for_event(
        self,
        type: str,
        timeout: float = 5.0,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """The first server event of ``type`` (that ``predicate`` accepts) sent so far or next."""
        return await self._first(self.server_events, type, timeout, predicate)

    async def wait_for_client_event(
        self,
        type: str,
        timeout: float = 5.0,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """The first client event of ``type`` (that ``predicate`` accepts) received so far or
        next."""
        return await self._first(self.client_events, type, timeout, predicate)

    async def wait_closed(self, timeout: float = 5.0) -> None:
        await self.wait_for(lambda: self.closed, timeout)

    async def _first(
        self,
        events: list[dict[str, Any]],
        type: str,
        timeout: float,
        predicate: Callable[[dict[str, Any]], bool] | None,
    ) -> dict[str, Any]:
        found: dict[str, Any] = await self.wait_for(
            lambda: next(
                (
                    e
                    for e in events
                    if e.get("type") == type and (predicate is None or predicate(e))
                ),
                None,
            ),
            timeout,
        )
        return found
