"""The recorder's asyncio shell: one stereo WAV per call, written while the call runs.

Calls come to it like to any stage, through a consumer group of its own on the lifecycle stream
(:mod:`shared.claims`). Per call it reads ``in.pcmu``, ``out.pcmu`` and ``cmd`` through consumer
groups of its own too, so the other stages pay nothing for it; the pure
:class:`~shared.recording.CallRecording` places each entry in time. Each batch is written to the
call's two partial channel files (positional writes), then the model's state is saved beside
them (atomically), and only then are the entries acknowledged: a recorder killed at any point
re-reads what it had not saved, and rewriting an entry puts the same samples in the same place.
At the call's end the channels become ``RECORDINGS_DIR/<CallSid>.wav`` (8 kHz, 16-bit, stereo:
the caller left, what the caller heard right). ``RECORDINGS_RETENTION_DAYS`` removes old files.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import redis.asyncio as aioredis

from shared.backoff import Backoff
from shared.claims import Claim, OwnedCalls, stage_claims
from shared.observability import ACTIVE_CALLS, CALLS, call_context, reject, run_service
from shared.recording import RATE, CallRecording, Write, interleave
from shared.redis_io import RETRYABLE, connect, ensure_group, prepare
from shared.settings import Settings
from shared.streams import (
    META_ENDED,
    META_STARTED_US,
    RECORDER_GROUP,
    CallKeys,
    ClearPlayback,
    InboundFrame,
    OutboundChunk,
    StreamEnd,
    StreamEntryError,
    decode_command,
    decode_inbound,
    decode_outbound,
)

log = logging.getLogger("gateway.recorder")

READ_COUNT = 500
BLOCK_MS = 1000
# After the caller's side ended, how long the reply may still come in (the worker's end entry
# follows the edge's within a few hundred milliseconds; a dead worker writes none).
REPLY_GRACE_S = 3.0
CALL_SILENT_LIMIT_S = 30.0
RETENTION_CHECK_S = 3600.0


class Recorder:
    def __init__(self, settings: Settings, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.folder = Path(settings.recordings_dir)
        self.partial = self.folder / ".partial"
        self.partial.mkdir(parents=True, exist_ok=True)
        self.consumer = settings.consumer_name
        claims = stage_claims(
            redis,
            RECORDER_GROUP,
            settings.consumer_name,
            settings.owner_idle_ms,
            settings.lifecycle_partitions,
        )
        self.owned = OwnedCalls(claims, self.run_call)

    # --- one call --------------------------------------------------------------------------
    async def run_call(self, claim: Claim) -> None:
        call = claim.call
        keys = CallKeys.for_call(call.call_sid)
        with call_context(call.call_sid, call.stream_sid):
            state_path = self.partial / f"{call.call_sid}.json"
            if (self.folder / f"{call.call_sid}.wav").exists():
                return  # recorded already (a lifecycle entry read again)
            meta = await self.redis.hgetall(keys.meta)
            if not meta or META_STARTED_US not in meta:
                log.info("call's keys are gone (expired); nothing to record")
                return
            if state_path.exists():
                recording = CallRecording.from_json(state_path.read_text())
            elif META_ENDED in meta:
                # Over before recording began for it (recording was off, or the call is older
                # than this recorder): a fragment would pass for a whole call.
                log.info("call ended before the recorder took it; not recorded")
                return
            else:
                recording = CallRecording(int(meta[META_STARTED_US]) // 1000)
            ACTIVE_CALLS.inc()
            try:
                await self._record(keys, recording, state_path)
                CALLS.labels("recorded").inc()
            finally:
                ACTIVE_CALLS.dec()

    async def _record(self, keys: CallKeys, recording: CallRecording, state_path: Path) -> None:
        streams = {keys.in_pcmu: "in", keys.out_pcmu: "out", keys.cmd: "cmd"}
        for stream in streams:
            await ensure_group(self.redis, stream, RECORDER_GROUP)
            await self.redis.expire(stream, self.settings.call_max_seconds, nx=True)
            await self._take_pending(stream)
        files = (
            self.partial / f"{keys.call_sid}.left.raw",
            self.partial / f"{keys.call_sid}.right.raw",
        )
        fds = [os.open(f, os.O_RDWR | os.O_CREAT, 0o600) for f in files]
        try:
            # What this consumer had read but not saved, then what nobody has read yet.
            start = b"0"
            backoff = Backoff()
            last_input = time.monotonic()
            caller_done_at: float | None = None
            while True:
                try:
                    audio, commands = await self._read(keys, start)
                except RETRYABLE as exc:
                    log.warning("redis unavailable (%s); retrying", exc)
                    await asyncio.sleep(backoff.next_delay())
                    continue
                backoff.reset()
                if start == b"0" and not audio.get(keys.in_pcmu) and not audio.get(keys.out_pcmu):
                    start = b">"  # the pending list is drained
                    if not commands:
                        continue
                got = self._apply(recording, streams, audio, commands, fds)
                if got:
                    last_input = time.monotonic()
                    state_path.with_suffix(".tmp").write_text(recording.to_json())
                    os.replace(state_path.with_suffix(".tmp"), state_path)
                    await self._ack(got)
                if recording.caller_done and caller_done_at is None:
                    caller_done_at = time.monotonic()
                over = recording.caller_done and (
                    recording.reply_done or time.monotonic() - caller_done_at > REPLY_GRACE_S
                )
                if over or time.monotonic() - last_input > CALL_SILENT_LIMIT_S:
                    break
        finally:
            for fd in fds:
                os.close(fd)
        self._finish(keys.call_sid, recording, files, state_path)

    async def _take_pending(self, stream: bytes) -> None:
        """Entries another instance read and never saved become ours (a takeover)."""
        start: Any = b"0-0"
        while True:
            reply = await self.redis.xautoclaim(
                stream, RECORDER_GROUP, self.consumer, 0, start, count=1000
            )
            start = reply[0]
            if start in (b"0-0", "0-0") or not reply[1]:
                return

    async def _read(self, keys: CallKeys, start: bytes) -> tuple[dict[bytes, list[Any]], list[Any]]:
        """A batch of audio (blocking when reading new entries), then every command: a clear
        written before the newest chunk read is among them."""
        block = BLOCK_MS if start == b">" else None
        reply: Any = await self.redis.xreadgroup(
            RECORDER_GROUP,  # type: ignore[arg-type]
            self.consumer,
            {keys.in_pcmu: start, keys.out_pcmu: start},
            count=READ_COUNT,
            block=block,
        )
        audio = {stream: entries for stream, entries in reply or []}
        commands: Any = await self.redis.xreadgroup(
            RECORDER_GROUP,  # type: ignore[arg-type]
            self.consumer,
            {keys.cmd: start},
            count=10_000,
        )
        return audio, (commands[0][1] if commands else [])

    def _apply(
        self,
        recording: CallRecording,
        streams: dict[bytes, str],
        audio: dict[bytes, list[Any]],
        commands: list[Any],
        fds: list[int],
    ) -> dict[bytes, list[bytes]]:
        """Hand a batch to the core in time order; write its samples; the entries to ack."""
        got: dict[bytes, list[bytes]] = {}
        ordered: list[tuple[bytes, bytes, Any]] = []
        for stream, entries in audio.items():
            for entry_id, fields in entries:
                ordered.append((entry_id, stream, fields))
        ordered += [(entry_id, b"cmd", fields) for entry_id, fields in commands]
        # The caller's IDs are the edge's own numbering, not times: order only within a
        # stream matters for them; the reply and its clears are ordered by time.
        by_name = {name: stream for stream, name in streams.items()}
        reply_side = sorted(
            (e for e in ordered if streams.get(e[1], "cmd") != "in"),
            key=lambda e: _id_key(e[0]),
        )
        caller_side = [e for e in ordered if streams.get(e[1]) == "in"]
        writes: list[Write] = []
        for entry_id, stream, fields in caller_side + reply_side:
            name = streams.get(stream, "cmd")
            real_stream = by_name[name]
            got.setdefault(real_stream, []).append(entry_id)
            if not fields or recording.applied(name, entry_id):
                continue  # trimmed away, or already in the file
            try:
                writes += self._entry(recording, name, entry_id, fields)
            except StreamEntryError as exc:
                reject(f"recorder_{exc.reason}")
                recording.other(name, entry_id)
        for write in writes:
            os.pwrite(fds[write.channel], write.samples.astype("<i2").tobytes(), write.offset * 2)
        return got

    @staticmethod
    def _entry(recording: CallRecording, name: str, entry_id: bytes, fields: Any) -> list[Write]:
        if name == "in":
            frame = decode_inbound(fields)
            if isinstance(frame, StreamEnd):
                recording.caller_ended(name, entry_id)
                return []
            assert isinstance(frame, InboundFrame)
            return recording.caller(name, entry_id, frame)
        if name == "out":
            chunk = decode_outbound(fields)
            if isinstance(chunk, StreamEnd):
                recording.reply_ended(name, entry_id)
                return []
            assert isinstance(chunk, OutboundChunk)
            return recording.reply(name, entry_id, chunk)
        command = decode_command(fields)
        if isinstance(command, ClearPlayback):
            return recording.clear(name, entry_id, command.response_id)
        recording.other(name, entry_id)
        return []

    async def _ack(self, got: dict[bytes, list[bytes]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for stream, ids in got.items():
            pipe.xack(stream, RECORDER_GROUP, *ids)
        await pipe.execute()

    def _finish(
        self, call_sid: str, recording: CallRecording, files: tuple[Path, Path], state: Path
    ) -> None:
        left, right = (
            np.fromfile(f, dtype="<i2")[:n] for f, n in zip(files, recording.length, strict=True)
        )
        target = self.folder / f"{call_sid}.wav"
        tmp = target.with_suffix(".wav.tmp")
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(2)
            w.setsampwidth(2)
            w.setframerate(RATE)
            w.writeframes(interleave(left, right))
        os.replace(tmp, target)
        for path in (*files, state):
            path.unlink(missing_ok=True)
        seconds = max(left.size, right.size) / RATE
        log.info("recording written", extra={"file": target.name, "seconds": round(seconds, 2)})

    # --- retention ---------------------------------------------------------------------------
    def remove_old(self, now: float | None = None) -> int:
        """Delete recordings older than ``RECORDINGS_RETENTION_DAYS``; how many went."""
        cutoff = (now or time.time()) - self.settings.recordings_retention_days * 86400
        removed = 0
        for path in [*self.folder.glob("*.wav"), *self.partial.glob("*")]:
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        if removed:
            log.info("removed old recordings", extra={"count": removed})
        return removed

    async def retention_loop(self) -> None:
        while True:
            self.remove_old()
            await asyncio.sleep(RETENTION_CHECK_S)


def _id_key(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms or 0), int(seq or 0)


async def run_recorder(
    settings: Settings, stop: asyncio.Event, redis: aioredis.Redis | None = None
) -> None:
    own_redis = redis is None
    redis = redis or connect(settings)
    await prepare(redis)
    recorder = Recorder(settings, redis)
    log.info("recorder started", extra={"folder": str(recorder.folder)})
    tasks = [
        asyncio.create_task(recorder.owned.run()),
        asyncio.create_task(recorder.retention_loop()),
    ]
    await stop.wait()
    await recorder.owned.stop()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if own_redis:
        await redis.aclose()


def main(settings: Settings) -> None:
    run_service("recorder", settings, lambda stop: run_recorder(settings, stop))
