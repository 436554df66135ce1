"""The baseline for the benchmarks: a minimal single-process Twilio <-> Realtime bridge.

This is the architecture of the public Twilio + Realtime samples: one coroutine pair per call,
transcoding in place, no Redis, no other process. It uses the project's own audio core and
dialect layer so that the comparison measures the pipeline's cost (three processes and Redis
hops), not a different codec. It records the same hop latencies under the same metric names, and
is not a product: no barge-in, no recovery, no limits.

``python -m bench.direct_bridge --port N --realtime-url ws://127.0.0.1:M/v1/realtime``
"""

from __future__ import annotations

import argparse
import asyncio
import http
import json
import time
from urllib.parse import urlsplit

import numpy as np
import websockets
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from services.twilio_edge.http import respond
from shared import twilio_media as tw
from shared.audio import StreamResampler, mulaw_decode, mulaw_encode
from shared.realtime_dialect import AudioDelta, RealtimeDialect, SessionCreated
from shared.runtime.observability import FRAMES, HOP_LATENCY, metrics_text
from shared.runtime.settings import load_settings


class DirectBridge:
    def __init__(self, realtime_url: str) -> None:
        self.settings = load_settings(realtime_url=realtime_url)
        self.config = self.settings.session_config()
        self.hop_in = HOP_LATENCY.labels("edge_to_openai")
        self.hop_out = HOP_LATENCY.labels("openai_to_edge")

    async def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == "/metrics":
            return respond(http.HTTPStatus.OK, metrics_text(), "text/plain; version=0.0.4")
        if path == "/healthz":
            return respond(http.HTTPStatus.OK, "ok\n")
        return None

    async def handle(self, twilio: ServerConnection) -> None:
        session = tw.TwilioMediaSession()
        dialect = RealtimeDialect("audio", False, self.config)
        s = self.settings
        request = dialect.connect_request(s.realtime_url, s.realtime_model, "sk-bench")
        async with websockets.connect(
            request.url, additional_headers=request.headers, max_size=16 * 1024 * 1024
        ) as openai:
            while not isinstance(dialect.parse(await openai.recv()), SessionCreated):
                pass
            await openai.send(json.dumps(dialect.session_update()))
            up = StreamResampler(8000, 24000)
            down = StreamResampler(24000, 8000)
            stream_sid = ""

            async def caller_to_model() -> None:
                nonlocal stream_sid
                async for message in twilio:
                    t0 = time.perf_counter()
                    try:
                        events = session.receive(message)
                    except tw.TwilioProtocolError:
                        continue
                    for event in events:
                        if isinstance(event, tw.StreamStarted):
                            stream_sid = event.stream_sid
                        elif isinstance(event, tw.InboundMedia):
                            pcm = up.process(mulaw_decode(event.payload)).tobytes()
                            await openai.send(dialect.append_audio(pcm))
                            self.hop_in.observe(time.perf_counter() - t0)
                            FRAMES.labels("in").inc()
                        elif isinstance(event, tw.StreamStopped):
                            return

            async def model_to_caller() -> None:
                async for message in openai:
                    t0 = time.perf_counter()
                    event = dialect.parse(message)
                    if isinstance(event, AudioDelta) and stream_sid:
                        pcm8k = down.process(np.frombuffer(event.audio, dtype=np.int16))
                        await twilio.send(tw.media_message(stream_sid, mulaw_encode(pcm8k)))
                        self.hop_out.observe(time.perf_counter() - t0)
                        FRAMES.labels("out").inc()

            tasks = [asyncio.create_task(caller_to_model()), asyncio.create_task(model_to_caller())]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            except ConnectionClosed:
                pass
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)


async def main_async(host: str, port: int, realtime_url: str) -> None:
    bridge = DirectBridge(realtime_url)
    async with serve(
        bridge.handle, host, port, process_request=bridge.process_request, max_size=1 << 20
    ):
        await asyncio.Future()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--realtime-url", required=True)
    args = parser.parse_args()
    try:
        asyncio.run(main_async(args.host, args.port, args.realtime_url))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
