"""Usage and cost: response.done's usage summed per call, priced by a dated, overridable table,
kept in the call's events, shown by the console's API and counted as metrics by kind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from pydantic import TypeAdapter

from shared.call_actions import WriteEvent
from shared.call_view import Origin, TimedEvent, detail
from shared.conversation import CallConversation
from shared.realtime_dialect import Combo, RealtimeDialect, SessionConfig
from shared.runtime.observability import REALTIME_TOKENS
from shared.runtime.settings import ConfigError, load_settings
from shared.streams import CallKeys, decode_event
from shared.usage import (
    DEFAULT_PRICES,
    KINDS,
    CallUsage,
    PriceTableError,
    load_prices,
    sum_events,
    tokens_by_kind,
    usage_fields,
)
from sim.realtime_usage import UsageMeter
from tests.conftest import RedisServer, wait_for
from tests.test_realtime_dialect import unknown_keys

openai_types = pytest.importorskip("openai.types.realtime")

USAGE = {
    "total_tokens": 1500,
    "input_tokens": 1200,
    "output_tokens": 300,
    "input_token_details": {
        "text_tokens": 400,
        "audio_tokens": 800,
        "image_tokens": 0,
        "cached_tokens": 700,
        "cached_tokens_details": {"text_tokens": 300, "audio_tokens": 400, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 60, "audio_tokens": 240},
}


def test_usage_splits_cached_input_from_the_rest_by_modality() -> None:
    assert tokens_by_kind(USAGE) == {
        "text_in": 100,
        "text_cached": 300,
        "audio_in": 400,
        "audio_cached": 400,
        "text_out": 60,
        "audio_out": 240,
    }
    # Only a total of cached tokens: taken from the text input first.
    only_total = {
        "input_token_details": {"text_tokens": 50, "audio_tokens": 80, "cached_tokens": 70}
    }
    assert tokens_by_kind(only_total) == {"text_cached": 50, "audio_in": 60, "audio_cached": 20}


@pytest.mark.parametrize(
    "garbage",
    [None, "lots", 3, {"input_token_details": "x"}, {"output_token_details": {"audio_tokens": -5}}],
)
def test_malformed_usage_counts_nothing_and_never_raises(garbage: Any) -> None:
    assert tokens_by_kind(garbage) == {}
    assert usage_fields("gpt-realtime", "resp_1", garbage) is None


def test_a_calls_usage_is_summed_and_priced() -> None:
    one = usage_fields("gpt-realtime", "resp_1", USAGE)
    assert one is not None and one["model"] == "gpt-realtime" and one["audio_out"] == "240"
    usage = sum_events([one, one, {"model": "gpt-realtime", "audio_out": "junk"}])
    assert usage.responses == 3 and usage.totals()["audio_out"] == 480
    prices = DEFAULT_PRICES["gpt-realtime"]
    expected = 2 * sum(int(one[k]) * prices[k] for k in KINDS if k in one) / 1e6
    cost, unpriced = usage.cost(DEFAULT_PRICES)
    assert cost == pytest.approx(expected) and unpriced == []
    # A dated snapshot takes its model's prices; an unknown model is named, not guessed.
    dated = sum_events([{**one, "model": "gpt-realtime-2025-08-28"}])
    assert dated.cost(DEFAULT_PRICES)[0] == pytest.approx(expected / 2)
    unknown = sum_events([{**one, "model": "gpt-realtime-9"}])
    assert unknown.cost(DEFAULT_PRICES) == (None, ["gpt-realtime-9"])
    report = usage.report(DEFAULT_PRICES)
    assert report["tokens"]["text_cached"] == 600 and report["prices_as_of"]


def test_the_price_table_is_overridable_by_json_or_a_file(tmp_path: Path) -> None:
    mine = {"gpt-realtime": {kind: 1.0 for kind in KINDS}}
    assert load_prices(json.dumps(mine))["gpt-realtime"]["audio_out"] == 1.0
    assert load_prices(json.dumps(mine))["gpt-realtime-mini"] == DEFAULT_PRICES["gpt-realtime-mini"]
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(mine))
    settings = load_settings(realtime_prices=str(path))
    assert settings.prices["gpt-realtime"]["text_in"] == 1.0
    assert load_settings().prices == DEFAULT_PRICES


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("{not json", "not JSON"),
        ('{"gpt-realtime": {"text_in": 1}}', "missing text_cached"),
        ('{"gpt-realtime": 4}', "must be a table"),
        ("/nonexistent/prices.json", "cannot be read"),
    ],
)
def test_a_bad_price_table_is_refused_at_start(value: str, needle: str) -> None:
    with pytest.raises(PriceTableError, match=needle):
        load_prices(value)
    with pytest.raises(ConfigError, match="REALTIME_PRICES"):
        load_settings(realtime_prices=value)
    negative = {"gpt-realtime": {kind: -1 for kind in KINDS}}
    with pytest.raises(PriceTableError, match="must be a number >= 0"):
        load_prices(json.dumps(negative))


def test_the_conversation_writes_one_usage_event_per_response_that_used_tokens() -> None:
    config = SessionConfig("alloy", "Be brief.", "server_vad")
    dialect = RealtimeDialect.for_combo(Combo.GA, config)
    core = CallConversation(dialect, "server_vad", 50, model="gpt-realtime-mini")
    done = {
        "type": "response.done",
        "response": {"id": "r1", "status": "completed", "usage": USAGE},
    }
    actions = core.server_event(dialect.parse(json.dumps(done)), 0)
    (written,) = [a for a in actions if isinstance(a, WriteEvent)]
    assert written.event.kind == "usage" and written.event.data["model"] == "gpt-realtime-mini"
    # Through the stream codec and back, then folded as the console folds a call.
    decoded = decode_event(
        {k: v if isinstance(v, bytes) else b"" for k, v in written.event.encode().items()}
    )
    origin = Origin("CA1", "inbound", "+1", "+2", 0, b"0-0")
    view = detail(origin, {}, [TimedEvent(b"1-0", decoded)])
    assert view.usage.totals()["audio_out"] == 240
    none = {"type": "response.done", "response": {"id": "r2", "status": "cancelled", "usage": None}}
    assert core.server_event(dialect.parse(json.dumps(none)), 0) == []


def test_the_emulators_usage_fits_the_ga_types_and_counts_the_cache() -> None:
    meter = UsageMeter()
    first = meter.response("Be brief.", [("user", 2000.0)], 1500.0, "Hello there.", speaks=True)
    second = meter.response(
        "Be brief.",
        [("user", 2000.0), ("assistant", 1500.0), ("user", 1000.0)],
        500.0,
        "Ok.",
        speaks=True,
    )
    for usage in (first, second):
        model = TypeAdapter(openai_types.RealtimeResponseUsage).validate_python(usage)
        assert unknown_keys(model) == []
    assert first["input_token_details"]["cached_tokens"] == 0
    assert first["input_token_details"]["audio_tokens"] == 20
    assert first["output_token_details"]["audio_tokens"] == 30
    # The second response re-reads the first's input: that part is cached.
    assert second["input_token_details"]["cached_tokens_details"]["audio_tokens"] == 20
    assert tokens_by_kind(second)["audio_in"] == 20 + 30 + 10 - 20


@pytest.mark.slow
@pytest.mark.redis_server
async def test_a_calls_usage_and_cost_in_the_api_and_tokens_in_the_metrics(
    redis_server: RedisServer,
) -> None:
    from sim.speech import speech
    from sim.twilio_call import place_call
    from tests.console_stack import AUTH_TOKEN, console_stack

    client = aioredis.from_url(redis_server.url)
    await client.flushall()
    await client.aclose()
    before = REALTIME_TOKENS.labels("audio_out")._value.get()
    async with console_stack(redis_server.url) as stack, stack.client() as api:
        await place_call(
            stack.stack.media_url,
            speech("Hello, what time do you open tomorrow?"),
            twiml_url=f"{stack.stack.base_url}/twiml",
            auth_token=AUTH_TOKEN,
            hold_after_s=1.0,
        )

        async def ended() -> dict[str, Any] | None:
            calls = (await api.get("/api/calls")).json()["calls"]
            if not calls or calls[0]["state"] != "ended":
                return None
            detail_: dict[str, Any] = (await api.get(f"/api/calls/{calls[0]['call_sid']}")).json()
            return detail_

        view = await wait_for(ended, timeout=20)
        usage = view["usage"]
        assert usage["responses"] >= 1 and usage["tokens"]["audio_out"] > 0
        assert list(usage["by_model"]) == ["gpt-realtime"]
        recount = CallUsage(tokens={"gpt-realtime": usage["tokens"]}, responses=1)
        assert usage["estimated_cost_usd"] == recount.cost(DEFAULT_PRICES)[0] > 0
        events = await stack.redis.xrange(CallKeys.for_call(view["call_sid"]).events)
        kinds = [decode_event(f).kind for _, f in events]
        assert "usage" in kinds
        # The metric is by kind, never by call, and moved by what the call used.
        after = REALTIME_TOKENS.labels("audio_out")._value.get()
        assert after - before == usage["tokens"]["audio_out"]
