"""The pipeline on a Redis Cluster: three real masters with a replica each on loopback, calls in
both combos spread over slots and nodes, and a master killed mid-call and failed over."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from shared.audio import mulaw_decode, mulaw_encode
from shared.streams import CallKeys
from sim.openai_realtime import RealtimeEmulator
from sim.speech import speech
from sim.twilio_call import place_call
from tests.audio_checks import pcm24_to_8k, similarity
from tests.conftest import (
    PROCESS_START_S,
    cluster_port,
    free_port,
    port_open,
    wait_for,
    wait_for_line,
)
from tests.stack import ProcessStack, process_env
from tools.local_redis import redis_server_argv

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


class ClusterNodes:
    """Real redis-server processes in cluster mode: ``masters`` masters, each with a replica."""

    def __init__(self, root: Path, masters: int = 3, replicas: int = 1) -> None:
        self.root = root
        self.replicas = replicas
        self.ports = [cluster_port() for _ in range(masters * (1 + replicas))]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start_node(self, port: int) -> None:
        d = self.root / str(port)
        d.mkdir(exist_ok=True)
        proc = subprocess.Popen(
            redis_server_argv(port, d, cluster=True, node_timeout_ms=2000),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        wait_for_line(proc, b"Ready to accept connections", timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()  # the node logs nothing we need; a closed pipe cannot fill up
        self.procs[port] = proc

    def create(self) -> None:
        for port in self.ports:
            self.start_node(port)
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in self.ports),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def kill(self, port: int) -> None:
        self.procs[port].send_signal(signal.SIGKILL)
        self.procs[port].wait(5)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(5)


async def cluster_ok(ports: list[int]) -> bool:
    for port in ports:
        client = aioredis.Redis(port=port)
        try:
            info = await client.execute_command("CLUSTER", "INFO")
        except (OSError, RedisError):
            return False
        finally:
            await client.aclose()
        text = info.decode() if isinstance(info, bytes) else str(info)
        if "cluster_state:ok" not in text:
            return False
    return True


async def replicas_in_sync(ports: list[int]) -> bool:
    """Every replica has its master's data (a replica that never synced cannot fail over)."""
    for port in ports:
        client = aioredis.Redis(port=port)
        try:
            info = await client.info("replication")
        except (OSError, RedisError):
            return False
        finally:
            await client.aclose()
        if info.get("role") == "slave" and info.get("master_link_status") != "up":
            return False
    return True


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterNodes]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli are needed")
    nodes = ClusterNodes(tmp_path)
    nodes.create()
    yield nodes
    nodes.stop()


def sids_on(client: RedisCluster, port: int, count: int, on: bool = True) -> list[str]:
    """Call SIDs whose keys live on the master at ``port`` (or, ``on=False``, elsewhere)."""
    found: list[str] = []
    while len(found) < count:
        sid = "CA" + secrets.token_hex(16)
        if (client.get_node_from_key(f"call:{{{sid}}}:meta").port == port) == on:
            found.append(sid)
    return found


@pytest.mark.parametrize(
    "combo",
    [
        {"REALTIME_SCHEMA": "audio", "REALTIME_BETA_HEADER": "0"},
        {"REALTIME_SCHEMA": "flat", "REALTIME_BETA_HEADER": "1"},
    ],
    ids=["comboA", "comboB"],
)
async def test_calls_spread_over_the_cluster_and_survive_a_master_failover(
    cluster: ClusterNodes, emulator: RealtimeEmulator, tmp_path: Path, combo: dict[str, str]
) -> None:
    await wait_for(lambda: cluster_ok(cluster.ports), timeout=20)
    await wait_for(lambda: replicas_in_sync(cluster.ports), timeout=20)
    edge_port = free_port()
    env = process_env(
        f"redis://127.0.0.1:{cluster.ports[0]}/0",
        edge_port,
        emulator.port,
        REDIS_CLUSTER="1",
        LIFECYCLE_PARTITIONS="8",
        **combo,
    )
    stack = ProcessStack(env, edge_port, emulator.port, tmp_path)
    stack.start("transcoder", "services.transcoder", {"CONSUMER_NAME": "t0"})
    stack.start("worker", "services.realtime_worker", {"CONSUMER_NAME": "w0"})
    stack.start("edge", "services.twilio_edge")
    client = RedisCluster(host="127.0.0.1", port=cluster.ports[0])
    try:
        await client.initialize()
        masters = sorted(node.port for node in client.get_primaries())
        assert len(masters) == 3
        await wait_for(lambda: port_open(edge_port), timeout=PROCESS_START_S)

        # Six calls, three with their keys on the master about to fail, three elsewhere; each
        # caller says something of their own, long enough for the failover to land mid-speech.
        victim = masters[1]
        sids = sids_on(client, victim, 3) + sids_on(client, victim, 3, on=False)
        audio = {sid: caller_audio(i) for i, sid in enumerate(sids)}
        calls = {
            sid: asyncio.create_task(
                place_call(
                    stack.media_url, audio[sid], call_sid=sid, hold_after_s=1.0, max_duration_s=45
                )
            )
            for sid in sids
        }
        # Kill the master once every model session has heard a second of its caller.
        await wait_for(lambda: _all_hearing(emulator, 6, seconds=1.0), timeout=20)
        cluster.kill(victim)
        done = await asyncio.wait_for(asyncio.gather(*calls.values()), 90)
        results = dict(zip(sids, done, strict=True))

        # Every call, on the failed master or not, was served to the end: its caller's audio
        # reached a model session and a reply reached the caller, with no protocol violation.
        heard = [pcm24_to_8k(bytes(s.input_audio)) for s in emulator.sessions]
        print(f"\nfailover: master {victim} killed; per call (on it?, model heard, reply delay ms)")
        for sid, r in results.items():
            print(
                sid in sids[:3],
                round(max(similarity(audio[sid], h) for h in heard), 3),
                r.reply_delay_ms and round(r.reply_delay_ms),
            )
        for sid, r in results.items():
            assert r.frames_received > 0 and not r.violations, (
                sid in sids[:3],
                r.violations[:2],
                await _stream_state(client, sid),
            )
            best = max(similarity(audio[sid], h) for h in heard)
            # On the failed master, what it had taken but not yet passed to its replica may be
            # lost (a few frames at most); elsewhere nothing may be.
            assert best >= (0.95 if sid in sids[3:] else 0.9), (sid in sids[:3], best)

        # Calls spread over slots and nodes; each call's keys share one slot.
        nodes = set()
        for sid in sids:
            keys = [k async for k in client.scan_iter(match=f"call:{{{sid}}}:*")]
            assert len(keys) >= 5 and len({client.keyslot(k) for k in keys}) == 1
            nodes.add(client.get_node_from_key(keys[0]).port)
        assert len(nodes) >= 2
        assert len({client.keyslot(f"gw:calls:{{{p}}}") for p in range(8)}) == 8

        # And after the failover new calls work.
        r = await place_call(stack.media_url, speech("Is everything back?"), hold_after_s=0.5)
        assert r.frames_received > 0 and not r.violations
        for name, proc in stack.procs.items():
            assert proc.poll() is None, f"{name} died:\n{stack.logs[name].read_text()[-3000:]}"
    finally:
        await client.aclose()
        await asyncio.to_thread(stack.stop_all)  # the emulator on this loop must keep answering


async def _stream_state(client: RedisCluster, sid: str) -> dict[str, object]:
    """Each of a call's streams: length and last entry ID (for a failure's message)."""
    state: dict[str, object] = {}
    keys = CallKeys.for_call(sid)
    for key in keys.all():
        try:
            last = await client.xrevrange(key, count=1) if key != keys.meta else []
            state[key.decode().rsplit(":", 1)[1]] = (
                await client.xlen(key) if last else 0,
                last[0][0] if last else None,
            )
        except RedisError as exc:
            state[key.decode()] = repr(exc)
    return state


def caller_audio(i: int) -> np.ndarray:
    words = ["apple", "river", "mountain", "violet", "thunder", "paper"][i]
    text = f"Caller {i} speaking about the {words}, and then a little more about the {words} again."
    return mulaw_decode(mulaw_encode(speech(text)))


def _all_hearing(emulator: RealtimeEmulator, sessions: int, seconds: float) -> bool:
    ready = [s for s in emulator.sessions if len(s.input_audio) >= seconds * 48000]
    return len(ready) >= sessions
