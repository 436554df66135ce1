"""The emulator's ``response.done`` usage: token counts shaped as the GA types define them
(``RealtimeResponseUsage``), from what the session holds, so the gateway's accounting is tested
against numbers that move like the live API's.

The estimates follow the live API's published rates closely enough for a test: audio input
10 tokens a second, audio output 20 a second, text about 4 characters a token. A response's
input is the whole conversation so far; what the previous response already read counts as
cached, as the live API's prompt cache does for an unchanged prefix.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

AUDIO_IN_PER_S = 10
AUDIO_OUT_PER_S = 20


def text_tokens(text: str) -> int:
    return (len(text) + 3) // 4 if text else 0


@dataclass
class UsageMeter:
    """One session's meter: the input the previous response read (what the cache holds)."""

    cached_text: int = 0
    cached_audio: int = 0
    counted: list[dict[str, Any]] = field(default_factory=list)

    def response(
        self,
        instructions: str,
        items: Iterable[tuple[str, float]],
        output_audio_ms: float,
        output_text: str,
        *,
        speaks: bool,
    ) -> dict[str, Any]:
        """The usage of one response. ``items``: the conversation's items before it, each as
        (role, audio ms); ``output_*``: what the response produced."""
        audio_in = sum(
            round(ms / 1000 * (AUDIO_IN_PER_S if role == "user" else AUDIO_OUT_PER_S))
            for role, ms in items
        )
        text_in = text_tokens(instructions)
        cached_text = min(self.cached_text, text_in)
        cached_audio = min(self.cached_audio, audio_in)
        self.cached_text, self.cached_audio = text_in, audio_in
        audio_out = round(output_audio_ms / 1000 * AUDIO_OUT_PER_S) if speaks else 0
        text_out = text_tokens(output_text)
        usage = {
            "total_tokens": text_in + audio_in + text_out + audio_out,
            "input_tokens": text_in + audio_in,
            "output_tokens": text_out + audio_out,
            "input_token_details": {
                "text_tokens": text_in,
                "audio_tokens": audio_in,
                "image_tokens": 0,
                "cached_tokens": cached_text + cached_audio,
                "cached_tokens_details": {
                    "text_tokens": cached_text,
                    "audio_tokens": cached_audio,
                    "image_tokens": 0,
                },
            },
            "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
        }
        self.counted.append(usage)
        return usage
