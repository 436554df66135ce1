"""Opening a Realtime session, sans I/O: ``session.created`` -> ``session.update`` ->
``session.updated``, and which dialect to try next when the server refuses one.

The shell connects with :meth:`RealtimeHandshake.connect_request`, feeds every server message to
:meth:`~RealtimeHandshake.receive` and the socket's close to :meth:`~RealtimeHandshake.closed`,
and does what the returned steps say: send a text, use the session (:class:`Ready`), connect
again in another dialect (:class:`SwitchDialect`, only under ``REALTIME_SCHEMA=auto``), give up
(:class:`Refused`: the same request would be refused again) or retry later (:class:`Dropped`).
One object is one attempt at one session, so a second handshake can run beside a live session
(a rollover) without sharing any state with it; :meth:`next_attempt` carries the dialect choice
over to a new connection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from shared.realtime_dialect import (
    Combo,
    ConnectRequest,
    ErrorKind,
    RealtimeDialect,
    RealtimeProtocolError,
    ServerError,
    ServerEvent,
    SessionConfig,
    SessionCreated,
    SessionUpdated,
    close_refusal,
)


@dataclass(frozen=True, slots=True)
class SendText:
    """A client event to send, as JSON text."""

    text: str


@dataclass(frozen=True, slots=True)
class Ready:
    """The session is configured: converse with ``dialect``."""

    dialect: RealtimeDialect
    session: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SwitchDialect:
    """The server speaks the other dialect: close, then connect again with ``dialect``."""

    dialect: RealtimeDialect
    reason: str


@dataclass(frozen=True, slots=True)
class Refused:
    """No session: every dialect allowed was refused, or the update itself (a bad voice, auth)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Dropped:
    """The socket closed for no reason of ours: connect again later, in the same dialect."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """A server message that was not an event (counted by the shell)."""

    reason: str


HandshakeStep = SendText | Ready | SwitchDialect | Refused | Dropped | Ignored


class RealtimeHandshake:
    """One attempt at opening one session; :meth:`next_attempt` makes the next one."""

    def __init__(
        self,
        config: SessionConfig,
        combo: Combo,
        *,
        negotiate: bool,
        tried: tuple[Combo, ...] = (),
        reasons: tuple[str, ...] = (),
        beta_header: bool | None = None,
    ) -> None:
        self.config = config
        self.negotiate = negotiate
        header = combo.beta_header if beta_header is None else beta_header
        self.dialect = RealtimeDialect(combo.value, header, config)
        self._tried = (*tried, combo)
        self._reasons = reasons
        self._sent_update = False
        self.outcome: HandshakeStep | None = None  # Ready / SwitchDialect / Refused / Dropped

    @classmethod
    def for_schema(
        cls,
        config: SessionConfig,
        schema: str,
        beta_header: bool,
        preferred: Combo = Combo.GA,
    ) -> RealtimeHandshake:
        """``REALTIME_SCHEMA`` as configured: ``audio`` / ``flat`` with the header as set (the
        smoke test may pair them otherwise), or ``auto``, starting with ``preferred`` (the combo
        the server accepted last time)."""
        if schema == "auto":
            return cls(config, preferred, negotiate=True)
        return cls(config, Combo(schema), negotiate=False, beta_header=beta_header)

    def next_attempt(self) -> RealtimeHandshake:
        """A fresh attempt: in the dialect a :class:`SwitchDialect` named, else the same one."""
        step = self.outcome
        if isinstance(step, SwitchDialect):
            return RealtimeHandshake(
                self.config,
                step.dialect.combo,
                negotiate=True,
                tried=self._tried,
                reasons=self._reasons,
            )
        return RealtimeHandshake(
            self.config,
            self.dialect.combo,
            negotiate=self.negotiate,
            beta_header=self.dialect.beta_header,
        )

    @property
    def done(self) -> bool:
        return self.outcome is not None

    def connect_request(self, url: str, model: str, api_key: str) -> ConnectRequest:
        return self.dialect.connect_request(url, model, api_key)

    def receive(self, message: str | bytes) -> list[HandshakeStep]:
        """Steps for one server message (none once the handshake is decided)."""
        if self.outcome is not None:
            return []
        try:
            event = self.dialect.parse(message)
        except RealtimeProtocolError as exc:
            return [Ignored(str(exc))]
        return self.event(event)

    def event(self, event: ServerEvent) -> list[HandshakeStep]:
        """Steps for one parsed server event."""
        if self.outcome is not None:
            return []
        if isinstance(event, SessionCreated) and not self._sent_update:
            self._sent_update = True
            return [SendText(json.dumps(self.dialect.session_update()))]
        if isinstance(event, SessionUpdated) and self._sent_update:
            return [self._decide(Ready(self.dialect, event.session))]
        if isinstance(event, ServerError):
            if event.kind is ErrorKind.BENIGN:
                return []
            reason = f"{event.code}: {event.message}".strip(": ")
            if event.kind is ErrorKind.DIALECT_MISMATCH:
                return [self._mismatch(reason)]
            if event.kind is ErrorKind.FATAL or self._sent_update:
                # Only our update has been sent: any other error answers it, and the same
                # update would be refused on every reconnect.
                return [self._decide(Refused(reason))]
        return []

    def closed(self, code: int, reason: str) -> HandshakeStep:
        """The socket closed before the handshake was decided (or its outcome if it was)."""
        if self.outcome is not None:
            return self.outcome
        refusal = close_refusal(code, reason)
        if refusal:  # 4000: the beta shape is gone for good
            return self._mismatch(refusal)
        return self._decide(Dropped(code, reason))

    def _mismatch(self, reason: str) -> HandshakeStep:
        reasons = (*self._reasons, f"{self.dialect.combo.name}: {reason}")
        other = self.dialect.combo.other()
        if not self.negotiate or other in self._tried:
            return self._decide(Refused("; ".join(reasons)))
        self._reasons = reasons
        return self._decide(SwitchDialect(RealtimeDialect.for_combo(other, self.config), reason))

    def _decide(self, step: HandshakeStep) -> HandshakeStep:
        self.outcome = step
        return step
