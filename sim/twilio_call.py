"""A Twilio call simulator: places a call on a Media Streams endpoint the way Twilio does.

This module is the asyncio shell; the call's logic lives in pure cores:

* :mod:`sim.twilio_options`: what a call is told to do (:class:`CallOptions`: a
  :class:`CallScript` of the caller's behaviour, a :class:`CallIdentity`, a :class:`Signing`);
* :mod:`sim.twiml`: the TwiML documents the call follows (:class:`~sim.twiml.CallFlow`): the
  voice webhook's ``<Connect><Stream>``, then each ``<Connect action>``'s TwiML (another stream,
  a ``<Dial>``, a ``<Hangup/>``);
* :mod:`sim.twilio_script`: one Media Stream (:class:`~sim.twilio_script.SimulatedStream`):
  ``connected``, ``start``, 20 ms mu-law frames, ``dtmf``, the hang-up rule, ``stop``, and every
  gateway message checked as Twilio checks it and played out by
  :class:`~sim.twilio_playback.Playback`, Twilio's outbound buffer;
* :mod:`sim.twilio_wire`: the messages and the simulator's own G.711 codec.

The shell requests the webhooks and sends the status callbacks (:mod:`sim.twilio_http`, signed
with ``X-Twilio-Signature`` when given the auth token), opens each stream (the handshake signed
over the ``wss://`` URL, no parameters) and paces frames in real time on the monotonic clock
(frame k at t0 + k x 20 ms, so there is no drift).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import time
import wave
from typing import TypedDict, Unpack
from urllib.parse import urlsplit

import numpy as np
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from shared.stream_token import TOKEN_PARAMETER, derive_key, mint
from sim.speech import resample, speech
from sim.twilio_http import StatusCallbacks, fetch_twiml, on_host, signature
from sim.twilio_options import BargeIn, CallIdentity, CallOptions, CallScript, Signing
from sim.twilio_playback import Playback, ReplyChunk
from sim.twilio_script import Action, CallResult, HangUp, SimulatedStream
from sim.twilio_wire import (
    DTMF_DIGITS,
    FRAME_BYTES,
    SILENCE,
    GatewayClear,
    GatewayMark,
    GatewayMedia,
    Violation,
    new_sid,
    parse_gateway_message,
    ulaw_decode,
    ulaw_encode,
)
from sim.twiml import (
    CallFlow,
    ConnectStream,
    FetchTwiml,
    OpenStream,
    Transfer,
    WebhookError,
    parse_connect_stream,
)

__all__ = [
    "FRAME_BYTES",
    "SILENCE",
    "BargeIn",
    "CallIdentity",
    "CallOptions",
    "CallResult",
    "CallScript",
    "GatewayClear",
    "GatewayMark",
    "GatewayMedia",
    "Playback",
    "ReplyChunk",
    "Signing",
    "Violation",
    "WebhookError",
    "fetch_twiml",
    "new_sid",
    "parse_connect_stream",
    "parse_gateway_message",
    "place_call",
    "run_call",
    "ulaw_decode",
    "ulaw_encode",
]

_WS_USER_AGENT = "Twilio.TmeWs/1.0"


# --- one stream ---------------------------------------------------------------------------------


async def _drive(
    ws: ClientConnection,
    stream: SimulatedStream,
    status: StatusCallbacks,
    hang_up: asyncio.Event | None = None,
) -> CallResult:
    """Feed the core the socket's messages and the frame clock; do what it says. ``hang_up``,
    when set, ends the call from Twilio's side at the next frame."""

    def now() -> float:
        return time.monotonic() - t0

    later: asyncio.Queue[tuple[float, str]] = asyncio.Queue()  # (due, text), in order
    last_due = 0.0

    async def perform(actions: list[Action]) -> bool:
        """Send what the core returned; False once it hangs up."""
        nonlocal last_due
        for action in actions:
            if isinstance(action, HangUp):
                return False
            if action.delay_s > 0:
                last_due = max(last_due, time.monotonic() + action.delay_s)
                later.put_nowait((last_due, action.text))
            else:
                await ws.send(action.text)
        return True

    async def send_later() -> None:
        try:
            while True:
                due, text = await later.get()
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # a network's delay, not a wait for an event
                await ws.send(text)
        except ConnectionClosed:
            pass  # the gateway went away: the pacing loop notices and records it

    async def receive() -> None:
        try:
            async for raw in ws:
                await perform(stream.receive(raw, now()))
        except ConnectionClosed:
            pass  # the gateway went away: the pacing loop notices and records it

    await perform(stream.start(time.time()))
    status.post("stream-started")
    t0 = time.monotonic()
    receiver = asyncio.create_task(receive())
    delayed = asyncio.create_task(send_later())
    try:
        while not receiver.done():
            delay = t0 + stream.next_frame_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # real-time pacing, not a wait for an event
            if hang_up is not None and hang_up.is_set() and not receiver.done():
                await perform(stream.hang_up())
                break
            if receiver.done() or not await perform(stream.tick(now())):
                break
    except ConnectionClosed:
        pass
    finally:
        if receiver.done() or ws.close_code is not None:
            stream.gateway_closed(ws.close_code)
        result = stream.finish(now())
        delayed.cancel()
        await ws.close()
        receiver.cancel()
        (outcome,) = await asyncio.gather(receiver, return_exceptions=True)
        if isinstance(outcome, Exception):
            raise outcome  # a bug in the simulator, not something the gateway did
    return result


async def _run_stream(
    dial_url: str,
    stream: SimulatedStream,
    auth_token: str | None,
    extra_headers: dict[str, str],
    status: StatusCallbacks,
    hang_up: asyncio.Event | None = None,
) -> CallResult:
    """Open the stream on ``dial_url`` (signed over the core's ``stream_url``) and run it.

    Raises OSError or InvalidHandshake when it cannot be opened (after Twilio's stream-error).
    """
    headers = dict(extra_headers)
    if auth_token:
        headers["X-Twilio-Signature"] = signature(auth_token, stream.result.stream_url, {})
    try:
        async with websockets.connect(
            dial_url,
            additional_headers=headers,
            user_agent_header=_WS_USER_AGENT,
            compression=None,  # Twilio does not negotiate permessage-deflate
            proxy=None,
            max_size=1 << 22,
        ) as ws:
            result = await _drive(ws, stream, status, hang_up)
    except (OSError, InvalidHandshake) as exc:
        status.post("stream-error", f"the stream could not connect: {exc}")
        await status.sent()
        raise
    status.post("stream-stopped")
    await status.sent()
    result.status_callbacks = status.answered
    return result


# --- the call -----------------------------------------------------------------------------------


async def run_call(
    media_url: str, options: CallOptions, hang_up: asyncio.Event | None = None
) -> CallResult:
    """Place one call and return what happened on its first stream.

    ``media_url`` is the socket actually dialled for the first stream; later ones (a
    ``<Connect action>``'s TwiML connecting again) dial their TwiML URL's path on its host, as
    action requests go to their path on the webhook's host. The TwiML's ``<Parameter>``s become
    ``customParameters`` (the identity's ``custom_parameters`` add to and override them).
    What follows the first stream is in its result's ``action_requests``, ``next_streams`` and
    ``dialed``; the caller follows ``options.next_script`` (else the same script) on every
    later stream. Raises WebhookError when the
    voice webhook fails, OSError or InvalidHandshake when a stream cannot be opened; a failing
    action ends the call there, as Twilio hangs up then.
    """
    identity, signing = options.identity, options.signing
    # The flow knows URLs as Twilio does (the public ones, which are signed); each request
    # goes to its path on the webhook's host here.
    flow = CallFlow(identity, signing.twiml_signed_url or signing.twiml_url)
    if not signing.twiml_url:
        flow.play([ConnectStream(signing.signed_url or media_url)])
    first: CallResult | None = None
    while True:
        step = flow.next_step()
        if isinstance(step, FetchTwiml):
            assert signing.twiml_url  # only a fetched document names an action
            dial = signing.twiml_url if first is None else on_host(step.url, signing.twiml_url)
            try:
                twiml = await fetch_twiml(
                    dial, step.form, signing.auth_token, step.url, method=step.method
                )
                flow.answered(twiml)
            except WebhookError as exc:
                if first is None:
                    raise  # the voice webhook: the call is never placed
                first.action_requests.append((step.url, exc.status))
                break  # Twilio hangs up on a failing action
            if first is not None:
                first.action_requests.append((step.url, 200))
        elif isinstance(step, OpenStream):
            stream_identity = identity
            if first is not None:  # each stream of a call has a streamSid of its own
                stream_identity = dataclasses.replace(identity, stream_sid=new_sid("MZ"))
            verb = step.verb
            if first is None:
                signed, dial = signing.signed_url or verb.url, media_url
            else:
                signed, dial = verb.url, on_host(verb.url, media_url)
            params = verb.parameters | dict(identity.custom_parameters)
            script = options.script if first is None else options.next_script or options.script
            stream = SimulatedStream(script, stream_identity, signed, params)
            status = StatusCallbacks(
                verb.status_callback, signing.twiml_url, signing.auth_token, stream_identity
            )
            result = await _run_stream(
                dial, stream, signing.auth_token, dict(signing.extra_headers), status, hang_up
            )
            flow.stream_ended(result.closed_by_gateway)
            if first is None:
                first = result
            else:
                first.next_streams.append(result)
        elif first is None:
            raise WebhookError(f"the TwiML connected no stream ({step})")
        else:
            if isinstance(step, Transfer):
                first.dialed = step.number
            break
    return first


class CallKeywords(TypedDict, total=False):
    """:func:`place_call`'s flat keywords: each is the field of that name of
    :class:`CallIdentity`, :class:`Signing` or :class:`CallScript`; None means its default."""

    call_sid: str | None
    stream_sid: str | None
    account_sid: str | None
    custom_parameters: dict[str, str] | None
    twiml_url: str | None
    auth_token: str | None
    extra_headers: dict[str, str] | None
    signed_url: str | None
    twiml_signed_url: str | None
    hold_after_s: float
    barge_in: BargeIn | None
    max_duration_s: float
    wait_for_reply: bool
    dtmf: list[tuple[float, str]] | None
    stop: bool
    mark_jitter_ms: float
    mark_jitter_seed: int
    next_script: CallScript | None  # what the caller does on later streams
    hang_up: asyncio.Event | None  # not a script's: a live signal to end the call (REST stand-in)


def call_options(caller_audio: np.ndarray | bytes, **kw: Unpack[CallKeywords]) -> CallOptions:
    """The :class:`CallOptions` that :func:`place_call`'s flat keywords stand for."""
    ids = CallIdentity()
    script = CallScript(caller_audio, dtmf=tuple(kw.get("dtmf") or ()))
    return CallOptions(
        dataclasses.replace(
            script,
            barge_in=kw.get("barge_in"),
            hold_after_s=kw.get("hold_after_s", script.hold_after_s),
            max_duration_s=kw.get("max_duration_s", script.max_duration_s),
            wait_for_reply=kw.get("wait_for_reply", script.wait_for_reply),
            stop=kw.get("stop", script.stop),
            mark_jitter_ms=kw.get("mark_jitter_ms", script.mark_jitter_ms),
            mark_jitter_seed=kw.get("mark_jitter_seed", script.mark_jitter_seed),
        ),
        CallIdentity(
            call_sid=kw.get("call_sid") or ids.call_sid,
            stream_sid=kw.get("stream_sid") or ids.stream_sid,
            account_sid=kw.get("account_sid") or ids.account_sid,
            custom_parameters=kw.get("custom_parameters") or {},
        ),
        Signing(
            auth_token=kw.get("auth_token"),
            twiml_url=kw.get("twiml_url"),
            twiml_signed_url=kw.get("twiml_signed_url"),
            signed_url=kw.get("signed_url"),
            extra_headers=kw.get("extra_headers") or {},
        ),
        kw.get("next_script"),
    )


async def place_call(
    media_url: str, caller_audio: np.ndarray | bytes, **kw: Unpack[CallKeywords]
) -> CallResult:
    """:func:`run_call` with flat keywords (:class:`CallKeywords`), as the tests place calls."""
    hang_up = kw.pop("hang_up", None)
    return await run_call(media_url, call_options(caller_audio, **kw), hang_up=hang_up)


# --- command line -------------------------------------------------------------------------------


def write_wav(path: str, ulaw: bytes) -> None:
    """Mu-law audio to an 8 kHz 16-bit mono WAV."""
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(ulaw_decode(ulaw).astype("<i2").tobytes())


def read_wav(path: str) -> np.ndarray:
    """A 16-bit WAV as int16 at 8 kHz (first channel)."""
    with wave.open(path) as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV files are supported")
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")[:: w.getnchannels()]
        rate = w.getframerate()
    return resample(data.astype(np.int16), rate, 8000)


def _report(result: CallResult, out: str) -> None:
    delay = f"{result.reply_delay_ms:.0f} ms" if result.reply_delay_ms is not None else "no reply"
    print(f"call {result.call_sid} ({result.duration_s:.1f} s)")
    print(f"end of caller speech -> first reply audio: {delay}")
    print(
        f"frames sent {result.frames_sent} (speech {result.speech_frames}), "
        f"received {result.frames_received}"
    )
    print(
        f"marks received {len(result.marks_received)}, returned {len(result.marks_returned)}; "
        f"clears {len(result.clears)}"
    )
    if result.barge_in_at is not None:
        clear = result.clear_after_barge_ms
        print(
            f"barge-in at {result.barge_in_at:.2f} s: "
            f"clear {'never came' if clear is None else f'after {clear:.0f} ms'}, "
            f"reply talked over {result.played_after_barge_ms or 0:.0f} ms"
        )
    if result.closed_by_gateway:
        print(f"the gateway closed the stream (code {result.close_code})")
    for url, status in result.action_requests:
        print(f"<Connect action> {url} answered {status or 'nothing'}")
    for later in result.next_streams:
        print(f"then stream {later.stream_sid} ({later.duration_s:.1f} s)")
    if result.dialed:
        print(f"then <Dial> {result.dialed}")
    for violation in result.violations[:10]:
        print(f"protocol violation: {violation}")
    print(f"heard audio written to {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Place a simulated Twilio call.")
    parser.add_argument("--url", help="Media Streams WebSocket URL (ws://host:port/media)")
    parser.add_argument("--twiml-url", help="voice webhook to POST first (takes its TwiML)")
    parser.add_argument("--say", help="what the caller says")
    parser.add_argument("--wav", help="a 16-bit WAV file the caller plays")
    parser.add_argument("--auth-token", default=os.environ.get("TWILIO_AUTH_TOKEN") or None)
    parser.add_argument("--public-url", help="the gateway's public base URL (what is signed)")
    parser.add_argument("--out", default="heard.wav")
    parser.add_argument("--hold", type=float, default=2.0, help="seconds of quiet before hang-up")
    parser.add_argument("--max-duration", type=float, default=30.0)
    parser.add_argument("--barge-after", type=float, help="interrupt the reply after SECONDS")
    parser.add_argument("--param", action="append", default=[], help="k=v custom parameter")
    parser.add_argument("--dtmf", action="append", default=[], help="SECONDS:DIGIT")
    parser.add_argument("--demo", action="store_true", help="call the local stack (EDGE_PORT)")
    args = parser.parse_args(argv)
    if args.demo:
        port = os.environ.get("EDGE_PORT", "8080")
        args.url = args.url or f"ws://127.0.0.1:{port}/media"
        args.twiml_url = args.twiml_url or f"http://127.0.0.1:{port}/twiml"
        args.public_url = args.public_url or os.environ.get("PUBLIC_URL") or None
        args.say = args.say or "Hello! I am calling to ask what your opening hours are this week."
    if not args.url or not (args.say or args.wav):
        parser.error("--url and one of --say/--wav are required (or --demo)")
    try:
        params = dict(p.split("=", 1) for p in args.param)
        dtmf = [(float(t), d) for t, _, d in (x.partition(":") for x in args.dtmf)]
    except ValueError:
        parser.error("--param takes k=v and --dtmf SECONDS:DIGIT")
    if any(digit not in DTMF_DIGITS for _, digit in dtmf):
        parser.error("--dtmf takes SECONDS:DIGIT, one of 0-9, * or #")
    public = args.public_url.rstrip("/") if args.public_url else None
    twiml_signed = f"{public}/twiml" if public and args.twiml_url else None
    signed = None
    if public and not args.twiml_url:
        scheme = "ws" if public.startswith(("http:", "ws:")) else "wss"
        signed = f"{scheme}://{urlsplit(public).netloc}{urlsplit(public).path}/media"
    try:
        audio = read_wav(args.wav) if args.wav else speech(args.say)
    except (OSError, EOFError, ValueError, wave.Error) as exc:
        print(f"twilio_call: cannot read {args.wav}: {exc}", file=sys.stderr)
        return 2
    barge = None
    if args.barge_after is not None:
        barge = BargeIn(args.barge_after, speech("Wait, sorry, let me interrupt you there."))
    identity = CallIdentity(custom_parameters=params)
    if args.auth_token and not args.twiml_url:
        # Straight to the socket, as a TwiML server of the user's own would connect it: with
        # signatures on, the gateway takes the stream only under the token such a server mints.
        key = derive_key(os.environ.get("STREAM_TOKEN_SECRET") or args.auth_token)
        token = mint(key, identity.call_sid, params, int(time.time()))
        identity = dataclasses.replace(
            identity, custom_parameters=params | {TOKEN_PARAMETER: token}
        )
    options = CallOptions(
        CallScript(
            audio,
            dtmf=tuple(dtmf),
            barge_in=barge,
            hold_after_s=args.hold,
            max_duration_s=args.max_duration,
        ),
        identity,
        Signing(
            auth_token=args.auth_token,
            twiml_url=args.twiml_url,
            twiml_signed_url=twiml_signed,
            signed_url=signed,
        ),
    )
    try:
        result = asyncio.run(run_call(args.url, options))
    except (OSError, InvalidHandshake, WebhookError, TimeoutError) as exc:
        print(f"twilio_call: cannot place the call on {args.url}: {exc}", file=sys.stderr)
        return 1
    write_wav(args.out, result.heard)
    _report(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
