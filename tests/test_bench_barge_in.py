"""The bench's combo C barge-in figure, on hand-made timelines: what the caller heard of the
interrupted reply after the model's output went quiet."""

from __future__ import annotations

import numpy as np

from bench.barge_in import end_of_sound_s, heard_after_stop_ms, model_stopped_at
from shared.audio import mulaw_encode


def _heard(*spans: tuple[float, float]) -> bytes:
    """Three seconds of mu-law, loud within each (start_s, end_s)."""
    pcm = np.zeros(3 * 8000, dtype=np.int16)
    for start, end in spans:
        pcm[int(start * 8000) : int(end * 8000)] = 3000
    return mulaw_encode(pcm)


def test_the_interrupted_reply_ends_at_the_first_pause_not_at_the_next_reply() -> None:
    heard = _heard((0.5, 1.30), (2.0, 2.5))  # the reply, then the answer to the interruption
    assert abs((end_of_sound_s(heard, 1.0) or 0) - 1.30) < 0.001
    assert end_of_sound_s(_heard(), 1.0) is None


def test_the_model_stops_at_its_last_sound_before_silence_after_the_barge_in() -> None:
    chunks = [(t, t + 0.04, 10.0 <= t < 10.6 or t >= 11.5) for t in np.arange(9.8, 12.0, 0.04)]
    stopped = model_stopped_at([(float(a), float(b), s) for a, b, s in chunks], 10.3)
    assert stopped is not None and abs(stopped - 10.6) < 0.041
    assert model_stopped_at([], 10.3) is None


def test_reply_heard_after_the_stop_is_the_difference_and_never_negative() -> None:
    heard = _heard((0.5, 1.30))
    assert abs(heard_after_stop_ms(heard, 100.0, 1.0, 101.1) - 200) < 1
    assert heard_after_stop_ms(heard, 100.0, 1.0, 101.5) == 0.0
