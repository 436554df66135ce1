"""What a simulated call is told to do, grouped as a caller of :func:`sim.twilio_call.run_call`
thinks of it: who is calling (:class:`CallIdentity`), how the call reaches the gateway and signs
its requests (:class:`Signing`), and what the caller does on the line (:class:`CallScript`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from sim.twilio_wire import DTMF_DIGITS, new_sid, ulaw_encode


def as_ulaw(audio: np.ndarray | bytes) -> bytes:
    """Caller audio as mu-law: bytes are taken as mu-law already, arrays as int16 at 8 kHz."""
    return bytes(audio) if isinstance(audio, bytes | bytearray) else ulaw_encode(audio)


@dataclass(frozen=True, slots=True)
class BargeIn:
    """The caller talks over the reply once it has been playing for ``after_s`` seconds."""

    after_s: float
    audio: np.ndarray | bytes  # int16 at 8 kHz, or mu-law


@dataclass(frozen=True, slots=True, eq=False)
class CallScript:
    """What the caller does: says ``audio``, then stays on the line (silence, as a phone line
    keeps streaming) and hangs up once nothing has been said, received or played for
    ``hold_after_s`` and Twilio's buffer is empty; but not before a reply has come when
    ``wait_for_reply`` (nor before a configured ``barge_in``), and never after
    ``max_duration_s``. ``dtmf``: (seconds, digit) key presses. ``stop``: send ``stop`` before
    closing (Twilio does; a test of an abrupt loss may not). ``mark_jitter_ms``: each mark
    goes back up to that much later than Twilio's playback returns it (uniformly, in order, as a
    real network's delay varies; ``mark_jitter_seed`` makes it repeatable).

    Raises ValueError for a key press Twilio could not send.
    """

    audio: np.ndarray | bytes  # int16 at 8 kHz, or mu-law
    dtmf: tuple[tuple[float, str], ...] = ()
    barge_in: BargeIn | None = None
    hold_after_s: float = 3.0
    max_duration_s: float = 30.0
    wait_for_reply: bool = True
    stop: bool = True
    mark_jitter_ms: float = 0.0
    mark_jitter_seed: int = 0

    def __post_init__(self) -> None:
        if any(digit not in DTMF_DIGITS for _, digit in self.dtmf):
            raise ValueError(f"Twilio sends one digit of 0-9, * or # a press: {self.dtmf!r}")
        object.__setattr__(self, "dtmf", tuple(sorted(self.dtmf)))


@dataclass(frozen=True, slots=True)
class CallIdentity:
    """Who calls: the call's SIDs (random, Twilio-shaped, unless given), its numbers, and
    ``custom_parameters`` added to (and overriding) the TwiML's ``<Parameter>``s."""

    call_sid: str = field(default_factory=lambda: new_sid("CA"))
    stream_sid: str = field(default_factory=lambda: new_sid("MZ"))  # the first stream's
    account_sid: str = field(default_factory=lambda: new_sid("AC"))
    from_number: str = "+15550001111"
    to_number: str = "+15550002222"
    custom_parameters: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Signing:
    """How the call reaches the gateway, and what Twilio signs.

    ``twiml_url``: POST the voice webhook first and follow its TwiML (without it, the call
    streams straight to the socket it dials). ``auth_token``: sign every request as Twilio does,
    the webhook over ``twiml_signed_url or twiml_url`` (what Twilio was configured with; behind
    a proxy it differs from what is dialled) and the first handshake over ``signed_url``, else
    the TwiML's stream URL, else the URL dialled. ``extra_headers`` go on every handshake.
    """

    auth_token: str | None = None
    twiml_url: str | None = None
    twiml_signed_url: str | None = None
    signed_url: str | None = None
    extra_headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, eq=False)
class CallOptions:
    """One simulated call: what the caller does, who calls, and how requests are signed."""

    script: CallScript
    identity: CallIdentity = field(default_factory=CallIdentity)
    signing: Signing = field(default_factory=Signing)
    # What the caller does on each later stream of the call (a <Connect action>'s TwiML
    # connecting again); None: ``script`` again.
    next_script: CallScript | None = None
