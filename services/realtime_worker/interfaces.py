"""What a call of the realtime worker may use, and what it offers: small interfaces, no service.

A leaf module (it imports no other module of this package), so that the per-call objects
depend on these and never on :class:`~services.realtime_worker.service.RealtimeWorker`, and the
feed depends on :class:`FedCall` rather than on a call class: no import cycle.

* :class:`CallHost`: what the worker lends each call (Redis, the batched writer, the shared
  reader, settings, the agent's tools, the key, metrics).
* :class:`ModelSession`: the call's model session(s), as the dialect-neutral per-call pipeline
  (:class:`~services.realtime_worker.pipeline.CallPipeline`) drives it. Two implementations:
  :class:`~services.realtime_worker.call.RealtimeCall` (OpenAI Realtime, combos A and B) and
  :class:`~services.realtime_worker.live_call.LiveCall` (GPT-Live, combo C). The edge,
  transcoder, tool runner, recorder and console see the same streams from both; only the
  ``dialect`` of the call's ``session`` events tells them apart.
* :class:`FedCall`: what :func:`~services.realtime_worker.feed.feed` hands entries to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import redis.asyncio as aioredis

from shared.agent import Tool
from shared.call_actions import Action
from shared.drain import WorkerDrain
from shared.realtime_handshake import DialectMemory
from shared.runtime.redis_io import BatchedStreamWriter
from shared.runtime.settings import Settings
from shared.runtime.stream_reader import SharedReader
from shared.streams import CallStarted, Control

Entries = Sequence[tuple[bytes, dict[bytes, bytes]]]
Role = Literal["user", "assistant"]
Dialect = Literal["realtime", "live"]


class Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Histogram(Protocol):
    def observe(self, amount: float) -> None: ...


class CallHost(Protocol):
    """What the worker lends each of its calls."""

    @property
    def settings(self) -> Settings: ...

    @property
    def redis(self) -> aioredis.Redis: ...

    @property
    def writer(self) -> BatchedStreamWriter: ...

    @property
    def reader(self) -> SharedReader: ...

    @property
    def api_key(self) -> str: ...

    @property
    def tools(self) -> Mapping[str, Tool]: ...

    @property
    def frames_in(self) -> Counter: ...

    @property
    def frames_out(self) -> Counter: ...

    @property
    def hop_in(self) -> Histogram: ...

    # What the server's answers taught the process (REALTIME_SCHEMA=auto's last accepted combo;
    # the retired beta): a call's next session, and the worker's next call, start there.
    # Unused by GPT-Live.
    dialects: DialectMemory
    # The worker's drain (SIGTERM): whether and when each call moves to a peer, and whether a
    # peer is alive to take it (refreshed by the draining worker).
    drain: WorkerDrain
    peers: bool


class ModelSession(Protocol):
    """The call's conversation with the model, session after session, as the pipeline drives
    it. Every method but :meth:`converse` returns the pure core's actions
    (:mod:`shared.call_actions`), which the pipeline performs: text to the model, reply audio,
    commands and events to write, a tool to run, the call to end."""

    dialect: Dialect

    def restore(self, transcript: Sequence[tuple[Role, str]], greeted: bool) -> None:
        """Before the first session: the conversation a previous owner had (a worker's death),
        so the first session opens with it as context, and no second greeting."""

    async def converse(self) -> str:
        """Open a session with the conversation's context (greeting the caller on the call's
        first), read the model's events, open the next one when a session ends, until the call
        ends: its outcome."""

    def caller_audio(self, pcm16: bytes, now_us: int) -> list[Action]:
        """One caller frame (PCM16 at the session's rate)."""

    def control(self, control: Control, now_us: int) -> list[Action]:
        """A returned mark, a DTMF key, a tool's output for the model."""

    def tick(self, now_us: int) -> list[Action]:
        """What is due after a batch of the caller's entries (tool outputs, a hang-up)."""

    async def after_entries(self) -> None:
        """Between two batches of caller frames (a Realtime rollover happens here)."""

    async def send(self, text: str) -> None:
        """One client event to the model's current session."""

    async def close(self) -> None:
        """The call is over: end the current session."""


@dataclass
class Cursors:
    """Where the call is in its two input streams; saved in the call's meta now and then, so a
    worker that takes the call over goes on from there."""

    inbound: bytes
    control: bytes
    saved_at: float = 0.0
    saved: tuple[bytes, bytes] = (b"", b"")  # what was last saved
    in_flight: asyncio.Future[None] | None = None  # a save sent with the reader's batch


class FedCall(Protocol):
    """What the feed needs of a call."""

    call: CallStarted
    cursors: Cursors

    def streams(self) -> dict[bytes, bytes]: ...

    async def on_entries(self, stream: bytes, entries: Entries) -> str | None: ...

    def cursors_to_save(self, now: float) -> tuple[bytes, dict[bytes, bytes]] | None: ...
