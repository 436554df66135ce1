"""A caller who stays silent: asked up to ``idle_prompts`` times, then told goodbye and hung up.

Pure. With ``[turn_detection] idle_timeout_ms`` the GA server emits
``input_audio_buffer.timeout_triggered`` after that much silence from the caller (counted from
the end of the model's last audio) and answers it itself with a response: the model asks
whether the caller is still there. This core counts those timeouts since the caller last spoke.
Past ``idle_prompts`` of them, the server's own response is cancelled as soon as it is created
(its audio never reaches the caller), the model is asked for a short goodbye instead, and once
that goodbye was heard (the marks Twilio returned, or its length plus a margin) the call ends as
a ``hang_up`` tool ends it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

GOODBYE = (
    "The caller has stayed silent. Say a short, polite goodbye in one sentence now; the call "
    "ends after it. Do not ask anything."
)
ENDING_MARGIN_US = 2_000_000  # as the hang_up tool: when marks stop coming
IDLE_REASON = "caller_idle"
Phase = Literal["listening", "cancel_next", "cancelling", "goodbye_owed", "goodbye", "ending"]


@dataclass
class IdleWatch:
    """One call's silences. ``prompts``: how many times the model may ask first."""

    prompts: int
    timeouts: int = 0
    phase: Phase = "listening"
    cancelled: str = ""  # the server's response to the last timeout, being cancelled
    goodbye_response: str = ""
    deadline_us: int = 0

    def caller_spoke(self) -> None:
        """The caller spoke: the count starts again (not once the goodbye is under way)."""
        if self.phase in ("listening", "cancel_next"):
            self.timeouts, self.phase = 0, "listening"

    def timeout(self) -> bool:
        """A ``timeout_triggered``; ``True`` when it is one too many (the gateway takes over)."""
        if self.phase != "listening":
            return False
        self.timeouts += 1
        if self.timeouts <= self.prompts:
            return False  # the server's own response asks "are you still there?"
        self.phase = "cancel_next"
        return True

    def response_created(self, response_id: str) -> bool:
        """Whether to cancel this response (the server's answer to the last timeout), or note
        it as the goodbye."""
        if self.phase == "cancel_next":
            self.phase, self.cancelled = "cancelling", response_id
            return True
        if self.phase == "goodbye" and not self.goodbye_response:
            self.goodbye_response = response_id
        return False

    def response_done(self, response_id: str, unheard_us: int, now_us: int) -> bool:
        """Whether to ask for the goodbye now (the cancelled response has ended). When the
        goodbye itself has ended, the call ends once it was heard."""
        if self.phase == "cancelling" and response_id == self.cancelled:
            self.phase = "goodbye_owed"
        if self.phase == "goodbye" and response_id == self.goodbye_response:
            self.phase, self.deadline_us = "ending", now_us + unheard_us + ENDING_MARGIN_US
        return self.take_goodbye()

    def take_goodbye(self) -> bool:
        if self.phase != "goodbye_owed":
            return False
        self.phase = "goodbye"
        return True

    def ends_now(self, playing: bool, now_us: int) -> bool:
        """Whether the goodbye was heard (or its time is up): the call ends."""
        if self.phase != "ending" or (playing and now_us < self.deadline_us):
            return False
        self.phase = "listening"
        return True
