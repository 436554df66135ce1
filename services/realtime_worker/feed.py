"""How the worker reads a call's input streams: the one place entries are read from Redis.

Every call of the instance is read by its one
:class:`~shared.runtime.stream_reader.SharedReader` (one ``XREAD`` over every call's ``ctl`` and
``in.pcm``); what it reads for a call waits in that call's inbox, and the call's own task hands
it to the call's ``on_entries`` (:class:`~services.realtime_worker.interfaces.FedCall`). So a
call whose socket is slow (or whose handling fails) holds up only itself: while its inbox is
full it is left out of the reads, and the others go on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

from services.realtime_worker.interfaces import FedCall
from shared.runtime.stream_reader import CallReading, Read, SharedReader, Writes

log = logging.getLogger("gateway.worker")

# A live Twilio stream sends 50 frames a second even in silence; this long without any input
# means the edge died without ending the call.
CALL_SILENT_LIMIT_S = 30.0
# Reads held for a call that has not acted on them yet; past this it is left out of the reads
# (its entries wait in Redis) until it catches up.
MAX_PENDING_READS = 4


class _CallInbox(CallReading):
    """What the shared reader read for one call and the call has not acted on yet."""

    def __init__(self, call: FedCall) -> None:
        super().__init__(call.call.call_sid, call.streams(), CALL_SILENT_LIMIT_S)
        self.call = call
        self.saving: asyncio.Future[None] | None = None
        self.reads: deque[Read] = deque()
        self.arrived = asyncio.Event()

    def wants_entries(self) -> bool:
        return len(self.reads) < MAX_PENDING_READS

    def take(self, read: Read, writes: Writes) -> None:
        for stream, entries in read:
            self.cursors[stream] = entries[-1][0]  # the reader's position, not the call's
        self.reads.append(read)
        self.arrived.set()
        # Where the call is (what it acted on, behind the reader) rides with this batch's round
        # trip now and then, rather than take one of its own.
        save = self.call.cursors_to_save(time.monotonic())
        if save is not None:
            writes.hset(*save)
            self.saving = asyncio.get_running_loop().create_future()
            self.call.cursors.in_flight = self.saving

    def written(self, results: list[Any]) -> None:
        for result in results:
            if isinstance(result, Exception):
                log.warning("could not save cursors: %s", result, extra={"call_sid": self.call_id})
                self.call.cursors.saved = (b"", b"")  # the next batch saves again
        self._saved()

    def unwritten(self) -> None:
        if self.saving is not None:
            self.call.cursors.saved = (b"", b"")  # the next batch saves again
        self._saved()

    def _saved(self) -> None:
        if self.saving is not None and not self.saving.done():
            self.saving.set_result(None)
        self.saving = None

    def end(self, outcome: str) -> None:
        super().end(outcome)
        self.arrived.set()

    def fail(self, exc: BaseException) -> None:
        super().fail(exc)
        self.arrived.set()


async def feed(reader: SharedReader, call: FedCall) -> str:
    """Feed the call until its entries end it (the reason) or its input falls silent.

    The call's cursors move only as it acts on entries; a feed started again for the same call
    (a new session after the socket dropped) reads on from them, not from where the reader was.
    """
    inbox = _CallInbox(call)
    reader.add(inbox)
    try:
        while True:
            while not inbox.reads:
                if inbox.outcome.done():
                    return inbox.outcome.result()  # "abandoned"; raises what ended the read
                inbox.arrived.clear()
                await inbox.arrived.wait()
            was_full = not inbox.wants_entries()
            read = inbox.reads.popleft()
            if was_full:
                reader.wake(inbox)
            for stream, entries in read:
                ended = await call.on_entries(stream, entries)
                if ended:
                    return ended
    finally:
        reader.remove(inbox)
