"""The tool cores without sockets: which calls run, when the model gets the answers, hang-up
and transfer after the last words, and the HTTP request a tool gets."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from shared import call_actions as ca
from shared import realtime_dialect as rd
from shared.agent import load_agent_file
from shared.conversation import CallConversation
from shared.streams import MAX_TOOL_OUTPUT_BYTES, HangUp, MarkPlayed, ToolCall, ToolResult
from shared.tool_calls import CallIdentity, CallTools
from shared.tool_requests import (
    SIGNATURE_HEADER,
    CappedBody,
    answer,
    build_request,
    check_arguments,
    verify_signature,
)
from tests.conftest import ROOT

AGENT = load_agent_file(str(ROOT / "agents" / "example.toml"))
TOOLS = {t.name: t for t in AGENT.tools}
CONFIG = rd.SessionConfig("alloy", "Be brief.", "server_vad")
IDENTITY = CallIdentity("CA" + "1" * 32, "MZ1", "+15550001111", "+15550002222", {"k": "v"})


def conversation(**tools_kwargs: Any) -> CallConversation:
    return CallConversation(
        dialect=rd.RealtimeDialect.for_combo(rd.Combo.GA, CONFIG),
        turn_detection="server_vad",
        commit_frames=50,
        tools=CallTools(TOOLS, IDENTITY, **tools_kwargs),
    )


def sent(actions: list[ca.Action]) -> list[dict[str, Any]]:
    return [json.loads(a.text) for a in actions if isinstance(a, ca.SendToModel)]


def done(response_id: str, *calls: rd.FunctionCall, status: str = "completed") -> rd.ResponseDone:
    return rd.ResponseDone(response_id, status, tuple(calls))


def call(call_id: str, name: str = "lookup_order", args: str = '{"order_id": "123"}') -> Any:
    return rd.FunctionCall(call_id, name, args)


def speak(c: CallConversation, response_id: str, item: str, ms: int, now_us: int) -> None:
    c.server_event(rd.ResponseCreated(response_id), now_us)
    audio = b"\x00\x00" * (24 * ms)
    c.server_event(rd.AudioDelta(response_id, item, 0, 0, audio), now_us)


def test_a_completed_call_runs_and_its_output_comes_after_response_done() -> None:
    c = conversation()
    c.server_event(rd.ResponseCreated("r1"), 0)
    actions = c.server_event(done("r1", call("call_1")), 1000)
    [run] = [a for a in actions if isinstance(a, ca.RunTool)]
    assert run.call == ToolCall(
        IDENTITY.call_sid,
        "MZ1",
        "call_1",
        "lookup_order",
        '{"order_id": "123"}',
        "+15550001111",
        "+15550002222",
        {"k": "v"},
    )
    events = [a.event.kind for a in actions if isinstance(a, ca.WriteEvent)]
    assert events == ["tool_call"]
    # A response is active when the result comes: it waits for that response's end.
    c.server_event(rd.ResponseCreated("r2"), 2000)
    c.control(ToolResult("call_1", "lookup_order", '{"status": "shipped"}', "ok", 120))
    assert sent(c.tick(3000)) == []
    out = sent(c.server_event(done("r2"), 4000))
    assert out == [
        {
            "type": "conversation.item.create",
            "item": {
                "type": "function_call_output",
                "call_id": "call_1",
                "output": '{"status": "shipped"}',
            },
        },
        c.dialect.response_create(),
    ]
    assert sent(c.tick(5000)) == []  # once


def test_a_cancelled_responses_calls_are_not_run() -> None:
    c = conversation()
    actions = c.server_event(done("r1", call("call_1"), status="cancelled"), 0)
    assert not [a for a in actions if isinstance(a, ca.RunTool)]


def test_a_result_delivered_twice_reaches_the_model_once() -> None:
    c = conversation()
    c.server_event(done("r1", call("call_1")), 0)
    result = ToolResult("call_1", "lookup_order", "ok!", "ok", 5)
    c.control(result)
    c.control(result)  # a runner that died after answering ran it again
    outputs = [e for e in sent(c.tick(10)) if e["type"] == "conversation.item.create"]
    assert len(outputs) == 1


def test_after_a_new_session_a_result_arrives_as_a_system_note() -> None:
    c = conversation()
    c.server_event(done("r1", call("call_1")), 0)
    c.session_ready(100)  # the worker died; a new session has no function call item
    c.control(ToolResult("call_1", "lookup_order", "shipped", "ok", 5))
    [note, create] = sent(c.tick(200))
    assert note["item"]["role"] == "system" and "shipped" in note["item"]["content"][0]["text"]
    assert create["type"] == "response.create"


def test_limits_answer_the_model_at_once() -> None:
    c = conversation(max_calls=1, max_in_flight=1)
    actions = c.server_event(done("r1", call("call_1"), call("call_2")), 0)
    assert len([a for a in actions if isinstance(a, ca.RunTool)]) == 1
    [output, _] = sent(actions)
    assert output["item"]["call_id"] == "call_2" and "at most 1" in output["item"]["output"]
    c.server_event(rd.ResponseCreated("r2"), 5)
    unknown = sent(c.server_event(done("r2", call("call_3", "launch_rocket")), 10))
    assert "no tool named" in unknown[0]["item"]["output"]


def test_hang_up_waits_until_the_goodbye_was_heard() -> None:
    c = conversation()
    speak(c, "r1", "item_bye", 1000, 0)  # "Goodbye!" (1 s), then the call in the same response
    actions = c.server_event(done("r1", call("call_9", "hang_up", "{}")), 10_000)
    assert not [a for a in actions if isinstance(a, ca.WriteCommand)]
    assert c.control(MarkPlayed("item_bye:500")) == []
    assert [a for a in c.tick(600_000) if isinstance(a, ca.WriteCommand)] == []  # half heard
    c.control(MarkPlayed("item_bye:1000"))
    end = c.tick(1_100_000)
    assert end == [
        ca.SetDisposition("hang_up", ""),
        ca.WriteCommand(HangUp("model_hung_up")),
        ca.EndCall("model_hung_up"),
    ]


def test_hang_up_does_not_wait_for_ever_when_marks_stop_coming() -> None:
    c = conversation()
    speak(c, "r1", "item_bye", 1000, 0)
    c.server_event(done("r1", call("call_9", "hang_up", "{}")), 0)
    assert c.tick(2_500_000) == []  # 1 s left to play + 2 s margin
    assert ca.EndCall("model_hung_up") in c.tick(3_100_000)


def test_transfer_goes_to_the_chosen_destination_or_asks_again() -> None:
    c = conversation()
    bad = sent(
        c.server_event(done("r1", call("c1", "transfer_to_human", '{"destination": "x"}')), 0)
    )
    assert "choose a destination" in bad[0]["item"]["output"]
    assert "sales" in bad[0]["item"]["output"]
    c.server_event(rd.ResponseCreated("r2"), 5)  # the answer to the bad choice
    chosen = call("c2", "transfer_to_human", '{"destination": "support"}')
    end = c.server_event(done("r2", chosen), 10)  # nothing left to play: at once
    assert ca.SetDisposition("transfer", "sip:support@pbx.example.com") in end
    assert ca.EndCall("transferred") in end


def test_a_slow_tool_gets_one_out_of_band_word_to_the_caller() -> None:
    c = conversation(filler_after_us=3_000_000)
    c.server_event(done("r1", call("call_1")), 0)
    assert sent(c.tick(2_000_000)) == []
    [filler] = sent(c.tick(3_100_000))
    assert filler["response"]["conversation"] == "none"
    assert "still" in filler["response"]["instructions"]
    assert sent(c.tick(9_000_000)) == []  # once per call


# --- the HTTP request ---------------------------------------------------------------------------


def test_arguments_are_checked_against_the_schema_before_anything_is_sent() -> None:
    tool = TOOLS["lookup_order"]
    assert check_arguments(tool, '{"order_id": "123"}') == {"order_id": "123"}
    for bad, needle in [
        ("{not json", "not valid JSON"),
        ("[1]", "must be a JSON object"),
        ('{"order_id": "abc"}', "order_id"),
        ("{}", "'order_id' is a required property"),
        ('{"order_id": "123", "x": 1}', "Additional properties"),
    ]:
        result = check_arguments(tool, bad)
        assert not isinstance(result, dict) and result.outcome == "invalid_arguments"
        assert needle in json.loads(result.output)["error"], result.output


def test_the_request_has_the_body_headers_and_a_signature_the_receiver_can_check() -> None:
    tool = TOOLS["lookup_order"]
    tc = ToolCall(IDENTITY.call_sid, "MZ1", "call_1", "lookup_order", "{}", "+1", "+2", {"a": "b"})
    request = build_request(tool, tc, {"order_id": "123"}, "s3cret", 1_700_000_000)
    body = json.loads(request.body)
    # No streamSid: with the CallSid it is what taking the call's stream over would need, and
    # the CallSid alone correlates the request with the call.
    assert "stream_sid" not in body
    assert body == {
        "call_sid": IDENTITY.call_sid,
        "call_id": "call_1",
        "name": "lookup_order",
        "arguments": {"order_id": "123"},
        "from": "+1",
        "to": "+2",
        "parameters": {"a": "b"},
    }
    assert request.headers["Idempotency-Key"] == "call_1"
    assert request.headers["Content-Type"] == "application/json"
    signature = request.headers[SIGNATURE_HEADER]
    assert verify_signature("s3cret", signature, request.body, 1_700_000_100)
    assert not verify_signature("s3cret", signature, request.body, 1_700_000_400)  # > 5 min
    assert not verify_signature("other", signature, request.body, 1_700_000_000)
    assert not verify_signature("s3cret", signature, request.body + b" ", 1_700_000_000)
    assert SIGNATURE_HEADER not in build_request(tool, tc, {}, None, 0).headers


def test_answers_become_what_the_model_gets() -> None:
    assert answer(200, b'{"ok": true}').output == '{"ok": true}'
    whole = answer(200, b"x" * MAX_TOOL_OUTPUT_BYTES)
    assert whole.outcome == "ok" and len(whole.output) == MAX_TOOL_OUTPUT_BYTES
    big = answer(200, b"x" * (MAX_TOOL_OUTPUT_BYTES + 1))  # as CappedBody keeps a longer one
    assert big.outcome == "error" and json.loads(big.output) == {
        "error": "the tool's answer was longer than 65536 bytes (64 KiB) and was not used",
        "status": 200,
    }
    failed = answer(404, b"nope")
    assert failed.outcome == "error" and json.loads(failed.output)["status"] == 404


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=12), st.integers(0, 100))
def test_a_capped_body_keeps_the_cap_and_one_byte_and_stops_there(
    chunks: list[bytes], cap: int
) -> None:
    body = CappedBody(cap)
    taken = b""
    for chunk in chunks:
        going_on = body.take(chunk)
        taken += chunk
        assert going_on == (len(taken) <= cap)
        if not going_on:
            break
    assert body.body() == taken[: cap + 1] and body.too_large == (len(taken) > cap)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(
                st.just("done"),
                st.sampled_from(["completed", "cancelled"]),
                st.sampled_from(["lookup_order", "hang_up", "transfer_to_human", "zz"]),
                st.sampled_from(["c1", "c2", "c3"]),
            ),
            st.tuples(st.just("result"), st.sampled_from(["c1", "c2", "c3", "c9"])),
            st.tuples(st.just("created"), st.sampled_from(["r1", "r2"])),
            st.tuples(st.just("tick"), st.integers(0, 20_000_000)),
            st.tuples(st.just("session")),
        ),
        max_size=25,
    )
)
def test_any_sequence_keeps_the_tool_state_consistent(steps: list[tuple[Any, ...]]) -> None:
    c = conversation()
    tools = c.tools
    assert tools is not None
    now = 0
    for step in steps:
        now += 1000
        if step[0] == "done":
            c.server_event(done("r1", call(step[3], step[2], "{}"), status=step[1]), now)
        elif step[0] == "result":
            c.control(ToolResult(step[1], "lookup_order", "ok", "ok", 1))
        elif step[0] == "created":
            c.server_event(rd.ResponseCreated(step[1]), now)
        elif step[0] == "tick":
            now = max(now, step[1])
            c.tick(now)
        else:
            c.session_ready(now)
        assert tools.calls_made <= tools.max_calls
        assert len(tools.in_flight) <= tools.max_in_flight
        assert not (set(tools.in_flight) & tools.answered)
