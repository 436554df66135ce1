"""The emulator's session record: files kept open a session (not opened a event), every write
readable at once by another process, and the caller audio's arrivals read back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import sim.session_record as session_record
from sim.session_record import Arrivals, SessionRecord, read_arrivals


def test_a_file_is_opened_once_a_session_and_each_write_is_readable_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []

    def counting_open(path: Path, mode: str) -> Any:
        opened.append(Path(path).name)
        return open(path, mode)  # noqa: SIM115 - the record closes it

    monkeypatch.setattr(session_record, "open", counting_open, raising=False)
    record = SessionRecord(tmp_path / "0001")
    for i in range(50):  # a second of a call's frames, and its events
        record.append("input.pcm", bytes([i]) * 960)
        record.append("events.jsonl", f'{{"n": {i}}}\n')
        assert (tmp_path / "0001" / "input.pcm").stat().st_size == 960 * (i + 1)
    assert sorted(opened) == ["events.jsonl", "input.pcm"]
    assert (tmp_path / "0001" / "events.jsonl").read_text().count("\n") == 50
    record.close()
    record.append("events.jsonl", '{"type": "closed"}\n')  # after the end: opened again
    record.close()
    assert (tmp_path / "0001" / "events.jsonl").read_text().endswith('{"type": "closed"}\n')


def test_nothing_is_written_without_a_folder() -> None:
    record = SessionRecord(None)
    record.append("input.pcm", b"\x00" * 960)
    record.close()


def test_arrivals_round_trip(tmp_path: Path) -> None:
    arrivals = Arrivals()
    for k in range(1, 4):
        arrivals.add(960 * k, at=100.0 + 0.02 * k)
    arrivals.write(tmp_path)
    back = read_arrivals(tmp_path)
    assert np.allclose(back, [[100.02, 960], [100.04, 1920], [100.06, 2880]])
    assert read_arrivals(tmp_path / "none").shape == (0, 2)
