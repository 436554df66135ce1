"""End-to-end benchmark: N concurrent simulated calls, in real time, through the real processes.

For each N it starts redis-server, the emulator, the edge, transcoder(s) and worker(s) as
separate processes (as supervisord runs them), places N calls with the Twilio simulator from this
process, and reports per-hop latency percentiles (from the services' own Prometheus histograms,
interpolated within buckets), lost or duplicated caller frames (what the emulator received
against what the callers sent), CPU milliseconds per call-second for each service and for Redis,
and RSS per call. The same load then runs through :mod:`bench.direct_bridge`, the
single-process baseline, and every figure is also given as a ratio to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.request import urlopen

import numpy as np
import psutil
import redis
from prometheus_client.parser import text_string_to_metric_families

from sim.session_record import read_arrivals
from sim.speech import speech
from sim.twilio_call import place_call
from tools.local_redis import redis_server_argv

ROOT = Path(__file__).resolve().parent.parent
BYTES_PER_FRAME_24K = 960  # 20 ms of PCM16 at 24 kHz
FRAME_S = 0.02  # a Twilio frame's 20 ms
STEADY_AFTER_S = 2.0  # "steady" p99s leave out each call's first seconds (its pickup)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


@dataclass
class Procs:
    workdir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def cpu_s(self) -> dict[str, float]:
        out = {}
        for name, proc in self.procs.items():
            try:
                t = psutil.Process(proc.pid).cpu_times()
                out[name] = t.user + t.system
            except psutil.Error:
                out[name] = 0.0
        return out

    def rss_mb(self) -> dict[str, float]:
        out = {}
        for name, proc in self.procs.items():
            try:
                out[name] = psutil.Process(proc.pid).memory_info().rss / 2**20
            except psutil.Error:
                out[name] = 0.0
        return out

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(8)
            except subprocess.TimeoutExpired:
                proc.kill()


def _buckets(text: str, hop: str) -> dict[float, float]:
    """``gateway_hop_latency_seconds{hop=...}``'s cumulative buckets: upper bound -> count."""
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "gateway_hop_latency_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket") and sample.labels.get("hop") == hop:
                buckets[float(sample.labels["le"])] = sample.value
    return buckets


def histogram_quantiles(
    text: str, hop: str, qs: tuple[float, ...] = (0.5, 0.95, 0.99), since: str = ""
) -> dict[str, float]:
    """Quantiles (ms) of ``gateway_hop_latency_seconds{hop=...}``, linear within buckets; with
    ``since`` (an earlier scrape of the same process), of what was observed after it."""
    earlier = _buckets(since, hop) if since else {}
    buckets = sorted((le, n - earlier.get(le, 0.0)) for le, n in _buckets(text, hop).items())
    if not buckets or buckets[-1][1] == 0:
        return {f"p{int(q * 100)}": float("nan") for q in qs} | {"count": 0}
    total = buckets[-1][1]
    out: dict[str, float] = {"count": total}
    for q in qs:
        target = q * total
        lo_bound, lo_count = 0.0, 0.0
        value = buckets[-2][0] if len(buckets) > 1 else 0.0
        for bound, count in buckets:
            if count >= target:
                if bound == float("inf"):
                    value = lo_bound
                else:
                    frac = (target - lo_count) / max(count - lo_count, 1e-9)
                    value = lo_bound + frac * (bound - lo_bound)
                break
            lo_bound, lo_count = bound, count
        out[f"p{int(q * 100)}"] = value * 1000.0
    return out


def round_trips_by_loop(text: str) -> dict[str, float]:
    """``gateway_redis_round_trips_total`` of one process, by loop."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "gateway_redis_round_trips":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out[sample.labels["loop"]] = sample.value
    return out


def scrape(port: int) -> str:
    with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:  # noqa: S310 - loopback
        return resp.read().decode()


LATE_AFTER_S = 1.0  # a frame not at the emulator this long after the calls ended is late
DRAIN_TIMEOUT_S = 15.0  # one not there this long after is lost
DRAIN_POLL_S = 0.05


def await_drain(
    count: Callable[[], float],
    sent: float,
    late_after_s: float = LATE_AFTER_S,
    timeout_s: float = DRAIN_TIMEOUT_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
) -> dict[str, float | None]:
    """Wait, from the calls' end, until ``count()`` (the caller frames the model has) reaches
    ``sent`` or ``timeout_s`` passes; then split the shortfall honestly: ``late`` frames came
    after ``late_after_s`` (the bench's former fixed wait, which counted them lost), ``lost``
    ones never came, ``duplicated`` ones came more than once. ``drain_s``: how long the count
    took to reach ``sent`` (None: it never did)."""
    start = clock()
    on_time: float | None = None
    while True:
        got, waited = count(), clock() - start
        if on_time is None and (waited >= late_after_s or got >= sent):
            on_time = got
        if got >= sent or waited >= timeout_s:
            break
        sleep(DRAIN_POLL_S)
    assert on_time is not None
    return {
        "received": got,
        "lost": max(0.0, sent - got),
        "late": max(0.0, min(got, sent) - on_time),
        "duplicated": max(0.0, got - sent),
        "drain_s": waited if got >= sent else None,
    }


def recorded_input_frames(record_dir: Path) -> float:
    total = 0
    for path in record_dir.rglob("input.pcm"):
        total += path.stat().st_size
    return total / BYTES_PER_FRAME_24K


PICKUP_TAG = "bench call "


def pickup_delays(record_dir: Path, calls: list) -> dict[str, float]:  # type: ignore[type-arg]
    """How long each call waited for its stages, in ms (p50 and max over the calls):
    ``session_open``, from the call's start to its Realtime socket opening (a greeting cannot
    begin before it), and ``first_frame``, from the first caller frame at the edge (sent with
    the start) to that frame's append on the socket. Both on this machine's wall clock."""
    by_tag = {}
    for path in record_dir.rglob("timing.json"):
        timing = json.loads(path.read_text())
        by_tag[timing.get("instructions", "")] = timing
    opened, first = [], []
    for i, call in enumerate(calls):
        timing = by_tag.get(f"{PICKUP_TAG}{i}")
        if isinstance(call, BaseException) or timing is None or call.started_wall is None:
            continue
        opened.append((timing["connected_at"] - call.started_wall) * 1000)
        first.append((timing["first_append_at"] - call.started_wall) * 1000)
    out: dict[str, float] = {"calls": float(len(first))}
    for name, values in (("session_open", opened), ("first_frame", first)):
        out[f"{name}_p50_ms"] = float(np.median(values)) if values else float("nan")
        out[f"{name}_max_ms"] = float(max(values)) if values else float("nan")
    return out


def model_delays(record_dir: Path, calls: list) -> dict[str, float]:  # type: ignore[type-arg]
    """The whole way's delay of each caller frame, in ms: from when the caller's frame clock
    sent it (frame k at the call's start + k * 20 ms) to when the emulator handled its append
    (``sim.arrivals``), past each call's first ``STEADY_AFTER_S``. This includes what the
    gateway's hop histograms cannot see: the simulated caller's own lag and the emulator's
    receive queue. ``over_1s``: frames that took longer than a second."""
    sessions = {}
    for path in record_dir.rglob("timing.json"):
        sessions[json.loads(path.read_text()).get("instructions", "")] = path.parent
    delays: list[np.ndarray] = []
    for i, call in enumerate(calls):
        folder = sessions.get(f"{PICKUP_TAG}{i}")
        if isinstance(call, BaseException) or folder is None or call.started_wall is None:
            continue
        arrivals = read_arrivals(folder)
        if not len(arrivals):
            continue
        last_frame = arrivals[:, 1] / BYTES_PER_FRAME_24K - 1
        delay = (arrivals[:, 0] - (call.started_wall + last_frame * FRAME_S)) * 1000
        delays.append(delay[last_frame * FRAME_S >= STEADY_AFTER_S])
    every = np.concatenate(delays) if delays else np.zeros(0)
    if not len(every):
        return {"count": 0.0}
    p50, p95, p99 = np.percentile(every, [50, 95, 99])
    return {
        "count": float(len(every)),
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "max": float(every.max()),
        "over_1s": float((every > 1000).sum()),
    }


def redis_commands(nodes: list[redis.Redis]) -> dict[str, float]:
    """Commands each Redis node has run so far, by name, summed over the nodes."""
    out: dict[str, float] = {}
    for client in nodes:
        for name, stats in client.info("commandstats").items():
            cmd = name.removeprefix("cmdstat_")
            out[cmd] = out.get(cmd, 0.0) + float(stats["calls"])
    return out


def redis_reads(nodes: list[redis.Redis]) -> float:
    """Socket reads Redis has done so far (about one per client round trip), over the nodes."""
    return float(sum(int(client.info("stats")["total_reads_processed"]) for client in nodes))


def redis_cpu_s(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def run_calls(media_url: str, n: int, speech_s: float, hold_s: float) -> list:  # type: ignore[type-arg]
    audio = speech("Hello, I would like to check the status of my order please.")
    audio = audio[: int(8000 * speech_s)]

    async def one(i: int):  # type: ignore[no-untyped-def]
        # Starts spread over a second, as the harness has them; and each call's 20 ms
        # frame clock at a phase of its own, spread evenly over the 20 ms. Starts 1/N s apart
        # alone put every call's frames at the same phase for N = 10, 25, 50 (1/N s is a
        # multiple of 20 ms), which hands the stages batches real calls, whose phases are
        # random, do not: at 50 calls that made the pipeline look a third cheaper than at 60.
        await asyncio.sleep(i / max(n, 1) + FRAME_S * i / max(n, 1))
        # Per-call instructions name the call, so its Realtime session can be found in the
        # emulator's record (for the pickup delay).
        return await place_call(
            media_url,
            audio,
            hold_after_s=hold_s,
            max_duration_s=60,
            custom_parameters={"instructions": f"{PICKUP_TAG}{i}"},
        )

    return await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)


def _module_argv(py: str, module: str, name: str) -> list[str]:
    """``python -m module``; under cProfile with ``BENCH_PROFILE_DIR`` set (the profile is
    written to ``<dir>/<name>.prof`` when the stage stops: ``python -m pstats`` reads it)."""
    folder = os.environ.get("BENCH_PROFILE_DIR")
    if not folder:
        return [py, "-m", module]
    Path(folder).mkdir(parents=True, exist_ok=True)
    return [py, "-m", "cProfile", "-o", str(Path(folder) / f"{name}.prof"), "-m", module]


def _start_stages(
    procs: Procs,
    env: dict[str, str],
    info: dict,
    py: str,  # type: ignore[type-arg]
    transcoders: int,
    workers: int,
    edge_port: int,
) -> None:
    for i in range(transcoders):
        port = free_port()
        procs.start(
            f"transcoder{i}",
            _module_argv(py, "services.transcoder", f"transcoder{i}"),
            dict(env, METRICS_PORT=str(port), CONSUMER_NAME=f"bench-t{i}"),
        )
        info["metrics_ports"][f"transcoder{i}"] = port
    for i in range(workers):
        port = free_port()
        procs.start(
            f"worker{i}",
            _module_argv(py, "services.realtime_worker", f"worker{i}"),
            dict(env, METRICS_PORT=str(port), CONSUMER_NAME=f"bench-w{i}"),
        )
        info["metrics_ports"][f"worker{i}"] = port
    edge_metrics = free_port()
    procs.start(
        "edge",
        _module_argv(py, "services.twilio_edge", "edge"),
        dict(env, METRICS_PORT=str(edge_metrics)),
    )
    info["metrics_ports"]["edge"] = edge_metrics
    wait_port(edge_port)
    for port in info["metrics_ports"].values():
        wait_port(port)


def _cluster_port() -> int:
    import socket

    while True:
        port = free_port()
        if port + 10000 <= 65535:
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


def _start_cluster(procs: Procs, workdir: Path, env: dict[str, str]) -> list[int]:
    """Three masters on loopback, the slots split between them by redis-cli."""
    ports = [_cluster_port() for _ in range(3)]
    for i, port in enumerate(ports):
        d = workdir / f"node{port}"
        d.mkdir()
        procs.start(f"redis{i}", redis_server_argv(port, d, cluster=True), env)
        wait_port(port)
    subprocess.run(
        [
            "redis-cli",
            "--cluster",
            "create",
            *(f"127.0.0.1:{p}" for p in ports),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ],
        check=True,
        capture_output=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if all(
            b"cluster_state:ok" in redis.Redis(port=p).execute_command("CLUSTER", "INFO")
            for p in ports
        ):
            return ports
        time.sleep(0.1)
    raise RuntimeError("the cluster did not come up")


@contextlib.contextmanager
def stack(
    kind: str, workdir: Path, transcoders: int = 1, workers: int = 1, dialect: str = "audio"
) -> Iterator[dict]:  # type: ignore[type-arg]
    """The stack for one measurement; ``dialect``: the stages' ``REALTIME_SCHEMA`` (``audio``,
    combo A, or ``live``, combo C against the emulator's ``/v1/live/sessions``; the direct
    bridge speaks combo A only)."""
    procs = Procs(workdir)
    redis_port, emu_port, edge_port = free_port(), free_port(), free_port()
    record = workdir / "emulator"
    record.mkdir(exist_ok=True)
    base_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("REALTIME_", "OPENAI_", "TWILIO_", "REDIS_", "EDGE_"))
    }
    base_env["PYTHONUNBUFFERED"] = "1"
    py = sys.executable
    try:
        procs.start(
            "emulator",
            [
                py,
                "-m",
                "sim.openai_realtime",
                "--host",
                "127.0.0.1",
                "--port",
                str(emu_port),
                "--record-dir",
                str(record),
            ],
            base_env,
        )
        wait_port(emu_port)
        realtime_url = f"ws://127.0.0.1:{emu_port}/v1/realtime"
        info: dict = {"record": record, "procs": procs, "metrics_ports": {}}  # type: ignore[type-arg]
        if kind == "direct":
            procs.start(
                "bridge",
                [
                    py,
                    "-m",
                    "bench.direct_bridge",
                    "--port",
                    str(edge_port),
                    "--realtime-url",
                    realtime_url,
                ],
                base_env,
            )
            wait_port(edge_port)
            info["metrics_ports"] = {"bridge": edge_port}
        else:
            cluster: dict[str, str] = {}
            if kind == "cluster":  # three masters; the stages as a cluster deployment runs them
                ports = _start_cluster(procs, workdir, base_env)
                cluster = {"REDIS_CLUSTER": "1", "LIFECYCLE_PARTITIONS": "8"}
            else:
                procs.start("redis", redis_server_argv(redis_port, workdir), base_env)
                wait_port(redis_port)
                ports = [redis_port]
            if "BENCH_REDIS_BATCH_MS" in os.environ:  # the stages' REDIS_BATCH_MS, to compare
                cluster["REDIS_BATCH_MS"] = os.environ["BENCH_REDIS_BATCH_MS"]
            if dialect == "live":
                realtime_url = f"ws://127.0.0.1:{emu_port}/v1/live/sessions"
            env = dict(
                base_env,
                **cluster,
                REALTIME_SCHEMA=dialect,
                REDIS_URL=f"redis://127.0.0.1:{ports[0]}/0",
                REALTIME_URL=realtime_url,
                EDGE_HOST="127.0.0.1",
                EDGE_PORT=str(edge_port),
                METRICS_HOST="127.0.0.1",
                LOG_LEVEL="WARNING",
            )
            _start_stages(procs, env, info, py, transcoders, workers, edge_port)
            info["redis_nodes"] = [redis.Redis(port=port) for port in ports]
        info["media_url"] = f"ws://127.0.0.1:{edge_port}/media"
        yield info
    finally:
        procs.stop()


def measure(
    kind: str, n: int, speech_s: float = 3.0, hold_s: float = 4.0, dialect: str = "audio"
) -> dict:  # type: ignore[type-arg]
    """One load on one setup; ``kind`` ``direct`` / ``pipeline`` / ``cluster``, and for the
    pipeline the ``dialect`` it speaks (``live``: recorded as kind ``live``)."""
    with (
        tempfile.TemporaryDirectory(prefix=f"bench-{kind}-") as tmp,
        stack(kind, Path(tmp), dialect=dialect) as st,
    ):
        procs: Procs = st["procs"]
        cpu0 = procs.cpu_s()
        rss0 = procs.rss_mb()
        nodes = st.get("redis_nodes", [])
        rcpu0 = sum(redis_cpu_s(c) for c in nodes)
        cmds0 = redis_commands(nodes)
        reads0 = redis_reads(nodes)
        t0 = time.monotonic()
        # Steady state: what the hops observed once every call is past its first 2 s (calls
        # start over the first second), as the difference of two scrapes.
        early: dict[str, str] = {}
        timer = threading.Timer(
            1.0 + STEADY_AFTER_S,
            lambda: early.update(
                {name: scrape(port) for name, port in st["metrics_ports"].items()}
            ),
        )
        timer.start()
        results = asyncio.run(run_calls(st["media_url"], n, speech_s, hold_s))
        wall = time.monotonic() - t0
        timer.cancel()
        cpu1 = procs.cpu_s()
        rss1 = procs.rss_mb()
        failures = [r for r in results if isinstance(r, BaseException)]
        ok = [r for r in results if not isinstance(r, BaseException)]
        frames_sent = sum(r.frames_sent for r in ok)
        call_seconds = sum(r.frames_sent for r in ok) * 0.02
        # What the emulator got, once the pipeline has drained (or a bounded wait is over).
        drain = await_drain(lambda: recorded_input_frames(st["record"]), frames_sent)
        emulator_cpu_s = procs.cpu_s().get("emulator", 0.0) - cpu0.get("emulator", 0.0)
        texts = {name: scrape(port) for name, port in st["metrics_ports"].items()}
        hop_in_src = next(
            (t for name, t in texts.items() if name.startswith(("worker", "bridge"))), ""
        )
        hop_out_src = texts.get("edge") or texts.get("bridge", "")
        in_name = next((k for k in texts if k.startswith(("worker", "bridge"))), "")
        out_name = "edge" if "edge" in texts else "bridge"
        services: dict[str, dict[str, float]] = {}
        for name in cpu1:
            if name == "emulator":
                continue
            services[name] = {
                "cpu_ms_per_call_s": (cpu1[name] - cpu0[name]) * 1000 / max(call_seconds, 1e-9),
                "rss_mb": rss1[name],
                "rss_mb_per_call": max(0.0, rss1[name] - rss0[name]) / max(n, 1),
            }
        if nodes:
            for name in [k for k in services if k.startswith("redis")]:
                del services[name]
            services["redis"] = {
                "cpu_ms_per_call_s": (sum(redis_cpu_s(c) for c in nodes) - rcpu0)
                * 1000
                / max(call_seconds, 1e-9),
                "rss_mb": sum(rss1.get(k, 0.0) for k in rss1 if k.startswith("redis")),
                "rss_mb_per_call": 0.0,
            }
        total_cpu = sum(v["cpu_ms_per_call_s"] for v in services.values())
        # Round trips per caller frame by stage and loop: where batching works, and where not.
        trips_by_stage = {
            f"{name}_{loop}": count / max(frames_sent, 1)
            for name, text in texts.items()
            for loop, count in round_trips_by_loop(text).items()
        }
        cmds1 = redis_commands(nodes)
        round_trips = (redis_reads(nodes) - reads0) / max(frames_sent, 1) if nodes else None
        per_frame = {
            cmd: (calls - cmds0.get(cmd, 0.0)) / max(frames_sent, 1)
            for cmd, calls in sorted(cmds1.items())
            if calls - cmds0.get(cmd, 0.0) > 0 and cmd not in ("info", "ping")
        }
        return {
            "kind": "live" if dialect == "live" else kind,
            "dialect": dialect,
            "calls": n,
            "failed_calls": len(failures),
            "failures": [repr(f)[:200] for f in failures[:3]],
            "wall_s": wall,
            "frames_sent": frames_sent,
            "frames_received": drain["received"],
            "frames_lost": drain["lost"],
            "frames_late": drain["late"],
            "frames_duplicated": drain["duplicated"],
            "drain_s": drain["drain_s"],
            # The emulator (the model's stand-in) is not the gateway's cost, but a saturated
            # one delays what it records: its share of a core over the calls, and per call-s.
            "emulator_cpu_percent_of_a_core": (
                cpu1.get("emulator", 0.0) - cpu0.get("emulator", 0.0)
            )
            * 100
            / max(wall, 1e-9),
            "emulator_cpu_ms_per_call_s": emulator_cpu_s * 1000 / max(call_seconds, 1e-9),
            "edge_to_openai_ms": histogram_quantiles(hop_in_src, "edge_to_openai"),
            "openai_to_edge_ms": histogram_quantiles(hop_out_src, "openai_to_edge"),
            "steady_edge_to_openai_ms": histogram_quantiles(
                hop_in_src, "edge_to_openai", since=early.get(in_name, "")
            ),
            "steady_openai_to_edge_ms": histogram_quantiles(
                hop_out_src, "openai_to_edge", since=early.get(out_name, "")
            ),
            "steady_from_s": STEADY_AFTER_S if early else None,
            "pickup": pickup_delays(st["record"], results),
            "caller_to_model_ms": model_delays(st["record"], results),
            "reply_delay_ms_p50": float(
                np.median(
                    [r.reply_delay_ms for r in ok if r.reply_delay_ms is not None] or [np.nan]
                )
            ),
            "services": services,
            "cpu_ms_per_call_s": total_cpu,
            # Commands Redis ran per caller frame sent (a pipeline of many is one round trip
            # but still so many commands), all stages and both directions.
            "redis_commands_per_frame": per_frame,
            # Round trips (Redis's socket reads, about one per batch a client sends) per caller
            # frame: what batching saves, as every round trip wakes a process at each end.
            "redis_round_trips_per_frame": round_trips,
            "redis_round_trips_per_frame_by_loop": trips_by_stage,
        }


def measure_rest(kind: str = "pipeline", seconds: float = 10.0) -> dict[str, float]:
    """CPU of the stack with no call at all (edge, transcoder, worker, Redis; the direct bridge
    alone), as a percentage of one core, over ``seconds`` after it settled."""
    with (
        tempfile.TemporaryDirectory(prefix=f"bench-rest-{kind}-") as tmp,
        stack(kind, Path(tmp)) as st,
    ):
        procs: Procs = st["procs"]
        time.sleep(2.0)  # start-up work (imports, group creation) is not rest
        nodes = st.get("redis_nodes", [])
        cpu0, rcpu0 = procs.cpu_s(), sum(redis_cpu_s(c) for c in nodes)
        time.sleep(seconds)
        cpu1, rcpu1 = procs.cpu_s(), sum(redis_cpu_s(c) for c in nodes)
        out = {
            name: (cpu1[name] - cpu0[name]) * 100 / seconds
            for name in cpu1
            if name != "emulator" and not name.startswith("redis")
        }
        if nodes:
            out["redis"] = (rcpu1 - rcpu0) * 100 / seconds
        out["total"] = sum(out.values())
        return out
