"""Opening a Realtime session, sans I/O: ``session.created`` -> ``session.update`` ->
``session.updated``, and which dialect to try next when the server refuses one.

The shell connects with :meth:`RealtimeHandshake.connect_request`, feeds every server message to
:meth:`~RealtimeHandshake.receive` and the socket's close to :meth:`~RealtimeHandshake.closed`,
and does what the returned steps say: send a text, use the session (:class:`Ready`), connect
again in another dialect (:class:`SwitchDialect`: under ``REALTIME_SCHEMA=auto``, or from the
beta dialect to GA when the server says the beta shape is retired), give up (:class:`Refused`:
the same request would be refused again) or retry later (:class:`Dropped`). One object is one
attempt at one session, so a second handshake can run beside a live session (a rollover) without
sharing any state with it; :meth:`next_attempt` carries the dialect choice over to a new
connection, and :class:`DialectMemory` carries what one process learned over to its later calls.

The retired beta: since May 2026 the live API answers a connection with the beta header with an
``error`` (code ``beta_api_shape_disabled``) and closes it with 4000. A deployment configured
from the dialect report for combo B (``REALTIME_SCHEMA=flat``) would fail every call; instead the
handshake goes on in GA (combo A) in the same call, and the process opens GA directly from then
on. Only that refusal moves a configured combo B: any other refusal stays a refusal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from shared.realtime_dialect import (
    BETA_RETIRED_CODE,
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
    """The server speaks the other dialect: close, then connect again with ``dialect``.

    ``beta_retired``: the server refused the beta shape as retired (``reason`` carries its own
    words); the process should remember it (:meth:`DialectMemory.learn`)."""

    dialect: RealtimeDialect
    reason: str
    beta_retired: bool = False


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
        *,
        beta_retired: bool = False,
    ) -> RealtimeHandshake:
        """``REALTIME_SCHEMA`` as configured: ``audio`` / ``flat`` with the header as set (the
        smoke test may pair them otherwise), or ``auto``, starting with ``preferred`` (the combo
        the server accepted last time). ``beta_retired``: the server has said the beta shape is
        gone, so what would open with the beta header opens in GA instead."""
        if schema == "auto":
            if beta_retired:
                return cls(config, Combo.GA, negotiate=True, tried=(Combo.BETA,))
            return cls(config, preferred, negotiate=True)
        if beta_retired and beta_header:
            return cls(config, Combo.GA, negotiate=False, tried=(Combo.BETA,))
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
                return [self._mismatch(reason, retired=event.code == BETA_RETIRED_CODE)]
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
            return self._mismatch(refusal, retired=True)
        return self._decide(Dropped(code, reason))

    def _mismatch(self, reason: str, *, retired: bool = False) -> HandshakeStep:
        reasons = (*self._reasons, f"{self.dialect.combo.name}: {reason}")
        other = self.dialect.combo.other()
        # The beta shape retired: GA is the only way on, whatever REALTIME_SCHEMA said.
        retired = retired and self.dialect.beta_header
        if not (self.negotiate or retired) or other in self._tried:
            return self._decide(Refused("; ".join(reasons)))
        self._reasons = reasons
        dialect = RealtimeDialect.for_combo(Combo.GA if retired else other, self.config)
        return self._decide(SwitchDialect(dialect, reason, beta_retired=retired))

    def _decide(self, step: HandshakeStep) -> HandshakeStep:
        self.outcome = step
        return step


class DialectMemory:
    """What one process learned about the server's dialects, for its later sessions.

    Under ``auto``, the combo the server accepted last is tried first; once the server said the
    beta shape is retired, sessions that would open with the beta header (``flat``, or ``auto``)
    open in GA directly. Plain state, one per process (never shared between processes).
    """

    def __init__(self) -> None:
        self.preferred = Combo.GA
        self.beta_retired = False

    def handshake(self, config: SessionConfig, schema: str, beta_header: bool) -> RealtimeHandshake:
        """The first attempt at a session for ``REALTIME_SCHEMA=schema``, as the process knows
        the server now."""
        return RealtimeHandshake.for_schema(
            config, schema, beta_header, self.preferred, beta_retired=self.beta_retired
        )

    def accepted(self, dialect: RealtimeDialect) -> None:
        """A session opened in ``dialect``."""
        self.preferred = dialect.combo

    def learn(self, step: HandshakeStep) -> bool:
        """Note a handshake's step; True only the first time the server says the beta shape is
        retired (the one warning a process gives about it)."""
        if not (isinstance(step, SwitchDialect) and step.beta_retired):
            return False
        first = not self.beta_retired
        self.beta_retired = True
        self.preferred = Combo.GA
        return first
