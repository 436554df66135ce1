"""The TwiML a simulated call follows, and in which order (pure).

:func:`parse_twiml` reads a document into the verbs the simulator knows. :class:`CallFlow` is
the call seen as Twilio runs it: a sequence of TwiML documents (the voice webhook's, then each
``<Connect action>``'s), each followed verb by verb. Its :meth:`~CallFlow.next_step` says what
the shell does next: fetch a document (:class:`FetchTwiml`), run a Media Stream
(:class:`OpenStream`, one :class:`~sim.twilio_script.SimulatedStream`), or end the call
(:class:`Transfer` for a ``<Dial>``, :class:`CallOver` otherwise).

When a ``<Connect>`` ends because the gateway closed its stream, Twilio requests its ``action``
(when it has one) with the standard call parameters and follows the TwiML answered instead of
the rest of the document; without an action it goes on to the next verb, and with none left it
hangs up. When the caller hangs up, the call is over.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from sim.twilio_options import CallIdentity

TWIML_CONTENT_TYPES = frozenset({"text/xml", "application/xml", "text/html"})
_LOOPBACK = ("127.", "localhost", "::1")


class WebhookError(RuntimeError):
    """A webhook failed or its TwiML cannot be followed: Twilio would hang up.

    ``status``: the HTTP status answered (0: unreachable or not an HTTP failure).
    """

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


# --- verbs --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectStream:
    """``<Connect [action]><Stream url [statusCallback]>`` and its ``<Parameter>``s."""

    url: str
    parameters: dict[str, str] = field(default_factory=dict)
    status_callback: str | None = None
    action: str | None = None  # absolute (resolved against the document's URL)
    method: str = "POST"  # the action's


@dataclass(frozen=True, slots=True)
class Dial:
    number: str


@dataclass(frozen=True, slots=True)
class Hangup:
    pass


@dataclass(frozen=True, slots=True)
class Skipped:
    """A verb Twilio would play (``<Say>``, ``<Pause>``, a one-way ``<Start><Stream>``...) and
    the simulator passes over."""

    verb: str


Verb = ConnectStream | Dial | Hangup | Skipped


def _stream_url(url: str) -> str:
    parts = urlsplit(url)
    # Twilio dials only wss:// (error 31922) and takes no query string (parameters go in
    # <Parameter>). ws:// passes only for a loopback host: a local run without TLS, which Twilio
    # could not reach anyway.
    secure = parts.scheme == "wss" or (
        parts.scheme == "ws" and (parts.hostname or "").startswith(_LOOPBACK)
    )
    if not secure or not parts.hostname or parts.query:
        raise WebhookError(f"Stream url must be wss:// with no query string: {url!r}")
    return url


def _connect(connect: ET.Element, base_url: str | None) -> Verb:
    stream = connect.find("Stream")
    if stream is None:
        return Skipped("Connect")  # <Connect> to something else than a stream
    url = stream.get("url", "")
    if not url:
        raise WebhookError("<Connect><Stream> without a url")
    params: dict[str, str] = {}
    for p in stream.findall("Parameter"):
        name = p.get("name")
        if not name:
            raise WebhookError("<Parameter> without a name")
        params[name] = p.get("value", "")
    action = connect.get("action")
    method = connect.get("method", "POST").upper()
    if method not in ("GET", "POST"):
        raise WebhookError(f"<Connect method> must be GET or POST, not {method!r}")
    return ConnectStream(
        _stream_url(url),
        params,
        stream.get("statusCallback"),
        urljoin(base_url or "", action) if action else None,
        method,
    )


def parse_twiml(twiml: str, base_url: str | None = None) -> list[Verb]:
    """A TwiML document's verbs, in order; raises WebhookError for what Twilio would refuse.

    ``base_url``: where the document came from, against which relative action URLs resolve.
    """
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError as exc:
        raise WebhookError(f"TwiML is not XML ({exc}): {twiml[:80]!r}") from None
    if root.tag != "Response":
        raise WebhookError(f"TwiML must be a <Response>: {twiml[:120]!r}")
    verbs: list[Verb] = []
    for element in root:
        if element.tag == "Connect":
            verbs.append(_connect(element, base_url))
        elif element.tag == "Dial":
            number = (element.findtext("Number") or element.text or "").strip()
            if not number:
                raise WebhookError("<Dial> without a number")
            verbs.append(Dial(number))
        elif element.tag == "Hangup":
            verbs.append(Hangup())
        else:
            verbs.append(Skipped(element.tag))
    return verbs


def parse_connect_stream(twiml: str) -> tuple[str, dict[str, str]]:
    """The first ``<Connect><Stream url>`` and its ``<Parameter>``s; raises WebhookError."""
    for verb in parse_twiml(twiml):
        if isinstance(verb, ConnectStream):
            return verb.url, verb.parameters
    raise WebhookError(f"TwiML has no <Response><Connect><Stream url>: {twiml[:120]!r}")


# --- the call's flow ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FetchTwiml:
    """Request ``url`` (the voice webhook, or an action) with ``form``; hand the TwiML to
    :meth:`CallFlow.answered`."""

    url: str
    method: str
    form: dict[str, str]


@dataclass(frozen=True, slots=True)
class OpenStream:
    """Run this stream; then :meth:`CallFlow.stream_ended`."""

    verb: ConnectStream


@dataclass(frozen=True, slots=True)
class Transfer:
    """A ``<Dial>``: the caller is handed on to ``number``; the simulated call ends there."""

    number: str


@dataclass(frozen=True, slots=True)
class CallOver:
    reason: str


Step = FetchTwiml | OpenStream | Transfer | CallOver


class FlowStateError(RuntimeError):
    """A step asked for while the previous one is still outstanding (a bug in the shell)."""


class CallFlow:
    """Which TwiML a call follows next. Start it with a webhook to fetch, or with verbs."""

    def __init__(self, identity: CallIdentity, webhook: str | None = None) -> None:
        self.identity = identity
        self._verbs: deque[Verb] = deque()
        self._next: Step | None = None
        self._outstanding: Step | None = None
        self.followed: list[Verb] = []  # every verb followed, in order (skipped ones too)
        if webhook:
            self._next = FetchTwiml(webhook, "POST", self.form("ringing"))

    def form(self, call_status: str) -> dict[str, str]:
        """Twilio's standard parameters of a request about this call."""
        identity = self.identity
        return {
            "AccountSid": identity.account_sid,
            "ApiVersion": "2010-04-01",
            "CallSid": identity.call_sid,
            "CallStatus": call_status,
            "Called": identity.to_number,
            "Caller": identity.from_number,
            "Direction": "inbound",
            "From": identity.from_number,
            "To": identity.to_number,
        }

    def play(self, verbs: list[Verb]) -> None:
        """Follow these verbs (what a fetched document says, or a call placed without one)."""
        self._verbs = deque(verbs)

    def answered(self, twiml: str) -> None:
        """The TwiML the outstanding :class:`FetchTwiml` got; raises WebhookError."""
        fetch = self._outstanding
        if not isinstance(fetch, FetchTwiml):
            raise FlowStateError(f"no TwiML was asked for (outstanding: {fetch!r})")
        self._outstanding = None
        self.play(parse_twiml(twiml, fetch.url))

    def stream_ended(self, by_gateway: bool) -> None:
        """The outstanding stream is over: closed by the gateway, or the caller hung up."""
        stream = self._outstanding
        if not isinstance(stream, OpenStream):
            raise FlowStateError(f"no stream is open (outstanding: {stream!r})")
        self._outstanding = None
        if not by_gateway:
            self._next = CallOver("the caller hung up")
        elif stream.verb.action:
            form = self.form("in-progress")
            self._next = FetchTwiml(stream.verb.action, stream.verb.method, form)
            self._verbs.clear()  # the action's TwiML replaces the rest of the document

    def next_step(self) -> Step:
        if self._outstanding is not None:
            raise FlowStateError(f"{self._outstanding!r} is still outstanding")
        step, self._next = self._next, None
        while step is None:
            if not self._verbs:
                step = CallOver("no verbs left")
                break
            verb = self._verbs.popleft()
            self.followed.append(verb)
            if isinstance(verb, ConnectStream):
                step = OpenStream(verb)
            elif isinstance(verb, Dial):
                step = Transfer(verb.number)
            elif isinstance(verb, Hangup):
                step = CallOver("<Hangup/>")
        if isinstance(step, FetchTwiml | OpenStream):
            self._outstanding = step
        else:
            self._next = step  # over stays over
        return step
