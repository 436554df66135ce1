"""The bench's count of caller frames at the model: it waits for the pipeline to drain (to a
bound) and tells late frames from lost and doubled ones, on a scripted clock."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from bench.pipeline import await_drain


class _Clock:
    """A clock that only moves when the bench sleeps, and a frame count that follows it."""

    def __init__(self, arrivals: Callable[[float], float]) -> None:
        self.t = 0.0
        self.arrivals = arrivals
        self.sleeps = 0

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps += 1
        self.t += s

    def count(self) -> float:
        return self.arrivals(self.t)


def _drain(clock: _Clock, sent: float) -> dict[str, float | None]:
    return await_drain(
        clock.count, sent, late_after_s=1.0, timeout_s=5.0, clock=clock.now, sleep=clock.sleep
    )


def test_frames_already_there_end_the_wait_at_once() -> None:
    clock = _Clock(lambda t: 100.0)
    out = _drain(clock, 100)
    assert out == {"received": 100.0, "lost": 0.0, "late": 0.0, "duplicated": 0.0, "drain_s": 0.0}
    assert clock.sleeps == 0


def test_frames_that_come_after_the_grace_are_late_not_lost() -> None:
    # 80 within the first second, the other 20 at 2.5 s: the former fixed 1 s wait lost them.
    clock = _Clock(lambda t: 80.0 if t < 2.5 else 100.0)
    out = _drain(clock, 100)
    assert out["lost"] == 0.0 and out["late"] == 20.0 and out["duplicated"] == 0.0
    assert out["drain_s"] is not None and 2.5 <= out["drain_s"] < 2.6


def test_frames_that_never_come_are_lost_after_the_bounded_wait() -> None:
    clock = _Clock(lambda t: 90.0 if t < 3.0 else 95.0)
    out = _drain(clock, 100)
    assert out["lost"] == 5.0 and out["late"] == 5.0 and out["drain_s"] is None
    assert 5.0 <= clock.t < 5.1  # bounded: it gave up at the timeout


def test_frames_counted_twice_are_doubled_not_late() -> None:
    clock = _Clock(lambda t: 103.0)
    out = _drain(clock, 100)
    assert out["duplicated"] == 3.0 and out["lost"] == 0.0 and out["late"] == 0.0


def test_the_whole_way_delay_sets_each_append_against_the_callers_frame_clock(
    tmp_path: Path,
) -> None:
    from bench.pipeline import PICKUP_TAG, model_delays
    from sim.session_record import Arrivals

    started = 1000.0
    folder = tmp_path / "0001"
    folder.mkdir()
    (folder / "timing.json").write_text(json.dumps({"instructions": f"{PICKUP_TAG}0"}))
    arrivals = Arrivals()
    for k in range(300):  # 6 s of frames: 10 ms on the way, then 500 ms for the last 50
        late = 0.5 if k >= 250 else 0.01
        arrivals.add(960 * (k + 1), at=started + 0.02 * k + late)
    arrivals.write(folder)
    out = model_delays(tmp_path, [SimpleNamespace(started_wall=started)])
    assert out["count"] == 200  # the first 2 s are the pickup's, left out
    assert abs(out["p50"] - 10) < 0.01 and abs(out["max"] - 500) < 0.01
    assert out["over_1s"] == 0
    assert model_delays(tmp_path, [RuntimeError("failed")]) == {"count": 0.0}
