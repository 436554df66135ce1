"""Operations on real processes: signed calls, secrets never leaking, JSON logs with the CallSid,
Prometheus metrics that move after a call, Redis ACL credentials; container files."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from sim.openai_realtime import RealtimeEmulator
from sim.speech import speech
from sim.twilio_call import place_call
from tests.conftest import ROOT, RedisServer, free_port, wait_for, wait_for_line
from tests.stack import ProcessStack, process_env

pytestmark = pytest.mark.slow
OPENAI_CANARY = "sk-canary-7f3a9c2e5b1d48a6"
TWILIO_CANARY = "tw-canary-1b2c3d4e5f60718293a4"
REDIS_CANARY = "redis-canary-pass-5e6f7a8b"
PUBLIC = "https://gw.example.com"


async def _http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return int(data.split(b" ", 2)[1]), data.partition(b"\r\n\r\n")[2].decode()


def _value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def test_signed_call_secrets_logs_and_metrics(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    admin = aioredis.from_url(redis_server.url)
    await admin.flushall()
    await admin.execute_command(
        "ACL", "SETUSER", "gateway", "on", f">{REDIS_CANARY}", "~*", "&*", "+@all"
    )
    emulator = RealtimeEmulator(api_key=OPENAI_CANARY)  # the worker must present exactly this key
    await emulator.start()
    edge_port, t_port, w_port = free_port(), free_port(), free_port()
    acl_url = redis_server.url.replace("redis://", f"redis://gateway:{REDIS_CANARY}@")
    env = process_env(
        acl_url,
        edge_port,
        emulator.port,
        OPENAI_API_KEY=OPENAI_CANARY,
        TWILIO_AUTH_TOKEN=TWILIO_CANARY,
        PUBLIC_URL=PUBLIC,
        LOG_LEVEL="DEBUG",
    )
    stack = ProcessStack(env, edge_port, emulator.port, tmp_path)
    e_port = stack.edge_metrics_port  # the edge's /metrics is not on the public port
    stack.start(
        "transcoder", "services.transcoder", {"METRICS_PORT": str(t_port), "CONSUMER_NAME": "t"}
    )
    stack.start(
        "worker", "services.realtime_worker", {"METRICS_PORT": str(w_port), "CONSUMER_NAME": "w"}
    )
    stack.start("edge", "services.twilio_edge")
    try:

        async def up() -> bool:
            try:
                return all(
                    [
                        (await _http_get(p, "/healthz"))[0] == 200
                        for p in (edge_port, e_port, t_port, w_port)
                    ]
                )
            except OSError:
                return False

        await wait_for(up, timeout=20)
        before = {p: (await _http_get(p, "/metrics"))[1] for p in (e_port, w_port, t_port)}
        assert (await _http_get(edge_port, "/metrics"))[0] == 404
        # A call placed as Twilio does: webhook, then the signed stream.
        result = await asyncio.wait_for(
            place_call(
                stack.media_url,
                speech("Hello, this is a signed call."),
                hold_after_s=0.8,
                twiml_url=f"http://127.0.0.1:{edge_port}/twiml",
                auth_token=TWILIO_CANARY,
                twiml_signed_url=f"{PUBLIC}/twiml",
            ),
            40,
        )
        assert result.frames_received > 0
        # Twilio's stream status callbacks reached the edge, signed, and were taken.
        assert result.status_callbacks == [("stream-started", 204), ("stream-stopped", 204)]
        # An unsigned call is refused.
        with pytest.raises(Exception) as refused:
            await place_call(stack.media_url, speech("Hi."), hold_after_s=0.1)
        assert "403" in str(refused.value)
        # A stream whose handshake fails never reaches /media; Twilio's stream-error does.
        with pytest.raises(Exception) as failed:
            await place_call(
                stack.media_url,
                speech("Hi."),
                twiml_url=f"http://127.0.0.1:{edge_port}/twiml",
                auth_token=TWILIO_CANARY,
                twiml_signed_url=f"{PUBLIC}/twiml",
                signed_url=f"{PUBLIC.replace('https', 'wss')}/elsewhere",
            )
        assert "403" in str(failed.value)
        session = await emulator.wait_for_session(1)
        await session.wait_closed(timeout=10)

        async def worker_counted_the_call() -> bool:
            # The worker counts a call after its socket closes, so await the counter itself.
            return _value((await _http_get(w_port, "/metrics"))[1], "gateway_calls_total") >= 1

        await wait_for(worker_counted_the_call, timeout=10)
        after = {p: (await _http_get(p, "/metrics"))[1] for p in (e_port, w_port, t_port)}

        # Metrics parse as Prometheus text and moved.
        assert _value(after[e_port], "gateway_frames_total", direction="edge_in") > _value(
            before[e_port], "gateway_frames_total", direction="edge_in"
        )
        assert _value(after[t_port], "gateway_frames_total", direction="in") > 0
        assert _value(after[w_port], "gateway_hop_latency_seconds_count", hop="edge_to_openai") > 0
        assert _value(after[e_port], "gateway_hop_latency_seconds_count", hop="openai_to_edge") > 0
        assert _value(after[w_port], "gateway_first_reply_seconds_count") > 0
        assert _value(after[e_port], "gateway_rejected_total", reason="missing_signature") >= 1
        assert _value(after[e_port], "gateway_stream_events_total", event="stream-error") == 1
        assert _value(after[e_port], "gateway_stream_events_total", event="stream-started") == 1
        assert _value(after[w_port], "gateway_calls_total") >= 1

        # Logs: one JSON object a line, the CallSid on the call's lines, no secret anywhere.
        stack.stop_all()
        call_lines = 0
        for name, path in stack.logs.items():
            text = path.read_text()
            for secret in (OPENAI_CANARY, TWILIO_CANARY, REDIS_CANARY):
                assert secret not in text, f"{secret[:10]} leaked into {name}'s log"
            for line in text.splitlines():
                entry = json.loads(line)
                assert {"ts", "level", "service", "msg"} <= entry.keys()
                if entry.get("call_sid") == result.call_sid:
                    call_lines += 1
                    assert entry.get("stream_sid") == result.stream_sid
        assert call_lines >= 3
        # ... nor in Redis, nor in metrics labels.
        for key in await admin.keys("*"):
            dump = await admin.dump(key)
            assert not any(
                s.encode() in (dump or b"") for s in (OPENAI_CANARY, TWILIO_CANARY, REDIS_CANARY)
            )
        for text in after.values():
            assert OPENAI_CANARY not in text and TWILIO_CANARY not in text
    finally:
        stack.stop_all()
        await admin.execute_command("ACL", "DELUSER", "gateway")
        await admin.aclose()
        await emulator.stop()


def test_container_files_parse_and_name_real_commands() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {"redis", "edge", "transcoder", "worker", "emulator"} <= services.keys()
    assert services["emulator"]["profiles"] == ["emulator"]
    for name in ("edge", "transcoder", "worker"):
        command = services[name]["command"]
        assert command[:2] == ["python", "-m"]
        module = command[2].replace(".", "/")
        assert (ROOT / module / "__main__.py").exists() or (ROOT / f"{module}.py").exists()
        assert "healthz" in json.dumps(services[name]["healthcheck"])
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install ." in dockerfile and "USER" in dockerfile
    # Metrics listen on loopback by default; in a container the probes come from outside it.
    assert "ENV METRICS_HOST=0.0.0.0" in dockerfile.splitlines()


@pytest.mark.parametrize(
    "module", ["services.twilio_edge", "services.transcoder", "services.realtime_worker"]
)
def test_each_service_command_starts_and_stops_on_sigterm(
    module: str, redis_server: RedisServer
) -> None:
    import signal
    import sys
    import urllib.request

    edge_port, port = free_port(), free_port()
    env = process_env(redis_server.url, edge_port, 9, METRICS_PORT=str(port))
    proc = subprocess.Popen(
        [sys.executable, "-m", module],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        # The service says it is ready on its log; then /healthz must answer. How fast it gets
        # there depends on the runner, so the bounds only catch a hang.
        wait_for_line(proc, b"ready" if "twilio" not in module else b"edge listening", timeout=30)
        ports = [port, edge_port] if "twilio" in module else [port]
        for p in ports:  # the metrics port, and the edge's public port too
            with urllib.request.urlopen(f"http://127.0.0.1:{p}/healthz", timeout=10) as r:  # noqa: S310
                assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
