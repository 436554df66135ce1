"""A call's replies at the edge: its part in the edge's one reader of every call's ``out.pcmu``
and ``cmd``, queueing what its bridge's sender plays to Twilio."""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque

from shared.playback import OutboundPlayback
from shared.runtime.observability import (
    reject,
)
from shared.runtime.stream_reader import CallReading, Read, Writes
from shared.streams import (
    CallKeys,
    ClearPlayback,
    HangUp,
    OutboundChunk,
    StreamEntryError,
    decode_command,
    decode_outbound,
)

log = logging.getLogger("gateway.edge")

BACKLOG_LIMIT = 256  # messages a call's sender may be behind before its reads pause


class Replies(CallReading):
    """One call's reply entries as the edge's reader hands them over: turned into Twilio
    messages (commands before audio within a read) and queued for the call's sender."""

    def __init__(
        self,
        keys: CallKeys,
        playback: OutboundPlayback,
        cursors: dict[bytes, bytes],
    ) -> None:
        # A reply stream is silent whenever the model is: only the caller's side judges silence.
        super().__init__(keys.call_sid, cursors, silent_limit_s=math.inf)
        self.keys = keys
        self.playback = playback
        self.outbox: deque[tuple[list[str], int | None] | HangUp] = deque()
        self.backlog = 0  # messages queued and not yet sent
        self.ready = asyncio.Event()

    def queue(self, messages: list[str], stamp_us: int | None) -> None:
        if messages:
            self.outbox.append((messages, stamp_us))
            self.backlog += len(messages)

    def wants_entries(self) -> bool:
        return self.backlog < BACKLOG_LIMIT

    def end(self, outcome: str) -> None:
        super().end(outcome)
        self.ready.set()  # the sender finds out

    def fail(self, exc: BaseException) -> None:
        super().fail(exc)
        self.ready.set()

    def take(self, read: Read, writes: Writes) -> None:
        by_stream = dict(read)
        cmd, out = self.keys.cmd, self.keys.out_pcmu
        for entry_id, fields in by_stream.get(cmd, ()):
            self.cursors[cmd] = entry_id
            self._command(fields)
        for entry_id, fields in by_stream.get(out, ()):
            self.cursors[out] = entry_id
            try:
                chunk = decode_outbound(fields)
            except StreamEntryError as exc:
                reject(f"edge_{exc.reason}")
                continue
            if isinstance(chunk, OutboundChunk):
                messages = self.playback.chunk(chunk)
                self.queue(messages, chunk.stamp_us if messages else None)
        if self.outbox:
            self.ready.set()

    def _command(self, fields: dict[bytes, bytes]) -> None:
        try:
            command = decode_command(fields)
        except StreamEntryError as exc:
            reject(f"edge_{exc.reason}")
            return
        if isinstance(command, ClearPlayback):
            # Queued after what the sender has yet to send, as the old per-call loop sent each
            # read's audio before the next read: Twilio's clear drops that audio too.
            self.queue(self.playback.clear(command.response_id), None)
            log.info("cleared playback (barge-in)", extra={"response_id": command.response_id})
        elif isinstance(command, HangUp):
            self.outbox.append(command)
