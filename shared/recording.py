"""One call's stereo recording, placed in time from what the pipeline's streams carry.

Pure: the recorder hands in a call's entries; this module says which samples go where. No
files, no clock.

* Left, the caller (``in.pcmu``, as Twilio sent it): each 20 ms frame at its Twilio
  ``timestamp`` (milliseconds since the stream started), so frames lost upstream leave silence in
  their place and nothing shifts. Placed as the call runs (:meth:`CallRecording.caller`).
* Right, what the caller heard, from the reply as the edge sent it (``out.pcmu``), the marks
  Twilio returned (``ctl``) and the worker's ``clear``s (``cmd``), assembled at the call's end by
  :func:`heard_audio`. The edge puts a mark after every 100 ms of reply audio, and Twilio returns
  a mark once everything before it has played: the marks are Twilio's own word on when each piece
  was heard, whatever the delay between the model and Twilio. After a ``clear`` Twilio returns
  the marks of everything it dropped at once, so the reply was heard until those marks came back,
  and nothing of it after. A piece whose mark never came (the call ended first) is placed
  after the one before it, as Twilio plays in order.

  Marks come back late, never early, and by a varying amount (Twilio returns a mark at its
  next 20 ms frame, and the network and the edge add their own delay): one mark alone does not
  say when its piece played. The rule (:func:`heard_pieces`, :func:`contiguous_bases`): a
  reply's audio is contiguous unless its marks prove a stall, that is a mark, and every one
  after it, later than contiguous playback allows by more than ``JITTER_MS``; then what follows
  plays from where those marks say (never before the chunk holding it was written). A run is
  placed by its least late mark, and a reply's audio never overlaps itself nor what played
  before it.

Both channels share one origin, the call's start as the edge registered it (``started_us``);
marks and clears are timed by their entry IDs (Redis's clock), so the hosts' clocks are assumed in
step, as the hop-latency metrics assume.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from shared.audio import mulaw_decode
from shared.playback import parse_mark_name
from shared.streams import InboundFrame

RATE = 8000
_PER_MS = RATE // 1000
# How much later than its fellows a mark may come back and still be taken as jitter, not a
# stall: Twilio returns a mark at its next 20 ms frame, and the way back (Twilio, the edge,
# Redis) adds its own varying delay (0-30 ms measured against a jittery peer; room to spare).
JITTER_MS = 60


@dataclass(frozen=True, slots=True)
class Write:
    """Samples for one channel (0 left, 1 right) from ``offset`` (a sample index)."""

    channel: int
    offset: int
    samples: np.ndarray  # int16


def entry_ms(entry_id: bytes | str) -> int:
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(raw.partition("-")[0] or 0)


def id_key(entry_id: bytes | str) -> tuple[int, int]:
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = raw.partition("-")
    return int(ms or 0), int(seq or 0)


@dataclass
class CallRecording:
    """The caller's channel as it is written, and the cursors of every stream read."""

    origin_ms: int  # the call's start (started_us // 1000): sample 0 of both channels
    cursors: dict[str, str] = field(default_factory=dict)  # stream name -> last entry applied
    caller_done: bool = False
    reply_done: bool = False
    length: int = 0  # samples written to the caller's channel

    def applied(self, stream: str, entry_id: bytes) -> bool:
        """Whether this entry is already in the recording (re-read after a restart)."""
        done = self.cursors.get(stream)
        return done is not None and id_key(entry_id) <= id_key(done)

    def advance(self, stream: str, entry_id: bytes) -> None:
        self.cursors[stream] = entry_id.decode()

    def caller(self, stream: str, entry_id: bytes, frame: InboundFrame) -> list[Write]:
        self.advance(stream, entry_id)
        if not frame.audio or frame.timestamp_ms < 0:
            return []
        samples = mulaw_decode(frame.audio)
        offset = frame.timestamp_ms * _PER_MS
        self.length = max(self.length, offset + samples.size)
        return [Write(0, offset, samples)]

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> CallRecording:
        return cls(**json.loads(text))


@dataclass(frozen=True, slots=True)
class ReplyChunk:
    at_ms: int  # its entry's time
    response_id: str
    item_id: str
    offset_us: int  # where it starts within its item's audio
    audio: bytes  # mu-law


@dataclass(frozen=True, slots=True)
class HeardPiece:
    """``item``'s audio from byte ``lo`` played from ``start_ms`` to ``end_ms`` (call time)."""

    start_ms: float
    end_ms: float
    item: str
    lo: int


def heard_audio(
    origin_ms: int,
    chunks: Sequence[ReplyChunk],
    marks: Sequence[tuple[int, str]],
    clears: Sequence[tuple[int, str]],
    end_ms: int | None = None,
) -> np.ndarray:
    """The right channel: what the caller heard, int16 at 8 kHz from the call's start.

    ``marks``: (entry time ms, mark name) as Twilio returned them; ``clears``: (entry time ms,
    response_id); ``end_ms``: the call's end (nothing is heard after it).
    """
    items = _item_audio(chunks)
    pieces = heard_pieces(origin_ms, chunks, marks, clears)
    last = max((p.end_ms for p in pieces), default=0.0)
    if end_ms is not None:
        last = min(last, float(end_ms - origin_ms))
    out = np.zeros(max(0, int(last * _PER_MS)), dtype=np.int16)
    for piece in pieces:
        first = int(round(piece.start_ms * _PER_MS))
        count = int(round((min(piece.end_ms, last) - piece.start_ms) * _PER_MS))
        if count <= 0:
            continue
        samples = mulaw_decode(bytes(items[piece.item][piece.lo : piece.lo + count]))
        out[first : first + samples.size] = samples[: max(0, out.size - first)]
    return out


def _item_audio(chunks: Sequence[ReplyChunk]) -> dict[str, bytearray]:
    items: dict[str, bytearray] = {}
    for chunk in sorted(chunks, key=lambda c: c.at_ms):
        audio = items.setdefault(chunk.item_id, bytearray())
        at_byte = chunk.offset_us * _PER_MS // 1000
        if len(audio) < at_byte:
            audio.extend(b"\xff" * (at_byte - len(audio)))
        audio[at_byte : at_byte + len(chunk.audio)] = chunk.audio
    return items


def heard_pieces(
    origin_ms: int,
    chunks: Sequence[ReplyChunk],
    marks: Sequence[tuple[int, str]],
    clears: Sequence[tuple[int, str]],
) -> list[HeardPiece]:
    """Where each piece of the reply played (ms from the call's start), in playing order: no
    two overlap, and a reply's pieces follow each other without a gap unless a stall is proven
    (see the module's docstring)."""
    items = _item_audio(chunks)
    response_of: dict[str, str] = {}
    first_at: dict[str, int] = {}
    arrivals: dict[str, list[tuple[int, int]]] = {}  # item -> (from byte, written at ms)
    for chunk in sorted(chunks, key=lambda c: c.at_ms):
        response_of[chunk.item_id] = chunk.response_id
        first_at.setdefault(chunk.item_id, chunk.at_ms - origin_ms)
        at_byte = chunk.offset_us * _PER_MS // 1000
        arrivals.setdefault(chunk.item_id, []).append((at_byte, chunk.at_ms - origin_ms))

    def written_at(item: str, byte: int) -> float:
        """When the chunk holding ``byte`` of ``item`` was written (it cannot play before)."""
        found = first_at[item]
        for start, at in arrivals[item]:
            if start <= byte:
                found = at
        return float(found)

    cut_at: dict[str, float] = {}
    for at, response in clears:
        cut_at.setdefault(response, float(at - origin_ms))
    # Each item's pieces as its marks name them: (mark time ms, from byte, to byte).
    marked: dict[str, list[tuple[float, int, int]]] = {}
    for at, name in sorted(marks, key=lambda m: m[0]):
        parsed = parse_mark_name(name)
        if parsed is None or parsed[0] not in items:
            continue
        item, end_of_piece = parsed
        done = marked.setdefault(item, [])
        lo = done[-1][2] if done else 0
        hi = min(end_of_piece * _PER_MS, len(items[item]))
        if hi > lo:
            done.append((float(at - origin_ms), lo, hi))
    pieces: list[HeardPiece] = []
    played_to: dict[str, int] = {}  # item -> bytes accounted for
    previous_end = 0.0
    for item in sorted(items, key=lambda it: first_at[it]):
        cut = cut_at.get(response_of[item])
        run = marked.get(item, [])
        # Back after the clear was sent: flushed by it (they all come back when it reaches
        # Twilio), or the piece playing then. Played on until the mark came back at most.
        flushed_from = next(
            (k for k, (at, _, _) in enumerate(run) if cut is not None and at >= cut - 5), len(run)
        )
        bases = contiguous_bases([(at, hi / _PER_MS) for at, _, hi in run[:flushed_from]])
        for k, (mark_at, lo, hi) in enumerate(run):
            duration = (hi - lo) / _PER_MS
            if k < flushed_from:
                start = max(bases[k] + lo / _PER_MS, previous_end, written_at(item, lo))
                end = start + duration if cut is None else min(start + duration, cut)
            else:
                start = max(previous_end, written_at(item, lo))
                end = min(mark_at, start + duration)
            played_to[item] = hi
            if end > start:
                pieces.append(HeardPiece(start, end, item, lo))
                previous_end = end
    # Audio whose mark never came back: it played after what came before, unless a clear took it.
    for item, audio in sorted(items.items(), key=lambda kv: first_at[kv[0]]):
        lo = played_to.get(item, 0)
        if lo < len(audio) and response_of[item] not in cut_at:
            start = max(previous_end, float(first_at[item]))
            previous_end = start + (len(audio) - lo) / _PER_MS
            pieces.append(HeardPiece(start, previous_end, item, lo))
    return pieces


def contiguous_bases(marks: Sequence[tuple[float, float]]) -> list[float]:
    """For an item's marks in order, ``(returned at ms, audio before it ms)``: when the item's
    audio began, as placed for each mark's piece (each piece at that plus its offset).

    A mark says the item began at most ``returned at - audio before it`` (marks are late, never
    early), and so does every later mark if playback went on without a break: the latest start
    consistent with a mark and all after it is the least of their figures, a figure that only
    grows along the item. A run of pieces keeps its figure until that has grown by more than
    ``JITTER_MS``: then every mark from there on came back that much later, which is a stall,
    not jitter (one late mark followed by a timely one is jitter, and changes nothing).
    """
    implied = [at - before for at, before in marks]
    latest = list(np.minimum.accumulate(implied[::-1])[::-1]) if implied else []
    bases: list[float] = []
    base: float | None = None
    for figure in latest:
        if base is None or figure > base + JITTER_MS:
            base = float(figure)
        bases.append(base)
    return bases


def interleave(left: np.ndarray, right: np.ndarray) -> bytes:
    """Two int16 channels as stereo frames (the shorter padded with silence)."""
    n = max(left.size, right.size)
    stereo = np.zeros((n, 2), dtype="<i2")
    stereo[: left.size, 0] = left
    stereo[: right.size, 1] = right
    return stereo.tobytes()
