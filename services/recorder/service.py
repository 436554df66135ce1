"""The recorder's asyncio shell: one stereo WAV per call, written while the call runs.

Calls come to it like to any stage, through a consumer group of its own on the lifecycle stream
(:mod:`shared.runtime.claims`). Per call it reads ``in.pcmu``, ``out.pcmu``, ``ctl`` (Twilio's
returned
marks) and ``cmd`` (clears) through consumer groups of its own too, so the other stages pay
nothing for it. Each batch: the caller's frames go into the call's left-channel file (positional
writes, by Twilio's timestamps), the reply's entries are appended to the call's spool, the state
(:class:`~shared.recording.CallRecording`: cursors) is saved atomically, and only then are the
entries acknowledged. A recorder killed at any point re-reads what it had not saved; a frame
written twice lands on the same samples, a spool line written twice counts once. At the call's
end :func:`~shared.recording.heard_audio` places the reply as Twilio played it, and the two
channels become ``RECORDINGS_DIR/<CallSid>.wav`` (8 kHz, 16-bit, stereo: the caller left, what
the caller heard right). ``RECORDINGS_RETENTION_DAYS`` removes old files.

A recording is the caller's voice: every file is created ``0600`` and the folder (and its
``.partial``) made ``0700``, whatever the umask; the console, which serves them, runs as the same
user. A folder the recorder cannot make private (not its own) is used as it is, with a warning.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import time
import wave
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import redis.asyncio as aioredis

from shared.backoff import Backoff
from shared.recording import RATE, CallRecording, ReplyChunk, entry_ms, heard_audio, interleave
from shared.runtime.claims import Claim, OwnedCalls, stage_claims
from shared.runtime.lifecycle import run_service, serve_stage
from shared.runtime.observability import ACTIVE_CALLS, CALLS, call_context, reject
from shared.runtime.redis_io import RETRYABLE, ensure_group, read_group
from shared.runtime.settings import Settings
from shared.streams import (
    END,
    META_ENDED,
    META_STARTED_US,
    RECORDER_GROUP,
    CallKeys,
    ClearPlayback,
    MarkPlayed,
    OutboundChunk,
    StreamEnd,
    StreamEntryError,
    decode_command,
    decode_control,
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
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
RETENTION_CHECK_S = 3600.0


def _open_private(path: Path) -> BinaryIO:
    """``path`` truncated for writing, readable by its owner only (even if it was there)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    os.fchmod(fd, PRIVATE_FILE)
    return os.fdopen(fd, "wb")


def _write_private(path: Path, data: bytes) -> None:
    with _open_private(path) as file:
        file.write(data)


class Recorder:
    def __init__(self, settings: Settings, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.folder = Path(settings.recordings_dir)
        self.partial = self.folder / ".partial"
        for folder in (self.folder, self.partial):
            folder.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
            try:
                folder.chmod(PRIVATE_DIR)  # made earlier, or by someone else, more open
            except PermissionError:
                log.warning("cannot make %s private (mode 0700): not ours", folder)
        self.consumer = settings.consumer_name
        claims = stage_claims(
            redis,
            RECORDER_GROUP,
            settings.consumer_name,
            settings.owner_idle_ms,
            settings.lifecycle_partitions,
        )
        self.owned = OwnedCalls(claims, self.run_call)

    def loops(self) -> list[Coroutine[Any, Any, None]]:
        return [self.owned.run(), self.retention_loop()]

    def calls_held(self) -> int:
        return len(self.owned.tasks)

    def unready(self) -> str | None:
        return None

    async def stop(self) -> None:
        await self.owned.stop()

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
        streams = {keys.in_pcmu: "in", keys.out_pcmu: "out", keys.ctl: "ctl", keys.cmd: "cmd"}
        for stream in streams:
            await ensure_group(self.redis, stream, RECORDER_GROUP)
            await self.redis.expire(stream, self.settings.call_max_seconds, nx=True)
            await self._take_pending(stream)
        left_path = self.partial / f"{keys.call_sid}.left.raw"
        spool_path = self.partial / f"{keys.call_sid}.reply.jsonl"
        left = os.open(left_path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
        spool = os.open(spool_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)
        try:
            # What this consumer had read but not saved, then what nobody has read yet.
            start = b"0"
            backoff = Backoff()
            last_input = time.monotonic()
            caller_done_at: float | None = None
            while True:
                try:
                    batch = await self._read(keys, start)
                except RETRYABLE as exc:
                    log.warning("redis unavailable (%s); retrying", exc)
                    await asyncio.sleep(backoff.next_delay())
                    continue
                backoff.reset()
                if start == b"0" and not any(batch.values()):
                    start = b">"  # the pending lists are drained
                    continue
                if any(batch.values()):
                    last_input = time.monotonic()
                    self._apply(recording, streams, batch, left, spool)
                    _write_private(state_path.with_suffix(".tmp"), recording.to_json().encode())
                    os.replace(state_path.with_suffix(".tmp"), state_path)
                    await self._ack(batch)
                if recording.caller_done and caller_done_at is None:
                    caller_done_at = time.monotonic()
                over = caller_done_at is not None and (
                    recording.reply_done or time.monotonic() - caller_done_at > REPLY_GRACE_S
                )
                if over or time.monotonic() - last_input > CALL_SILENT_LIMIT_S:
                    break
        finally:
            os.close(left)
            os.close(spool)
        self._finish(keys.call_sid, recording, left_path, spool_path, state_path)

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

    async def _read(self, keys: CallKeys, start: bytes) -> dict[bytes, list[Any]]:
        """A batch of audio (blocking when reading new entries), then the marks and commands."""
        block = BLOCK_MS if start == b">" else None
        batch: dict[bytes, list[Any]] = {}
        for streams, count, wait in (
            ((keys.in_pcmu, keys.out_pcmu), READ_COUNT, block),
            ((keys.ctl, keys.cmd), 10 * READ_COUNT, None),
        ):
            reply = await read_group(
                self.redis,
                RECORDER_GROUP,
                self.consumer,
                {stream: start for stream in streams},
                count=count,
                block=wait,
            )
            for stream, entries in reply or []:
                batch[stream] = entries
        return batch

    def _apply(
        self,
        recording: CallRecording,
        streams: dict[bytes, str],
        batch: dict[bytes, list[Any]],
        left: int,
        spool: int,
    ) -> None:
        """The caller's frames into the left channel; the reply's entries into the spool."""
        lines: list[bytes] = []
        for stream, entries in batch.items():
            name = streams[stream]
            for entry_id, fields in entries:
                if not fields or recording.applied(name, entry_id):
                    continue  # trimmed away, or already saved
                try:
                    if name == "in":
                        frame = decode_inbound(fields)
                        if isinstance(frame, StreamEnd):
                            recording.caller_done = True
                            recording.advance(name, entry_id)
                            continue
                        for write in recording.caller(name, entry_id, frame):
                            data = write.samples.astype("<i2").tobytes()
                            os.pwrite(left, data, write.offset * 2)
                        continue
                    line = _spooled(name, entry_id, fields)
                except StreamEntryError as exc:
                    reject(f"recorder_{exc.reason}")
                    recording.advance(name, entry_id)
                    continue
                if line is not None:
                    lines.append(line)
                if name == "out" and fields.get(b"k") == END:
                    recording.reply_done = True
                recording.advance(name, entry_id)
        if lines:
            os.write(spool, b"".join(lines))

    async def _ack(self, batch: dict[bytes, list[Any]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for stream, entries in batch.items():
            if entries:
                pipe.xack(stream, RECORDER_GROUP, *[entry_id for entry_id, _ in entries])
        await pipe.execute()

    def _finish(
        self,
        call_sid: str,
        recording: CallRecording,
        left_path: Path,
        spool_path: Path,
        state: Path,
    ) -> None:
        left = np.fromfile(left_path, dtype="<i2")[: recording.length]
        chunks, marks, clears = _read_spool(spool_path)
        end_ms = recording.origin_ms + left.size // (RATE // 1000)
        right = heard_audio(recording.origin_ms, chunks, marks, clears, end_ms)
        target = self.folder / f"{call_sid}.wav"
        tmp = target.with_suffix(".wav.tmp")
        with _open_private(tmp) as file, wave.open(file, "wb") as w:
            w.setnchannels(2)
            w.setsampwidth(2)
            w.setframerate(RATE)
            w.writeframes(interleave(left, right))
        os.replace(tmp, target)
        for path in (left_path, spool_path, state):
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


def _spooled(name: str, entry_id: bytes, fields: Any) -> bytes | None:
    """One reply-side entry as a spool line (JSON; the audio as base64), or None if it is
    nothing the recording needs."""
    record: dict[str, Any] = {"s": name, "id": entry_id.decode()}
    if name == "out":
        chunk = decode_outbound(fields)
        if isinstance(chunk, StreamEnd):
            return None
        assert isinstance(chunk, OutboundChunk)
        record.update(
            r=chunk.response_id,
            i=chunk.item_id,
            o=chunk.offset_us,
            a=base64.b64encode(chunk.audio).decode(),
        )
    elif name == "ctl":
        control = decode_control(fields)
        if not isinstance(control, MarkPlayed):
            return None
        record["n"] = control.name
    else:
        command = decode_command(fields)
        if not isinstance(command, ClearPlayback):
            return None
        record["r"] = command.response_id
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def _read_spool(
    path: Path,
) -> tuple[list[ReplyChunk], list[tuple[int, str]], list[tuple[int, str]]]:
    """The spooled reply, marks and clears; a line cut short by a crash, or written twice
    (saved, then re-read before its acknowledgement), counts once or not at all."""
    chunks: list[ReplyChunk] = []
    marks: list[tuple[int, str]] = []
    clears: list[tuple[int, str]] = []
    seen: set[tuple[str, str]] = set()
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return chunks, marks, clears
    for line in text.splitlines():
        try:
            record = json.loads(line)
            key = (record["s"], record["id"])
            if key in seen:
                continue
            seen.add(key)
            at = entry_ms(record["id"])
            if record["s"] == "out":
                audio = base64.b64decode(record["a"])
                chunks.append(ReplyChunk(at, record["r"], record["i"], int(record["o"]), audio))
            elif record["s"] == "ctl":
                marks.append((at, record["n"]))
            else:
                clears.append((at, record["r"]))
        except (ValueError, KeyError, TypeError):
            reject("recorder_bad_spool_line")
    return chunks, marks, clears


async def run_recorder(
    settings: Settings, stop: asyncio.Event, redis: aioredis.Redis | None = None
) -> None:
    async def build(client: aioredis.Redis) -> Recorder:
        recorder = Recorder(settings, client)
        log.info("recorder started", extra={"folder": str(recorder.folder)})
        return recorder

    await serve_stage("recorder", settings, stop, build, redis)


def main(settings: Settings) -> None:
    run_service("recorder", settings, lambda stop: run_recorder(settings, stop))
