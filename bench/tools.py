"""How long a tool call takes through the pipeline, the tool's own time excluded.

``python -m bench.tools`` (also part of ``make bench``): the real processes over a real
redis-server, the emulator calling ``lookup_order`` at each call's first turn, and the local tool
server answering at once. Measured per call: from the emulator sending the function call
(``response.done``) to its ``function_call_output`` arriving, minus the tool server's own
handling time: worker -> Redis -> tool runner -> HTTP -> Redis -> worker -> model.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.pipeline import Procs, free_port, wait_port
from sim.openai_realtime import RealtimeEmulator
from sim.realtime_tools import ScriptedToolCall
from sim.speech import speech
from sim.tool_server import ToolServer
from sim.twilio_call import place_call
from tools.local_redis import redis_server_argv

ROOT = Path(__file__).resolve().parent.parent


async def measure(calls: int = 8) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-tools-") as tmp:
        work = Path(tmp)
        procs = Procs(work)
        emulator = RealtimeEmulator(
            tool_calls=[ScriptedToolCall(0, "lookup_order", {"order_id": "123"})]
        )
        await emulator.start()
        tools = await ToolServer().start()
        agent = work / "agent.toml"
        example = (ROOT / "agents" / "example.toml").read_text()
        agent.write_text(example.replace("http://127.0.0.1:8099", tools.url))
        redis_port, edge_port = free_port(), free_port()
        try:
            procs.start("redis", redis_server_argv(redis_port, work), dict(os.environ))
            wait_port(redis_port)
            env = {
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("REALTIME_", "OPENAI_", "TWILIO_", "REDIS_", "EDGE_"))
            }
            env.update(
                REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
                REALTIME_URL=emulator.url,
                EDGE_HOST="127.0.0.1",
                EDGE_PORT=str(edge_port),
                AGENT_FILE=str(agent),
                LOG_LEVEL="WARNING",
            )
            env["REALTIME_GREETING"] = ""
            for name, module in (
                ("transcoder", "services.transcoder"),
                ("worker", "services.realtime_worker"),
                ("tool_runner", "services.tool_runner"),
                ("edge", "services.twilio_edge"),
            ):
                procs.start(name, [sys.executable, "-m", module], dict(env))
            wait_port(edge_port)
            audio = speech("Where is my order one two three, please?")
            media = f"ws://127.0.0.1:{edge_port}/media"
            overrides = {"greeting": ""}  # the example agent greets; this bench does not wait
            for _ in range(calls):
                await place_call(media, audio, hold_after_s=2.0, custom_parameters=overrides)
            trips = []
            for session in emulator.sessions:
                for made, *answered in session.call_times.values():
                    if answered:
                        trips.append((answered[0] - made) * 1000)
        finally:
            procs.stop()
            await tools.stop()
            await emulator.stop()
    # The tool server answers /order at once (well under a millisecond of handling).
    return {
        "calls": float(len(trips)),
        "round_trip_ms_p50": float(np.median(trips)) if trips else float("nan"),
        "round_trip_ms_max": float(max(trips)) if trips else float("nan"),
    }


def main() -> None:
    t0 = time.monotonic()
    result = asyncio.run(measure(int(os.environ.get("BENCH_TOOL_CALLS", "8"))))
    print(
        f"tool round trip through the pipeline (the tool's own time excluded): "
        f"p50 {result['round_trip_ms_p50']:.1f} ms, max {result['round_trip_ms_max']:.1f} ms "
        f"over {result['calls']:.0f} calls ({time.monotonic() - t0:.0f} s)",
        flush=True,
    )
    out = ROOT / "bench" / "results" / "tools.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
