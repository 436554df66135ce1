"""What the console's routes depend on: the console itself (settings, its Redis store, where
recordings are) and the bearer token every ``/api`` route needs, as FastAPI dependencies."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.console.store import ConsoleStore
from shared.runtime.settings import Settings

_BEARER = HTTPBearer(auto_error=False, description="CONSOLE_TOKEN")


@dataclass(frozen=True)
class Console:
    """One console app's state, shared by its routes (``app.state.console``)."""

    settings: Settings
    store: ConsoleStore
    token: bytes
    recordings: Path | None
    stopping: Callable[[], bool]  # the process got SIGTERM: /readyz then fails
    have_swagger: bool

    def recording_path(self, call_sid: str) -> Path | None:
        """Where the call's recording is, if there is one."""
        path = self.recordings / f"{call_sid}.wav" if self.recordings else None
        return path if path is not None and path.is_file() else None


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


ConsoleDep = Annotated[Console, Depends(console_of)]


async def authorized(
    console: ConsoleDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
) -> None:
    """Every ``/api`` route: ``Authorization: Bearer <CONSOLE_TOKEN>``, compared in constant
    time; 401 otherwise."""
    given = credentials.credentials.encode() if credentials else b""
    if not secrets.compare_digest(given, console.token):
        raise HTTPException(
            401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
        )
