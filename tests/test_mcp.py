"""Remote MCP servers: approval requests answered from the agent file's approve list (the rest
refused, recorded), each call the server ran recorded with its duration, the answers valid GA
client events; the emulator's scripted servers; a call end to end through the console's API."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
from pydantic import TypeAdapter

from shared.call_actions import SendToModel, WriteEvent
from shared.conversation import CallConversation
from shared.mcp import CallMcp, McpServer
from shared.realtime_dialect import Combo, RealtimeDialect, SessionConfig
from shared.runtime.observability import MCP_CALLS
from sim.realtime_mcp import ScriptedMcpCall, ScriptedMcpServer, ScriptedMcpTool
from tests.conftest import RedisServer, wait_for
from tests.test_realtime_dialect import unknown_keys

openai_types = pytest.importorskip("openai.types.realtime")
GA_CLIENT = TypeAdapter(openai_types.RealtimeClientEvent)
GA_SERVER = TypeAdapter(openai_types.RealtimeServerEvent)

CRM = McpServer(
    "crm",
    "https://crm.example.com/mcp",
    require_approval="always",
    approve=frozenset({"find_customer"}),
)


def core() -> tuple[CallConversation, RealtimeDialect]:
    dialect = RealtimeDialect.for_combo(Combo.GA, SessionConfig("alloy", "Hi.", "server_vad"))
    conversation = CallConversation(dialect, "server_vad", 50, mcp=CallMcp({"crm": CRM}))
    return conversation, dialect


def approval_request(item_id: str, name: str, event: str = "response.output_item.done") -> str:
    item = {
        "id": item_id,
        "type": "mcp_approval_request",
        "server_label": "crm",
        "name": name,
        "arguments": '{"phone": "+15550100"}',
    }
    if event == "response.output_item.done":
        return json.dumps(
            {"type": event, "event_id": "e1", "response_id": "r1", "output_index": 0, "item": item}
        )
    return json.dumps({"type": event, "event_id": "e2", "previous_item_id": None, "item": item})


def sent(actions: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(a.text) for a in actions if isinstance(a, SendToModel)]


def written(actions: list[Any]) -> list[dict[str, str]]:
    return [a.event.data for a in actions if isinstance(a, WriteEvent)]


def test_an_approved_tool_is_answered_yes_once_and_the_model_goes_on_after_its_response() -> None:
    conversation, dialect = core()
    conversation.server_event(
        dialect.parse(json.dumps({"type": "response.created", "response": {"id": "r1"}})), 0
    )
    actions = conversation.server_event(
        dialect.parse(approval_request("mcpr_1", "find_customer")), 10
    )
    (answer,) = sent(actions)
    assert answer["item"] == {
        "type": "mcp_approval_response",
        "id": "apr_mcpr_1",
        "approval_request_id": "mcpr_1",
        "approve": True,
    }
    model = GA_CLIENT.validate_python(answer)
    assert unknown_keys(model) == [] and model.model_dump(exclude_unset=True) == answer
    assert written(actions)[0]["outcome"] == "approved"
    # The same request again (as conversation.item.done): answered once only.
    again = approval_request("mcpr_1", "find_customer", "conversation.item.done")
    assert conversation.server_event(dialect.parse(again), 20) == []
    # The response that asked ends: now the model is asked to go on.
    done = {"type": "response.done", "response": {"id": "r1", "status": "completed", "output": []}}
    (create,) = sent(conversation.server_event(dialect.parse(json.dumps(done)), 30))
    assert create["type"] == "response.create"


def test_a_tool_not_in_the_approve_list_is_refused_and_recorded() -> None:
    conversation, dialect = core()
    actions = conversation.server_event(
        dialect.parse(approval_request("mcpr_2", "delete_customer")), 0
    )
    answer, create = sent(actions)  # no response active: it goes on at once
    assert answer["item"]["approve"] is False and answer["item"]["reason"]
    assert unknown_keys(GA_CLIENT.validate_python(answer)) == []
    assert create["type"] == "response.create"
    (record,) = written(actions)
    assert record["outcome"] == "refused" and record["name"] == "delete_customer"


def test_an_agent_without_mcp_servers_refuses_any_request() -> None:
    dialect = RealtimeDialect.for_combo(Combo.GA, SessionConfig("alloy", "Hi.", "server_vad"))
    conversation = CallConversation(dialect, "server_vad", 50)
    answer, _ = sent(conversation.server_event(dialect.parse(approval_request("r", "x")), 0))
    assert answer["item"]["approve"] is False


def test_each_mcp_call_is_recorded_once_with_its_outcome_and_duration() -> None:
    conversation, dialect = core()
    started = {"type": "response.mcp_call.in_progress", "item_id": "mcpc_1", "output_index": 0}
    conversation.server_event(dialect.parse(json.dumps(started)), 1_000_000)
    calls = [
        {
            "id": "mcpc_1",
            "type": "mcp_call",
            "server_label": "crm",
            "name": "find_customer",
            "arguments": '{"phone": "+15550100"}',
            "output": "Ada Lovelace, gold member",
        },
        {
            "id": "mcpc_2",
            "type": "mcp_call",
            "server_label": "crm",
            "name": "find_order",
            "arguments": "{}",
            "error": {"type": "tool_execution_error", "message": "timed out"},
        },
    ]
    done = {
        "type": "response.done",
        "response": {"id": "r1", "status": "completed", "output": calls},
    }
    events = written(conversation.server_event(dialect.parse(json.dumps(done)), 1_412_000))
    ok, failed = events
    assert ok["outcome"] == "ok" and ok["output"] == "Ada Lovelace, gold member"
    assert ok["duration_ms"] == "412"
    assert failed["outcome"] == "error" and failed["error"] == "timed out"
    assert "duration_ms" not in failed  # its start was never seen
    assert written(conversation.server_event(dialect.parse(json.dumps(done)), 2_000_000)) == []


def test_garbage_mcp_items_never_raise() -> None:
    conversation, dialect = core()
    for item in ({"type": "mcp_call"}, {"type": "mcp_call", "error": "x", "output": 3}, "x"):
        done = {"type": "response.done", "response": {"id": "r", "output": [item]}}
        conversation.server_event(dialect.parse(json.dumps(done)), 0)
    bare = json.dumps({"type": "conversation.item.done", "item": {"type": "mcp_approval_request"}})
    conversation.server_event(dialect.parse(bare), 0)


# --- end to end: the worker, the emulator's scripted server, the console's API ------------------

AGENT = """
instructions = "You are the shop's assistant."

[[mcp_servers]]
label = "crm"
url = "http://127.0.0.1:9/mcp"
allowed_tools = ["find_customer", "delete_customer"]
require_approval = "always"
approve = ["find_customer"]
headers = { Authorization = "env:TEST_CRM_TOKEN" }
"""


@pytest.mark.slow
@pytest.mark.redis_server
async def test_a_call_with_an_approved_and_a_refused_mcp_call(
    redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from sim.speech import speech
    from sim.twilio_call import place_call
    from tests.console_stack import AUTH_TOKEN, console_stack

    client = aioredis.from_url(redis_server.url)
    await client.flushall()
    await client.aclose()
    monkeypatch.setenv("TEST_CRM_TOKEN", "Bearer test-token")
    path = tmp_path / "agent.toml"
    path.write_text(AGENT)
    server = ScriptedMcpServer(
        "http://127.0.0.1:9/mcp",
        (
            ScriptedMcpTool("find_customer", output="Ada Lovelace"),
            ScriptedMcpTool("delete_customer"),
        ),
    )
    script = [
        ScriptedMcpCall(1, "crm", "find_customer", {"phone": "+15550100"}),
        ScriptedMcpCall(2, "crm", "delete_customer", {"id": "7"}),
    ]
    silence = np.zeros(8000 * 3, dtype=np.int16)  # the reply and its tool call, heard
    refused_before = MCP_CALLS.labels("crm", "refused")._value.get()
    # At INFO, as the services log: each MCP call's log line is made (its fields once named a
    # LogRecord attribute, and the worker's call failed at the first MCP call).
    caplog.set_level(logging.INFO, logger="gateway.worker")
    emulator = {"mcp_servers": [server], "mcp_calls": script}
    async with (
        console_stack(redis_server.url, agent_file=str(path), emulator_kwargs=emulator) as stack,
        stack.client() as api,
    ):
        await place_call(
            stack.stack.media_url,
            np.concatenate(
                [speech("Hello, who am I?"), silence, speech("Please delete my account.")]
            ),
            twiml_url=f"{stack.stack.base_url}/twiml",
            auth_token=AUTH_TOKEN,
            hold_after_s=3.0,
        )

        async def ended() -> dict[str, Any] | None:
            calls = (await api.get("/api/calls")).json()["calls"]
            if not calls or calls[0]["state"] != "ended":
                return None
            return (await api.get(f"/api/calls/{calls[0]['call_sid']}")).json()  # type: ignore[no-any-return]

        view = await wait_for(ended, timeout=30)
        session = stack.stack.emulator.sessions[0]
        # The session declared the server with its header resolved from the environment.
        (declared,) = [t for t in session.tools if t.get("type") == "mcp"]
        assert declared["headers"] == {"Authorization": "Bearer test-token"}
        for event in session.server_events:
            if event["type"].startswith(("mcp_list_tools", "response.mcp_call")):
                assert unknown_keys(GA_SERVER.validate_python(event)) == []
        outcomes = [(c["name"], c["outcome"]) for c in view["mcp_calls"]]
        assert outcomes == [
            ("find_customer", "approved"),
            ("find_customer", "ok"),
            ("delete_customer", "refused"),
        ], view["mcp_calls"]
        ran = view["mcp_calls"][1]
        assert ran["output"] == "Ada Lovelace" and ran["arguments"] == {"phone": "+15550100"}
        assert ran["duration_ms"] is not None and ran["duration_ms"] >= 40
        assert [c["name"] for c in session.mcp.calls] == ["find_customer"]  # never the refused
        spoken = [t["text"] for t in view["transcript"] if t["role"] == "assistant"]
        assert any("Ada Lovelace" in text for text in spoken)
        assert MCP_CALLS.labels("crm", "refused")._value.get() == refused_before + 1
        logged = [r for r in caplog.records if r.getMessage() == "mcp call"]
        assert [(r.tool, r.outcome) for r in logged] == outcomes  # type: ignore[attr-defined]


def test_the_emulators_command_line_scripts_mcp_servers_and_calls() -> None:
    server = ScriptedMcpServer.parse(
        '{"url": "https://crm.example.com/mcp", "tools": [{"name": "find", "output": "Ada"},'
        ' {"name": "broken", "error": "down"}]}'
    )
    assert server == ScriptedMcpServer(
        "https://crm.example.com/mcp",
        (ScriptedMcpTool("find", output="Ada"), ScriptedMcpTool("broken", error="down")),
    )
    assert ScriptedMcpServer.parse('{"url": "http://127.0.0.1:9/mcp"}').tools == ()
    assert ScriptedMcpCall.parse('2:crm:find:{"phone": "+1555"}') == ScriptedMcpCall(
        2, "crm", "find", {"phone": "+1555"}
    )
    assert ScriptedMcpCall.parse("1:crm:find:") == ScriptedMcpCall(1, "crm", "find", {})
    for bad, needle in (
        ("not json", "not JSON"),
        ('{"tools": []}', "--mcp-server wants"),
        ('{"url": "u", "tool": []}', "unknown keys ['tool']"),
        ('{"url": "u", "tools": [{"name": "x", "output": "a", "error": "b"}]}', "bad tool"),
        ('{"url": "u", "tools": [{"output": "a"}]}', "bad tool"),
        ('{"url": "u", "tools": "find"}', "--mcp-server wants"),
    ):
        with pytest.raises(ValueError, match=re.escape(needle)):
            ScriptedMcpServer.parse(bad)
    for bad, needle in (
        ("0:crm:find:{}", "N >= 1"),
        ("1:crm:find", "N:LABEL:NAME:JSON"),
        ("x:crm:find:{}", "N:LABEL:NAME:JSON"),
        ("1:crm:find:[1]", "must be a JSON object"),
        ("1:crm:find:{nope", "not JSON"),
    ):
        with pytest.raises(ValueError, match=re.escape(needle)):
            ScriptedMcpCall.parse(bad)
