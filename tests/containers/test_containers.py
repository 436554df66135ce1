"""The gateway as one container per service, as compose runs it (issue 20): Redis, the edge, two
transcoders, two workers and the emulator, from the images ``make images`` made. From the host,
with the simulator on the edge's port published on 127.0.0.1: health checks, a signed call in both
dialects, a worker container killed mid-call, ``compose down``, and where the secrets show.

``make test-containers`` runs this module (it starts a Docker engine when none runs and builds the
images); plain ``make test`` deselects it (marker ``containers``). The emulator records each session
in a folder of the host's, which is how the host sees what the model heard and said.
Figures go to build/containers/figures.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import select
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.audio import mulaw_decode, mulaw_encode
from sim.speech import silence, speech
from sim.twilio_call import CallResult, place_call
from tests.audio_checks import pcm24_to_8k, similarity
from tests.conftest import ROOT, free_port, wait_for

pytestmark = pytest.mark.containers

HERE = Path(__file__).resolve().parent
FRAME_24K = 960  # bytes of PCM16 at 24 kHz in one 20 ms Twilio frame
COMBOS = {
    "A": {"REALTIME_SCHEMA": "audio", "REALTIME_BETA_HEADER": "0"},
    "B": {"REALTIME_SCHEMA": "flat", "REALTIME_BETA_HEADER": "1"},
}
# The dialect's own reply audio event: what tells the dialect apart in the emulator's record.
AUDIO_DELTA = {"A": "response.output_audio.delta", "B": "response.audio.delta"}
GATEWAY_SERVICES = ("edge", "transcoder", "worker", "tool_runner", "emulator")
SCALE = {"redis": 1, "edge": 1, "transcoder": 2, "worker": 2, "tool_runner": 1, "emulator": 1}
# compose.yaml's stop_grace_period; else 10 s
GRACE_S = {"transcoder": 6.0, "worker": 6.0, "tool_runner": 6.0}
DEFAULT_GRACE_S = 10.0
OPENAI_CANARY = "sk-canary-" + secrets.token_hex(12)
TWILIO_CANARY = "twilio-canary-" + secrets.token_hex(12)
GATEWAY_IMAGE = os.environ.get("GATEWAY_IMAGE", "voice-gateway:latest")
REDIS_IMAGE = os.environ.get("REDIS_IMAGE", "redis:7-alpine")
FIGURES: dict[str, Any] = {}


def compose_command() -> list[str]:
    """``COMPOSE`` if set, else Docker's compose plugin, else Debian's docker-compose (v1)."""
    if os.environ.get("COMPOSE"):
        return shlex.split(os.environ["COMPOSE"])
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True)
    if plugin.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail("neither `docker compose` nor docker-compose is installed (make test-containers)")


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    proc = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode:
        raise AssertionError(f"docker {shlex.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


async def docker_async(*args: str) -> str:
    """docker without blocking the event loop (a call is streaming in real time on it)."""
    proc = await asyncio.create_subprocess_exec(
        "docker", *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, f"docker {shlex.join(args)}: {out.decode()}"
    return out.decode()


class Records:
    """What the emulator recorded, one folder per session (0001, 0002, ...): events.jsonl (every
    event either way, then ``closed``), input.pcm (what the model heard), output.pcm (said)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def count(self) -> int:
        return sum(1 for p in self.folder.iterdir() if p.is_dir())

    def events(self, n: int) -> list[dict[str, Any]]:
        path = self.folder / f"{n:04d}" / "events.jsonl"
        if not path.exists():
            return []
        events = []
        for line in path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:  # the line being written now
                break
        return events

    def first(self, n: int, direction: str, kind: str) -> dict[str, Any] | None:
        return next(
            (e for e in self.events(n) if e["dir"] == direction and e["type"] == kind), None
        )

    def closed(self, n: int) -> bool:
        return self.first(n, "emulator", "closed") is not None

    def audio(self, n: int, name: str) -> bytes:
        path = self.folder / f"{n:04d}" / name
        return path.read_bytes() if path.exists() else b""


@dataclass
class Stack:
    """One compose project of this module; ``use`` (re)starts it in a dialect."""

    compose_cmd: list[str]
    project: str
    tmp: Path
    edge_port: int
    combo: str | None = None
    records: Records | None = None

    @property
    def media_url(self) -> str:
        return f"ws://127.0.0.1:{self.edge_port}/media"

    @property
    def twiml_url(self) -> str:
        return f"http://127.0.0.1:{self.edge_port}/twiml"

    def env(self) -> dict[str, str]:
        # The host's own gateway settings must not leak into the containers' compose variables.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("REALTIME_", "OPENAI_", "TWILIO_", "PUBLIC_", "EDGE_"))
        }
        assert self.combo is not None and self.records is not None
        env.update(
            COMPOSE_PROJECT_NAME=self.project,
            GATEWAY_IMAGE=GATEWAY_IMAGE,
            REDIS_IMAGE=REDIS_IMAGE,
            EDGE_PUBLISH=f"127.0.0.1:{self.edge_port}",
            REALTIME_URL="ws://emulator:8765/v1/realtime",
            OPENAI_API_KEY=OPENAI_CANARY,
            TWILIO_AUTH_TOKEN=TWILIO_CANARY,
            EMULATOR_RECORDS=str(self.records.folder),
            **COMBOS[self.combo],
        )
        return env

    def compose(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        cmd = [
            *self.compose_cmd,
            "-p",
            self.project,
            "-f",
            str(ROOT / "compose.yaml"),
            "-f",
            str(HERE / "compose.test.yaml"),
            "--profile",
            "emulator",
            *args,
        ]
        proc = subprocess.run(
            cmd, cwd=ROOT, env=self.env(), capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode:
            raise AssertionError(f"{shlex.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
        return proc

    def use(self, combo: str) -> None:
        """The stack up in ``combo``, every service healthy; a change of dialect recreates the
        gateway's containers (their environment changed), with a fresh record folder."""
        if self.combo == combo:
            return
        self.combo = combo
        folder = self.tmp / f"records-{combo}"
        folder.mkdir(exist_ok=True)
        folder.chmod(0o777)  # the emulator runs as the image's user, not root
        self.records = Records(folder)
        started = time.monotonic()
        self.compose("up", "-d", "--no-build", "--scale", "transcoder=2", "--scale", "worker=2")
        self.wait_healthy(timeout=120)
        FIGURES.setdefault("up_to_healthy_s", {})[combo] = round(time.monotonic() - started, 1)

    def containers(self, service: str | None = None, *, running: bool = False) -> list[str]:
        args = [
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            f"label=com.docker.compose.project={self.project}",
        ]
        if service:
            args += ["--filter", f"label=com.docker.compose.service={service}"]
        if not running:
            args.append("-a")
        return docker(*args).split()

    def inspect(self, ids: list[str]) -> list[dict[str, Any]]:
        return json.loads(docker("inspect", *ids)) if ids else []

    def service_of(self, info: dict[str, Any]) -> str:
        return str(info["Config"]["Labels"]["com.docker.compose.service"])

    def wait_healthy(self, timeout: float, ids: list[str] | None = None) -> None:
        """Every container healthy (or running, without a health check). Checked afresh at
        each of Docker's own events for the project (a health status, a start, a death), which
        are awaited with the deadline as timeout: the events stream is opened before the first
        check, so no change between a check and the wait is missed."""
        deadline = time.monotonic() + timeout
        events = subprocess.Popen(
            [
                "docker",
                "events",
                "--filter",
                f"label=com.docker.compose.project={self.project}",
                "--format",
                "{{.Status}}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert events.stdout is not None
        try:
            while True:
                infos = self.inspect(ids or self.containers())
                state = {
                    i["Name"]: i["State"].get("Health", i["State"])["Status"]
                    if i["State"]["Running"]
                    else i["State"]["Status"]
                    for i in infos
                }
                waiting = [
                    f"{name}: {status}"
                    for name, status in state.items()
                    if status not in ("healthy", "running")  # "running": no health check
                ]
                if infos and not waiting:
                    return
                left = deadline - time.monotonic()
                changed, _, _ = select.select([events.stdout], [], [], max(0.0, left))
                if changed and events.stdout.readline():
                    continue  # something changed: look again
                logs = {
                    i["Name"]: docker("logs", "--tail", "20", i["Id"], check=False) for i in infos
                }
                raise AssertionError(f"not healthy in {timeout} s: {waiting}\n{logs}")
        finally:
            events.terminate()
            events.wait(10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if subprocess.run(["docker", "info"], capture_output=True).returncode:
        pytest.fail("no Docker engine answers: run make test-containers, which starts one")
    for image in (GATEWAY_IMAGE, REDIS_IMAGE):
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode:
            pytest.fail(f"image {image} is missing: run make images")
    s = Stack(compose_command(), f"vgtest{os.getpid()}", tmp_path_factory.mktemp("c"), free_port())
    try:
        yield s
    finally:
        if s.combo:
            subprocess.run(
                [*s.compose_cmd, "-p", s.project, "-f", str(ROOT / "compose.yaml"), "-f",
                 str(HERE / "compose.test.yaml"), "--profile", "emulator", "down",
                 "--remove-orphans"],
                cwd=ROOT, env=s.env(), capture_output=True, timeout=300, check=False,
            )  # fmt: skip
        out = ROOT / "build" / "containers" / "figures.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(FIGURES, indent=2) + "\n")


def caller(text: str) -> np.ndarray:
    return mulaw_decode(mulaw_encode(speech(text)))


async def signed_call(stack: Stack, audio: np.ndarray, **kwargs: Any) -> CallResult:
    """A call as Twilio places it: the signed webhook, then the signed stream it names."""
    return await place_call(
        stack.media_url, audio, twiml_url=stack.twiml_url, auth_token=TWILIO_CANARY, **kwargs
    )


def test_each_service_runs_in_its_own_container_and_turns_healthy(stack: Stack) -> None:
    stack.use("A")  # waits for every health check to pass
    infos = stack.inspect(stack.containers())
    counts = {name: 0 for name in SCALE}
    for info in infos:
        counts[stack.service_of(info)] += 1
        assert info["State"]["Running"], info["Name"]
        if stack.service_of(info) in GATEWAY_SERVICES:
            assert info["Config"]["User"] == "10001:10001", info["Name"]
    assert counts == SCALE


def test_the_gateway_image_runs_as_a_user_without_build_tools_or_the_build_machines_cas(
    stack: Stack,
) -> None:
    script = (
        "id -u; for t in gcc cc c++ make pip pip3; do command -v $t; done; "
        "ls /usr/local/share/ca-certificates; python -c 'import services.twilio_edge'"
    )
    out = docker("run", "--rm", "--network", "none", GATEWAY_IMAGE, "sh", "-c", script)
    assert out.split() == ["10001"], out  # no tool found, no extra CA, the code imports
    FIGURES["image_mb"] = {
        image: round(int(docker("image", "inspect", "-f", "{{.Size}}", image)) / 1e6)
        for image in (GATEWAY_IMAGE, REDIS_IMAGE)
    }


@pytest.mark.parametrize("combo", ["A", "B"], ids=["comboA", "comboB"])
async def test_a_call_through_the_edge_container_gets_the_models_reply(
    stack: Stack, combo: str
) -> None:
    stack.use(combo)
    assert stack.records is not None
    records = stack.records
    n = records.count() + 1
    audio = caller("Good morning, I am calling about the invoice I received last week.")
    result = await asyncio.wait_for(signed_call(stack, audio, hold_after_s=1.0), 40)
    await wait_for(lambda: records.closed(n), timeout=15, interval=0.05)
    assert records.first(n, "server", AUDIO_DELTA[combo]), "not the configured dialect"
    heard_by_model = pcm24_to_8k(records.audio(n, "input.pcm"))
    assert similarity(audio, heard_by_model) >= 0.95
    reply = pcm24_to_8k(records.audio(n, "output.pcm"))
    got = mulaw_decode(result.received_audio)
    assert similarity(reply[: reply.size // 2], got, max_lag=2000) >= 0.9
    FIGURES.setdefault("reply_delay_ms", {})[combo] = round(result.reply_delay_ms or 0)


def two_turns() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The caller of tests/test_reliability.py: two sentences five seconds apart."""
    first = caller("Hello, I am calling about my account balance please.")
    second = caller("And could you also check the last payment I made?")
    return first, second, np.concatenate([first, silence(5000), second])


async def test_a_worker_container_killed_mid_call_costs_no_more_than_a_killed_worker_may(
    stack: Stack,
) -> None:
    """tests/test_reliability.py's bounds for a killed worker: a new session within 3 s, with the
    same configuration and the conversation so far; every caller frame delivered (a few twice).
    `docker kill` is a manual stop, so compose does not restart the container: the other worker
    takes the call over after OWNER_IDLE_MS (1 s here, as in the reliability tests). Run in the
    dialect the stack is in, which spares recreating it; a worker's recovery is the same in both."""
    stack.use(stack.combo or "A")
    assert stack.records is not None
    records = stack.records
    s1 = records.count() + 1
    s2 = s1 + 1
    _, second, audio = two_turns()
    sid = "CA" + secrets.token_hex(16)
    workers = stack.containers("worker", running=True)
    call = asyncio.create_task(
        signed_call(stack, audio, call_sid=sid, hold_after_s=1.0, max_duration_s=40)
    )
    await wait_for(lambda: records.first(s1, "server", "response.done"), timeout=15, interval=0.05)
    await wait_for(
        lambda: records.first(
            s1, "server", "conversation.item.input_audio_transcription.completed"
        ),
        timeout=5,
        interval=0.05,
    )
    owners = [w for w in workers if sid in await docker_async("logs", w)]
    assert len(owners) == 1, f"the call's worker is not one container: {owners}"
    await docker_async("kill", owners[0])
    killed_at = time.monotonic()
    await wait_for(lambda: records.first(s2, "client", "session.update"), timeout=10, interval=0.02)
    new_session_after_s = time.monotonic() - killed_at
    result = await asyncio.wait_for(call, 60)
    await wait_for(lambda: records.closed(s2), timeout=15, interval=0.05)

    update1 = records.first(s1, "client", "session.update")
    update2 = records.first(s2, "client", "session.update")
    assert update1 and update2 and update2["session"] == update1["session"]
    context = records.first(s2, "client", "conversation.item.create")
    assert context and context["item"]["role"] in ("user", "assistant")
    delivered = (len(records.audio(s1, "input.pcm")) + len(records.audio(s2, "input.pcm"))) / (
        FRAME_24K * result.frames_sent
    )
    later_words = similarity(second, pcm24_to_8k(records.audio(s2, "input.pcm")))
    FIGURES["worker_killed"] = {
        "dialect": stack.combo,
        "new_session_after_s": round(new_session_after_s, 2),
        "caller_frames_delivered": round(delivered, 4),
        "later_words_similarity": round(later_words, 3),
        "frames_sent": result.frames_sent,
        "frames_received": result.frames_received,
    }
    assert new_session_after_s <= 3.0
    assert 0.97 <= delivered <= 1.06
    assert later_words >= 0.95
    assert result.frames_received > 0 and not result.closed_by_gateway
    # Back to two workers, as an operator would, for what follows.
    docker("start", owners[0])
    stack.wait_healthy(timeout=60, ids=[owners[0]])


def test_secrets_show_only_where_the_operator_put_them(stack: Stack) -> None:
    """The OpenAI key only in the workers' environment, the Twilio token only in the edge's:
    nowhere else in `docker inspect` of any container, in no image's configuration or history,
    in no container's log."""
    stack.use(stack.combo or "A")
    canaries = {OPENAI_CANARY: "worker", TWILIO_CANARY: "edge"}
    infos = stack.inspect(stack.containers())
    assert infos
    for info in infos:
        service = stack.service_of(info)
        env = info["Config"].pop("Env")
        for canary, owner in canaries.items():
            assert any(canary in e for e in env) == (service == owner), (info["Name"], canary)
            assert canary not in json.dumps(info), f"{canary} outside Env of {info['Name']}"
            logs = subprocess.run(
                ["docker", "logs", info["Id"]], capture_output=True, text=True, check=True
            )
            assert canary not in logs.stdout + logs.stderr, f"{canary} logged by {info['Name']}"
    for image in {info["Image"] for info in infos}:
        shown = docker("image", "inspect", image) + docker("history", "--no-trunc", image)
        for canary in canaries:
            assert canary not in shown, image
        assert "PIP_" + "INDEX_URL" not in shown  # build arguments stay in the build stage


def test_compose_down_stops_every_container_within_its_grace_period_with_exit_0(
    stack: Stack,
) -> None:
    stack.use(stack.combo or "A")
    running = {
        info["Id"]: stack.service_of(info) for info in stack.inspect(stack.containers(running=True))
    }
    assert len(running) == sum(SCALE.values())
    since = time.time()
    stack.compose("down", timeout=120)
    FIGURES["compose_down_s"] = round(time.time() - since, 1)
    project = f"label=com.docker.compose.project={stack.project}"
    lines = docker(
        "events", "--since", f"{since - 1:.3f}", "--until", f"{time.time() + 1:.3f}",
        "--filter", "type=container", "--filter", project, "--format", "{{json .}}",
    ).splitlines()  # fmt: skip
    events = [json.loads(line) for line in lines]
    stopped: dict[str, float] = {}
    for cid, service in running.items():
        mine = [e for e in events if e["id"] == cid]
        kills = [e for e in mine if e["Action"] == "kill"]
        dies = [e for e in mine if e["Action"] == "die"]
        assert kills and dies, f"{service} {cid[:12]}: {[e['Action'] for e in mine]}"
        signals = [e["Actor"]["Attributes"].get("signal") for e in kills]
        assert signals == ["15"], f"{service} needed {signals}"
        assert dies[0]["Actor"]["Attributes"]["exitCode"] == "0", service
        took = (dies[0]["timeNano"] - kills[0]["timeNano"]) / 1e9
        assert took <= GRACE_S.get(service, DEFAULT_GRACE_S), (service, took)
        stopped[service] = max(stopped.get(service, 0.0), round(took, 2))
    FIGURES["stop_after_sigterm_s"] = stopped
    assert not stack.containers(), "compose down left containers"
