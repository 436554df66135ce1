"""Server VAD's idle timeout in the emulator (``idle_timeout_ms``, GA).

The live API's rule, as the GA types document it: the timeout runs from the end of the model's
last audio as the caller hears it (``response.done`` plus the audio's playback length), or from
the end of the caller's speech, and when it is reached the server emits
``input_audio_buffer.timeout_triggered`` and answers with a response of its own. Time here is
the caller's input audio (a phone line streams silence in real time), so the clock needs no
timer.
"""

from __future__ import annotations

from dataclasses import dataclass

IDLE_PROMPT = "Are you still there?"


@dataclass
class IdleClock:
    """When the caller's silence began, in input-audio milliseconds (``None``: not counting,
    e.g. while a response is being made or after the timeout fired)."""

    since_ms: float | None = None

    def reset(self, at_ms: float) -> None:
        """The caller stopped speaking, or a response ended and plays until ``at_ms``."""
        self.since_ms = at_ms

    def pause(self) -> None:
        self.since_ms = None

    def due(self, now_ms: float, timeout_ms: int | None) -> tuple[float, float] | None:
        """The silence (start, end) once it has lasted ``timeout_ms``; fires once per silence."""
        if timeout_ms is None or self.since_ms is None or now_ms - self.since_ms < timeout_ms:
            return None
        start, self.since_ms = self.since_ms, None
        return start, now_ms
