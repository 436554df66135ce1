"""Start the whole stack on one box under supervisord (``make run``), and each of its programs.

``python -m services.launch stack`` checks the settings, says where to point Twilio and whether
calls go to OpenAI or to the local emulator, and runs ``supervisord -n -c supervisord.conf``.

``python -m services.launch program NAME N`` is what ``supervisord.conf`` runs for each program
(so that plain ``supervisord -c supervisord.conf`` behaves exactly like ``make run``). It decides
what supervisord's own configuration cannot express:

* ``redis``: a local ``redis-server`` only when ``REDIS_URL`` points at this machine and nothing
  answers there yet; otherwise it exits 0 and supervisord leaves it stopped.
* ``emulator``: the OpenAI Realtime emulator only when ``OPENAI_API_KEY`` is unset. Then, unless
  ``AGENT_FILE`` is set, the stack is the local demo: the example agent (``agents/example.toml``),
  the emulator told to call its ``lookup_order`` tool at the caller's first turn, and
* ``tool_server``: the simulators' tool server on 127.0.0.1:8099, for that demo only.
* ``transcoder N`` / ``worker N`` / ``tool_runner N``: instance N of that stage when N is below
  ``TRANSCODER_PROCESSES`` / ``WORKER_PROCESSES`` / ``TOOL_RUNNER_PROCESSES`` (default 2, 2 and
  1, at most 8), with a stable ``CONSUMER_NAME`` (a restarted instance takes its own calls back
  at once) and its own ``METRICS_PORT`` (``METRICS_PORT_BASE`` + 0, 10 or 30, + N; base 9100).
* ``edge``: the Twilio edge, its ``METRICS_PORT`` ``METRICS_PORT_BASE`` + 20.

Every metrics port listens on ``METRICS_HOST``, 127.0.0.1 unless set (the settings' default): a
local stack's counters and call figures are not for the network. Set ``METRICS_HOST=0.0.0.0``
for a Prometheus on another machine; the container image does (its probes and scrapers come
from outside the container).
* ``console``: the operators' console (``make run`` makes up a ``CONSOLE_TOKEN`` when none is set
  and prints the console's address with it).
* ``recorder``: the recorder, only when ``RECORDINGS_DIR`` is set.

This module imports no service: it only prepares the environment and ``exec``s.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from shared.runtime.settings import Settings, settings_or_exit

ROOT = Path(__file__).resolve().parent.parent
MAX_PROCESSES = 8
DEFAULT_PROCESSES = 2
DEFAULT_EMULATOR_PORT = 8765
_LOCAL = {"127.0.0.1", "localhost", "::1"}
# Each scaled stage: its module, its metrics port offset (METRICS_PORT_BASE + offset + N) and
# how many instances run by default. The edge's metrics port is METRICS_PORT_BASE + 20.
_STAGES = {
    "transcoder": ("services.transcoder", 0, DEFAULT_PROCESSES),
    "worker": ("services.realtime_worker", 10, DEFAULT_PROCESSES),
    "tool_runner": ("services.tool_runner", 30, 1),
}
EDGE_METRICS_OFFSET = 20
DEMO_TOOL_CALL = '0:lookup_order:{"order_id": "123"}'  # every call's first turn


def _env_int(name: str, default: int, low: int, high: int) -> int:
    raw = os.environ.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        print(
            f"configuration error: {name}={raw!r} is not allowed: must be {low}..{high}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return value


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def default_environment(env: dict[str, str]) -> dict[str, str]:
    """The environment every program gets: the emulator's URL when there is no OpenAI key."""
    env = dict(env)
    if not env.get("OPENAI_API_KEY") and not env.get("REALTIME_URL"):
        port = env.get("EMULATOR_PORT", str(DEFAULT_EMULATOR_PORT))
        # The emulator serves both APIs; GPT-Live (REALTIME_SCHEMA=live) at its own path.
        live = env.get("REALTIME_SCHEMA", "").strip().lower() == "live"
        path = "/v1/live/sessions" if live else "/v1/realtime"
        env["REALTIME_URL"] = f"ws://127.0.0.1:{port}{path}"
        if not env.get("AGENT_FILE"):
            # The local demo: the example agent, its tools served by the local tool server,
            # and an emulator told to call lookup_order at the caller's first turn.
            env["AGENT_FILE"] = str(ROOT / "agents" / "example.toml")
            env["DEMO_TOOLS"] = "1"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _exec(argv: list[str], env: dict[str, str]) -> None:
    sys.stdout.flush()
    os.execvpe(argv[0], argv, env)


def _redis(settings: Settings, env: dict[str, str], number: int) -> None:
    url = urlsplit(settings.redis_url)
    host, port = url.hostname or "127.0.0.1", url.port or 6379
    if host not in _LOCAL:
        print(f"redis: REDIS_URL is remote ({host}); not starting a local redis-server")
        return
    if _answers(host, port):
        print(f"redis: a Redis already answers on {host}:{port}; using it")
        return
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis: redis-server is not installed (make run installs it)", file=sys.stderr)
        raise SystemExit(2)
    data = ROOT / "run" / "redis"
    data.mkdir(parents=True, exist_ok=True)
    _exec(
        [
            binary,
            "--bind",
            host,
            "--port",
            str(port),
            "--dir",
            str(data),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ],
        env,
    )


def _emulator(settings: Settings, env: dict[str, str], number: int) -> None:
    if os.environ.get("OPENAI_API_KEY"):
        print("emulator: OPENAI_API_KEY is set; calls go to OpenAI, no emulator")
        return
    url = urlsplit(env["REALTIME_URL"])
    if url.hostname not in _LOCAL:
        print(f"emulator: REALTIME_URL is remote ({url.hostname}); not starting the emulator")
        return
    _exec(
        [
            sys.executable,
            "-m",
            "sim.openai_realtime",
            "--host",
            "127.0.0.1",
            "--port",
            str(url.port or DEFAULT_EMULATOR_PORT),
            *(["--tool-call", DEMO_TOOL_CALL] if env.get("DEMO_TOOLS") else []),
        ],
        env,
    )


def _tool_server(settings: Settings, env: dict[str, str], number: int) -> None:
    if not env.get("DEMO_TOOLS"):
        print("tool_server: not the local demo (AGENT_FILE or OPENAI_API_KEY is set)")
        return
    argv = [sys.executable, "-m", "sim.tool_server", "--host", "127.0.0.1", "--port", "8099"]
    _exec(argv, env)


def _edge(settings: Settings, env: dict[str, str], number: int) -> None:
    base = _env_int("METRICS_PORT_BASE", 9100, 1024, 65000)
    env.setdefault("METRICS_PORT", str(base + EDGE_METRICS_OFFSET))
    _exec([sys.executable, "-m", "services.twilio_edge"], env)


def _console(settings: Settings, env: dict[str, str], number: int) -> None:
    _exec([sys.executable, "-m", "services.console"], env)


def _recorder(settings: Settings, env: dict[str, str], number: int) -> None:
    if not settings.recordings_dir:
        print("recorder: RECORDINGS_DIR is not set; recording is off")
        return
    env.setdefault("CONSUMER_NAME", f"{socket.gethostname()}-recorder-{number}")
    _exec([sys.executable, "-m", "services.recorder"], env)


def _stage(name: str, env: dict[str, str], number: int) -> None:
    """A stage run as ``<NAME>_PROCESSES`` programs: this one, unless it is not needed."""
    module, offset, default = _STAGES[name]
    count = _env_int(f"{name.upper()}_PROCESSES", default, 0, MAX_PROCESSES)
    if number >= count:
        print(f"{name} {number}: not needed ({name.upper()}_PROCESSES={count})")
        return
    base = _env_int("METRICS_PORT_BASE", 9100, 1024, 65000)
    env.setdefault("CONSUMER_NAME", f"{socket.gethostname()}-{name}-{number}")
    env["METRICS_PORT"] = str(base + offset + number)
    _exec([sys.executable, "-m", module], env)


_PROGRAMS: dict[str, Callable[[Settings, dict[str, str], int], None]] = {
    "redis": _redis,
    "emulator": _emulator,
    "tool_server": _tool_server,
    "edge": _edge,
    "console": _console,
    "recorder": _recorder,
}


def program(name: str, number: int) -> None:
    """Run supervisord's program ``name`` (instance ``number``) in this process (exec), or say
    why it is not needed and return."""
    env = default_environment(dict(os.environ))
    os.environ.update(env)
    settings = settings_or_exit(name)
    if name in _PROGRAMS:
        _PROGRAMS[name](settings, env, number)
    elif name in _STAGES:
        _stage(name, env, number)
    else:
        print(f"unknown program {name!r}", file=sys.stderr)
        raise SystemExit(2)


def stack() -> None:
    env = default_environment(dict(os.environ))
    if not env.get("CONSOLE_TOKEN"):
        # The console refuses to start without one; a local run gets one made up, printed below.
        env["CONSOLE_TOKEN"] = secrets.token_urlsafe(24)
    os.environ.update(env)
    settings = settings_or_exit("make run", checks=(Settings.unsigned_edge,))
    (ROOT / "run").mkdir(exist_ok=True)
    target = "OpenAI" if settings.openai_api_key else "the local OpenAI Realtime emulator"
    print(f"voice gateway: calls go to {target} at {settings.realtime_url}")
    print(
        f"voice gateway: point your Twilio number's voice webhook at {settings.public_twiml_url()}"
    )
    if not settings.public_url:
        print("voice gateway: PUBLIC_URL is not set; set it to the https address Twilio reaches")
    print(
        f"voice gateway: Redis at {urlsplit(settings.redis_url).hostname}; "
        f"try a call with: make demo"
    )
    host = "127.0.0.1" if settings.console_host in ("0.0.0.0", "") else settings.console_host
    print(
        f"voice gateway: console at http://{host}:{settings.console_port}/"
        f"#token={env['CONSOLE_TOKEN']}"
    )
    if settings.recordings_dir:
        print(f"voice gateway: recording every call to {settings.recordings_dir}")
    supervisord = (
        shutil.which("supervisord", path=str(Path(sys.executable).parent)) or "supervisord"
    )
    _exec([supervisord, "-n", "-c", str(_configuration())], env)


def _configuration() -> Path:
    """supervisord.conf with each stage's ``numprocs`` set to its ``*_PROCESSES``, so that
    exactly the configured instances start (instead of eight each, most of them exiting "not
    needed"). The copy sits beside the original, so its ``%(here)s`` is the same folder; the
    original runs the default two of each when started by hand."""
    text = (ROOT / "supervisord.conf").read_text()
    for name, (_, _, default) in _STAGES.items():
        count = _env_int(f"{name.upper()}_PROCESSES", default, 0, MAX_PROCESSES)
        section = f"[program:{name}]"
        head, found, rest = text.partition(section)
        if not found:
            continue
        body, sep, tail = rest.partition("\n[")
        # supervisord needs one at least; a stage set to 0 has its one say "not needed".
        body = re.sub(r"(?m)^numprocs=\d+$", f"numprocs={max(count, 1)}", body)
        text = head + found + body + sep + tail
    path = ROOT / ".supervisord.conf"
    path.write_text(text)
    return path


def main(argv: list[str]) -> None:
    if argv[:1] == ["stack"]:
        stack()
    elif len(argv) == 3 and argv[0] == "program" and argv[2].isdigit():
        program(argv[1], int(argv[2]))
    else:
        print("usage: python -m services.launch stack | program NAME N", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main(sys.argv[1:])
