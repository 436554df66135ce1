"""The console and the recorder as commands: refused without their settings, started and stopped
like every service; the container files name them; old recordings are removed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import fakeredis
import pytest

from services.recorder.service import Recorder
from shared.runtime.settings import load_settings
from tests.conftest import ROOT, RedisServer, free_port, wait_for_line
from tests.stack import process_env


def _run(module: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CONSOLE_", "RECORDINGS_"))}
    return subprocess.run(
        [sys.executable, "-m", module],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_console_refuses_to_start_without_a_token() -> None:
    done = _run("services.console")
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "CONSOLE_TOKEN is not set" in line


def test_the_recorder_refuses_to_start_without_a_folder() -> None:
    done = _run("services.recorder")
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert "RECORDINGS_DIR is not set" in line


@pytest.mark.redis_server
def test_the_console_starts_serves_and_stops_on_sigterm(redis_server: RedisServer) -> None:
    port = free_port()
    env = process_env(
        redis_server.url,
        free_port(),
        9,
        CONSOLE_TOKEN="canary-console-token-77",
        CONSOLE_PORT=str(port),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.console"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        line = wait_for_line(proc, b"console listening", timeout=30)
        assert json.loads(line)["service"] == "console"  # one JSON object a line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as r:  # noqa: S310
            assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        rest = proc.stdout.read() if proc.stdout else b""
        assert b"canary-console-token-77" not in rest
    finally:
        if proc.poll() is None:
            proc.kill()


def test_compose_and_supervisord_run_the_console_and_the_recorder() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    assert compose["console"]["command"] == ["python", "-m", "services.console"]
    assert compose["recorder"]["profiles"] == ["recordings"]  # off by default
    conf = (ROOT / "supervisord.conf").read_text()
    assert "program console 0" in conf and "program recorder 0" in conf


def test_old_recordings_are_removed(tmp_path: Path) -> None:
    settings = load_settings(recordings_dir=str(tmp_path), recordings_retention_days=2)
    recorder = Recorder(settings, fakeredis.FakeAsyncRedis())
    old, new = tmp_path / "CAold.wav", tmp_path / "CAnew.wav"
    for path in (old, new):
        path.write_bytes(b"RIFF")
    three_days_ago = time.time() - 3 * 86400
    os.utime(old, (three_days_ago, three_days_ago))
    assert recorder.remove_old() == 1
    assert not old.exists() and new.exists()
