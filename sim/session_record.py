"""An emulator session's record folder: its files kept open, and when the caller's audio came.

Both emulators record each session in a folder of its own (``--record-dir``): ``events.jsonl``,
``input.pcm``, ``output.pcm`` and a few JSON files. :class:`SessionRecord` keeps each appended
file open for the session (opening and closing one a event cost more than everything else the
emulator did for a caller frame: at 25 Live calls, that was a third of its event loop's time,
and under CPU contention its loop fell behind by hundreds of ms) and flushes after every write,
so another process (a benchmark, a test reading a mounted folder) reads what was written.

:class:`Arrivals`: one (wall time, bytes so far) per append of caller audio, kept in memory
and written as ``arrivals.bin`` (little-endian float64 pairs) when the session ends. A
benchmark sets them against when the caller sent each frame: the whole way's delay per frame,
the emulator's own queueing included (the gateway's hop histograms end at the worker's send).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import IO, Any

import numpy as np

ARRIVALS_FILE = "arrivals.bin"


class SessionRecord:
    """Appends to the files of one session's record folder (None: nothing is recorded)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._files: dict[str, IO[Any]] = {}
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    def append(self, name: str, data: str | bytes) -> None:
        """Append to ``name`` (text or bytes, as the first write to it was) and flush."""
        if self.folder is None:
            return
        f = self._files.get(name)
        if f is None:
            f = self._files[name] = open(  # noqa: SIM115 - closed by close()
                self.folder / name, "ab" if isinstance(data, bytes) else "a"
            )
        f.write(data)
        f.flush()

    def close(self) -> None:
        """Close the files (a later append opens its file again)."""
        files, self._files = self._files, {}
        for f in files.values():
            f.close()


class Arrivals:
    """The arrivals of one session's caller audio."""

    def __init__(self) -> None:
        self._times: list[float] = []
        self._bytes: list[int] = []

    def add(self, total_bytes: int, at: float | None = None) -> None:
        """``total_bytes`` of caller audio had come when this append was handled."""
        self._times.append(time.time() if at is None else at)
        self._bytes.append(total_bytes)

    def write(self, folder: Path | None) -> None:
        if folder is None or not self._times:
            return
        pairs = np.column_stack([np.asarray(self._times), np.asarray(self._bytes, dtype=float)])
        pairs.astype("<f8").tofile(folder / ARRIVALS_FILE)


def read_arrivals(folder: Path) -> np.ndarray:
    """A session's arrivals as an (n, 2) array of (wall time, bytes so far); empty if none."""
    path = folder / ARRIVALS_FILE
    if not path.exists():
        return np.zeros((0, 2))
    return np.fromfile(path, dtype="<f8").reshape(-1, 2)
