"""A silent caller: the agent file's idle keys, the core's count of timeouts (the model asks up
to idle_prompts times, then says goodbye and the call ends once it was heard), the emulator's
idle clock, and a call hung up for idleness end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis

from shared.agent import AgentFileError, parse_agent
from shared.call_actions import EndCall, SendToModel, SetDisposition, WriteCommand
from shared.conversation import CallConversation
from shared.idle import GOODBYE, IdleWatch
from shared.realtime_dialect import Combo, RealtimeDialect, SessionConfig
from shared.streams import HangUp
from sim.realtime_idle import IdleClock
from tests.conftest import RedisServer, wait_for

IDLE = {"type": "server_vad", "idle_timeout_ms": 5000}


def test_the_idle_keys() -> None:
    turn = parse_agent({"turn_detection": {**IDLE, "idle_prompts": 2, "idle_action": "hang_up"}})
    td = turn.turn_detection
    assert td is not None and td.idle_prompts == 2 and td.idle_action == "hang_up"
    assert td.knobs == {"idle_timeout_ms": 5000}  # the gateway's own keys are never sent
    default = parse_agent({"turn_detection": {**IDLE, "idle_action": "hang_up"}}).turn_detection
    assert default is not None and default.idle_prompts == 1


@pytest.mark.parametrize(
    ("turn", "needle"),
    [
        ({**IDLE, "idle_action": "transfer"}, "idle_action: must be hang_up"),
        ({**IDLE, "idle_prompts": 2}, 'idle_prompts: needs idle_action = "hang_up"'),
        ({**IDLE, "idle_prompts": 11, "idle_action": "hang_up"}, "from 0 to 10"),
        ({**IDLE, "idle_prompts": True, "idle_action": "hang_up"}, "from 0 to 10"),
        ({"type": "server_vad", "idle_action": "hang_up"}, "needs idle_timeout_ms"),
        ({"type": "semantic_vad", "idle_timeout_ms": 5000}, "not a knob of semantic_vad"),
    ],
)
def test_bad_idle_keys(turn: dict[str, Any], needle: str) -> None:
    with pytest.raises(AgentFileError) as err:
        parse_agent({"turn_detection": turn}, "AGENT_FILE=a.toml")
    assert needle in str(err.value)


def _core(prompts: int) -> tuple[CallConversation, RealtimeDialect]:
    dialect = RealtimeDialect.for_combo(Combo.GA, SessionConfig("alloy", "Hi.", "server_vad"))
    return CallConversation(dialect, "server_vad", 50, idle=IdleWatch(prompts)), dialect


def _event(dialect: RealtimeDialect, kind: str, **data: Any) -> Any:
    return dialect.parse(json.dumps({"type": kind, **data}))


def _sent(actions: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(a.text) for a in actions if isinstance(a, SendToModel)]


def _cycle(core: CallConversation, dialect: RealtimeDialect, rid: str, now: int) -> list[Any]:
    """A timeout and the server's own response to it."""
    timeout = {"item_id": "i", "audio_start_ms": 0, "audio_end_ms": 5000}
    out = core.server_event(_event(dialect, "input_audio_buffer.timeout_triggered", **timeout), now)
    out += core.server_event(_event(dialect, "response.created", response={"id": rid}), now)
    done = {"id": rid, "status": "completed", "output": []}
    out += core.server_event(_event(dialect, "response.done", response=done), now)
    return out


def test_the_model_asks_then_says_goodbye_and_the_call_ends_once_it_was_heard() -> None:
    core, dialect = _core(prompts=1)
    assert _sent(_cycle(core, dialect, "r1", 0)) == []  # the model asks: left alone
    # The caller speaks: the count starts again.
    core.server_event(_event(dialect, "input_audio_buffer.speech_started", item_id="u"), 1)
    assert _sent(_cycle(core, dialect, "r2", 2)) == []
    actions = _cycle(core, dialect, "r3", 3)  # one too many
    cancel, goodbye = _sent(actions)
    assert cancel == {"type": "response.cancel"} and "r3" in core.cancelled
    assert goodbye["type"] == "response.create"
    assert goodbye["response"]["instructions"] == GOODBYE
    # The goodbye plays; the call ends only once it was heard (or its time is up).
    core.server_event(_event(dialect, "response.created", response={"id": "bye"}), 4)
    audio = {"response_id": "bye", "item_id": "it", "output_index": 0, "content_index": 0}
    core.server_event(
        _event(dialect, "response.output_audio.delta", **audio, delta="AAAA" * 1200), 5
    )
    done = {"id": "bye", "status": "completed", "output": []}
    core.server_event(_event(dialect, "response.done", response=done), 6)
    assert core.tick(7) == []  # still playing
    ended = core.tick(10_000_000)  # the margin passed without a mark
    assert SetDisposition("hang_up", "") in ended and EndCall("caller_idle") in ended
    assert WriteCommand(HangUp("caller_idle")) in ended


def test_no_prompt_at_all_says_goodbye_at_the_first_timeout() -> None:
    core, dialect = _core(prompts=0)
    assert [e["type"] for e in _sent(_cycle(core, dialect, "r1", 0))] == [
        "response.cancel",
        "response.create",
    ]


def test_the_emulators_idle_clock_fires_once_per_silence() -> None:
    clock = IdleClock()
    assert clock.due(10_000, 5000) is None  # nothing said or played yet
    clock.reset(1000)
    assert clock.due(5999, 5000) is None
    assert clock.due(6000, 5000) == (1000, 6000)
    assert clock.due(20_000, 5000) is None  # once; the next response resets it
    clock.reset(20_000)
    clock.pause()  # the caller speaks
    assert clock.due(40_000, 5000) is None
    assert IdleClock(0).due(10**6, None) is None  # no idle_timeout_ms


AGENT = """
instructions = "You are the shop's assistant."
[turn_detection]
type = "server_vad"
idle_timeout_ms = 1500
idle_prompts = 1
idle_action = "hang_up"
"""


@pytest.mark.slow
@pytest.mark.redis_server
async def test_a_silent_caller_is_asked_then_hung_up_on(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    from sim.speech import speech
    from sim.twilio_call import place_call
    from tests.console_stack import AUTH_TOKEN, console_stack

    client = aioredis.from_url(redis_server.url)
    await client.flushall()
    await client.aclose()
    path = tmp_path / "agent.toml"
    path.write_text(AGENT)
    async with (
        console_stack(redis_server.url, agent_file=str(path)) as stack,
        stack.client() as api,
    ):
        result = await place_call(
            stack.stack.media_url,
            np.concatenate([speech("Hello, I have a question."), np.zeros(800, np.int16)]),
            twiml_url=f"{stack.stack.base_url}/twiml",
            auth_token=AUTH_TOKEN,
            hold_after_s=25.0,
            max_duration_s=40.0,
        )

        async def ended() -> dict[str, Any] | None:
            calls = (await api.get("/api/calls")).json()["calls"]
            if not calls or calls[0]["state"] != "ended":
                return None
            return (await api.get(f"/api/calls/{calls[0]['call_sid']}")).json()  # type: ignore[no-any-return]

        view = await wait_for(ended, timeout=20)
        assert view["outcome"] == "caller_idle", view
        spoken = [t["text"] for t in view["transcript"] if t["role"] == "assistant"]
        assert "Are you still there?" in spoken  # the one prompt the file allows
        assert spoken[-1] == GOODBYE  # the emulator says its instructions: the goodbye
        assert result.closed_by_gateway and result.duration_s < 25  # not the caller's patience
