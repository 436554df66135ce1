"""The dialect probe (`make probe`): against the emulator it must reproduce the dialect report.

Every observation of the report is checked in the files the probe writes, so a change to the
gateway's dialect layer or to the emulator that drifts from the report shows up here. Network
traffic stays on 127.0.0.1: the emulator in-process, or a closed free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from shared.runtime.settings import load_settings
from tests.conftest import free_port
from tools.probe import JSON_NAME, MARKDOWN_NAME, amain, exit_code, models_of, run_probe
from tools.probe_errors import ErrorSeen
from tools.probe_findings import (
    DELETE,
    NEGATIVE_CHECKS,
    Combo,
    ProbeFindings,
    RunFinding,
    SessionSeen,
    apply_mutations,
    recommend,
    summarise_all,
)
from tools.probe_report import code, dotted, render_json, render_markdown
from tools.run_settings import RunSettings

AUDIO_TYPES = {"response.output_audio.delta", "response.audio.delta"}


def _env(monkeypatch: pytest.MonkeyPatch, out: Path, **extra: str) -> None:
    """A probe environment that can only reach 127.0.0.1 (no key: the in-process emulator)."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    values = {
        "REALTIME_URL": "ws://127.0.0.1:9/v1/realtime",
        "REALTIME_MODEL": "gpt-realtime",
        "RUNS": "2",
        "AUDIO_MS": "600",
        "TIMEOUT_MS": "4000",
        "PROBE_OUT": str(out),
        "REALTIME_SCHEMA": "audio",
        "REALTIME_BETA_HEADER": "0",
        # The probe's own emulator accepts the retired beta (combo B) so that these checks
        # cover both shapes; by default it refuses it as the live API does.
        "EMULATOR_BETA": "accept",
        **extra,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def _load(out: Path) -> tuple[dict[str, Any], str]:
    return (
        json.loads((out / JSON_NAME).read_text(encoding="utf-8")),
        (out / MARKDOWN_NAME).read_text(encoding="utf-8"),
    )


def _combo(report: dict[str, Any], letter: str) -> dict[str, Any]:
    return next(c for c in report["combos"] if c["combo"] == letter)


def _negative(report: dict[str, Any], check: str) -> dict[str, Any]:
    return next(n for n in report["negative_checks"] if n["check"] == check)


@pytest.fixture(scope="module")
def emulator_report(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict[str, Any], str, int, str]:
    """One CLI run of the probe (RUNS=2, no key) shared by the report checks below."""
    out = tmp_path_factory.mktemp("probe")
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as monkeypatch, contextlib.redirect_stdout(printed):
        _env(monkeypatch, out)
        rc = asyncio.run(asyncio.wait_for(amain([]), 25))
    report, markdown = _load(out)
    return report, markdown, rc, printed.getvalue()


def test_cli_probes_the_emulator_and_recommends_combo_a(emulator_report: Any) -> None:
    report, markdown, rc, printed = emulator_report
    assert rc == 0
    assert "no OPENAI_API_KEY" in printed and "emulator" in printed
    assert report["target"]["emulator"] is True
    assert report["target"]["url"].startswith("ws://127.0.0.1:")
    assert report["recommended"] == {
        "model": "gpt-realtime",
        "combo": "A",
        "schema": "audio",
        "beta_header": False,
    }
    assert "recommended for Twilio: Combo A (audio schema, beta header off)" in printed
    assert len(report["runs"]) == 4 * 2 and len(report["negative_checks"]) == len(NEGATIVE_CHECKS)


def test_combos_a_and_b_return_audio(emulator_report: Any) -> None:
    report = emulator_report[0]
    for letter in "AB":
        combo = _combo(report, letter)
        assert combo["status"] == "works", combo["detail"]
        assert combo["runs_with_audio"] == combo["runs"] == 2
        assert combo["session_update_results"] == ["accepted"]
        assert combo["response_results"] == ["accepted"]
        assert set(combo["audio_types"]) <= AUDIO_TYPES and combo["audio_types"]
        assert combo["ms_first_audio_median"] is not None
    a, b = _combo(report, "A"), _combo(report, "B")
    # Observations: GA exposes an audio object and output_modalities; beta reports pcm16.
    assert a["session_created"]["has_audio_object"] is True
    assert a["session_created"]["output_modalities"] is not None
    assert b["session_created"]["input_format"] == "pcm16"
    assert b["session_created"]["output_format"] == "pcm16"
    # The payloads shown are the report's (combo A's dotted keys, combo B's flat keys).
    a_keys = dict(dotted(a["session_update"]["session"], "session"))
    assert a_keys["session.type"] == "realtime"
    assert a_keys["session.audio.input.format.type"] == "audio/pcm"
    assert a_keys["session.audio.output.format.rate"] == 24000
    assert a_keys["session.output_modalities"] == ["audio"]
    assert b["session_update"]["session"]["modalities"] == ["audio", "text"]
    assert b["session_update"]["session"]["input_audio_format"] == "pcm16"


def test_mismatched_combos_are_rejected_with_unknown_parameter(emulator_report: Any) -> None:
    report = emulator_report[0]
    for letter in ("A'", "B'"):  # audio with the header, flat without it
        combo = _combo(report, letter)
        assert combo["status"] == "rejected", combo["detail"]
        messages = [e["message"] for e in combo["session_update_errors"]]
        assert messages and all(m.startswith("Unknown parameter: '") for m in messages), messages


def test_known_rejections_are_reproduced_with_the_servers_words(emulator_report: Any) -> None:
    report, markdown = emulator_report[0], emulator_report[1]
    for check in NEGATIVE_CHECKS:
        finding = _negative(report, check.id)
        assert finding["result"] == "rejected", finding
        assert finding["reproduced"] is True
        assert finding["error"]["message"]
        assert code(finding["error"]["message"]) in markdown
    turn = _negative(report, "ga_session_turn_detection")["error"]
    assert turn["message"].startswith("Unknown parameter") and "turn_detection" in turn["message"]
    sent = _negative(report, "ga_missing_session_type")["payload"]["session"]
    assert "type" not in sent
    low = _negative(report, "ga_pcm_rate_16000")["payload"]["session"]["audio"]
    assert low["input"]["format"]["rate"] == 16000
    assert _negative(report, "ga_response_modalities")["payload"]["response"]["modalities"]
    assert _negative(report, "beta_modalities_audio_only")["payload"]["session"]["modalities"] == [
        "audio"
    ]


def test_markdown_has_the_reports_layout_and_matches_the_json(emulator_report: Any) -> None:
    report, markdown = emulator_report[0], emulator_report[1]
    sections = [
        "# Realtime Dialect Report",
        "## Goal",
        "## Verified Combo",
        "## Smoke Test",
        "### Env Vars",
        "## Known Pitfalls",
        "## Observations",
    ]
    positions = [markdown.index(s) for s in sections]
    assert positions == sorted(positions)
    verified = markdown[markdown.index("## Verified Combo") : markdown.index("## Combos That Did")]
    assert "### Combo A (audio schema, beta header off)" in verified
    assert "### Combo B (flat schema, beta header on)" in verified
    assert '- `session.type: "realtime"`' in verified
    assert "- `session.audio.input.format.rate: 24000`" in verified
    combo_a = verified.split("### Combo B")[0]
    assert "**This combo is recommended for Twilio integration**" in combo_a
    for combo in report["combos"]:
        assert f"(combo {combo['combo']}): **{combo['status']}**, {combo['detail']}" in markdown
        for event_type in combo["audio_types"]:
            assert code(event_type) in markdown
        for error in combo["session_update_errors"]:
            assert code(error["message"]) in markdown
    assert markdown.count("**reproduced**") == len(NEGATIVE_CHECKS)
    assert "REALTIME_BETA_HEADER=0 REALTIME_SCHEMA=audio make smoke" in markdown


async def test_unreachable_endpoint_is_reported_per_combination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()  # bound then closed: nothing listens there
    _env(
        monkeypatch,
        tmp_path,
        RUNS="2",
        TIMEOUT_MS="1000",
        OPENAI_API_KEY="sk-test-not-real",
        REALTIME_URL=f"ws://127.0.0.1:{port}/v1/realtime",
    )
    assert await amain([]) == 1
    report, markdown = _load(tmp_path)
    assert report["recommended"] is None
    assert [c["status"] for c in report["combos"]] == ["unreachable"] * 4
    for combo in report["combos"]:
        assert "connection refused" in combo["detail"]
        assert f"(combo {combo['combo']}): **unreachable**" in markdown
    assert {n["result"] for n in report["negative_checks"]} == {"unreachable"}
    printed = capsys.readouterr()
    assert "Traceback" not in printed.out + printed.err
    assert "recommended for Twilio: none" in printed.out
    assert "sk-test-not-real" not in markdown + json.dumps(report)


async def _never_upgrade(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
    await reader.read()


async def _silent(ws: ServerConnection) -> None:
    await ws.wait_closed()


def _unauthorized(conn: ServerConnection, _: Request) -> Response:
    return conn.respond(HTTPStatus.UNAUTHORIZED, "Incorrect API key provided\n")


# The per-step timeout must expire only where the test wants it to: a 401 answers at once, so it
# gets room a loaded CI runner cannot exhaust (300 ms once ran out before the 401 was read); the
# silent server must finish its handshake inside the timeout and only then stay quiet.
@pytest.mark.parametrize(
    ("kind", "expected", "timeout_ms"),
    [
        ("http-401", "HTTP 401 from 127.0.0.1", 8000),
        ("silent", "no session.created", 1000),
        ("no-handshake", "no WebSocket handshake", 300),
    ],
)
async def test_http_errors_and_silent_servers_are_findings(
    tmp_path: Path, kind: str, expected: str, timeout_ms: int
) -> None:
    if kind == "no-handshake":  # accepts TCP, never answers the upgrade
        server: Any = await asyncio.start_server(_never_upgrade, "127.0.0.1", 0)
    else:
        server = await serve(
            _silent, "127.0.0.1", 0, process_request=_unauthorized if kind == "http-401" else None
        )
    port = server.sockets[0].getsockname()[1]
    url = f"ws://127.0.0.1:{port}/v1/realtime"
    try:
        settings = load_settings(
            realtime_model="gpt-realtime",
            realtime_url=url,
            openai_api_key="sk-test-not-real",
        )
        runs = RunSettings(runs=1, timeout_ms=timeout_ms)
        findings = await asyncio.wait_for(run_probe(settings, tmp_path, runs=runs), 60)
    finally:
        server.close()
        await server.wait_closed()
    report, markdown = _load(tmp_path)
    assert exit_code(findings) == 1 and report["recommended"] is None
    for combo in report["combos"]:
        assert expected in combo["detail"], combo["detail"]
        assert f"(combo {combo['combo']}): **{combo['status']}**" in markdown
    if kind == "http-401":
        assert "Incorrect API key provided" in report["combos"][0]["detail"]


async def test_beta_disabled_server_rejects_combo_b_with_close_4000(tmp_path: Path) -> None:
    from sim.openai_realtime import RealtimeEmulator

    emulator = RealtimeEmulator(host="127.0.0.1", port=0)  # refuses the beta, as the API does
    await emulator.start()
    try:
        settings = load_settings(
            realtime_model="gpt-realtime",
            realtime_url=emulator.url,
            openai_api_key="sk-test-not-real",
        )
        runs = RunSettings(runs=1, timeout_ms=4000, audio_ms=600)
        findings = await run_probe(settings, tmp_path, url=emulator.url, runs=runs)
    finally:
        await emulator.stop()
    report, markdown = _load(tmp_path)
    b = _combo(report, "B")
    assert b["status"] == "retired", b["detail"]
    said = next(
        e["message"]
        for session in emulator.sessions
        for e in session.errors_sent
        if e["code"] == "beta_api_shape_disabled"
    )
    assert said in b["detail"]  # the API's own words
    assert {"code": 4000, "reason": b["closes"][0]["reason"]} in b["closes"]
    codes = [e["code"] for e in b["other_errors"] + b["session_update_errors"]]
    assert "beta_api_shape_disabled" in codes + [b["closes"][0]["reason"]]
    assert _negative(report, "beta_modalities_audio_only")["result"] == "retired"
    assert _combo(report, "A")["status"] == "works"
    assert report["recommended"]["combo"] == "A" and exit_code(findings) == 0
    assert "beta_api_shape_disabled" in markdown and "4000" in markdown
    assert "retired the beta dialect" in markdown and said in markdown
    assert "**not tested**" in markdown


# --- the pure part -----------------------------------------------------------------------------


def test_models_list_is_comma_separated() -> None:
    assert models_of(" gpt-realtime, gpt-realtime-mini,,gpt-realtime ") == [
        "gpt-realtime",
        "gpt-realtime-mini",
    ]


def test_mutations_set_and_delete_dotted_paths_on_a_copy() -> None:
    payload: dict[str, Any] = {
        "type": "session.update",
        "session": {"type": "realtime", "audio": {}},
    }
    changed = apply_mutations(
        payload, (("session.type", DELETE), ("session.audio.input.format.rate", 16000))
    )
    assert changed == {
        "type": "session.update",
        "session": {"audio": {"input": {"format": {"rate": 16000}}}},
    }
    assert payload["session"]["type"] == "realtime"


def test_error_events_of_any_shape_are_recorded_not_raised() -> None:
    assert ErrorSeen.from_event({"type": "error"}) == ErrorSeen()
    assert ErrorSeen.from_event({"type": "error", "error": "boom"}) == ErrorSeen()
    seen = ErrorSeen.from_event({"error": {"code": "beta_api_shape_disabled", "message": 5}})
    assert seen.beta_disabled and seen.message == "5"


def _run(combo: Combo, ok: bool, run: int = 1) -> RunFinding:
    return RunFinding(
        model="m",
        schema=combo.schema,
        beta_header=combo.beta_header,
        run=run,
        session_update={"type": "session.update", "session": {"voice": "alloy"}},
        session_created=SessionSeen.from_session({}),
        session_update_result="accepted" if ok else "rejected",
        session_update_error=None if ok else ErrorSeen("unknown_parameter", "Unknown parameter"),
        response_result="accepted",
        audio_deltas=3 if ok else 0,
        audio_types=["response.audio.delta"] if ok else [],
    )


def _findings(runs: list[RunFinding]) -> ProbeFindings:
    return ProbeFindings("t", "ws://127.0.0.1:1", ["m"], True, 1, 600, 1000, "alloy", "test", runs)


def test_recommendation_prefers_ga_then_beta_and_exit_code_follows() -> None:
    a, b, c, d = (
        Combo("audio", False),
        Combo("flat", True),
        Combo("audio", True),
        Combo("flat", False),
    )
    only_b = _findings([_run(a, False), _run(b, True), _run(c, False), _run(d, False)])
    best = recommend(summarise_all(only_b))
    assert best is not None and best.combo == b and exit_code(only_b) == 0
    assert "### Combo B (flat schema, beta header on)" in render_markdown(only_b)
    none = _findings([_run(x, False) for x in (a, b, c, d)])
    assert recommend(summarise_all(none)) is None and exit_code(none) == 1
    assert render_json(none)["recommended"] is None
    silent = _run(a, True, 2)
    silent.audio_deltas, silent.audio_types = 0, []
    summary = summarise_all(_findings([_run(a, True, 1), silent]))[0]
    assert summary.status == "flaky" and not summary.works and summary.runs_with_audio == 1


def test_inline_code_survives_backticks() -> None:
    assert code("a`b") == "``a`b``"
    assert code("") == '`""`'


@pytest.mark.parametrize(
    ("schema", "header", "verdict"),
    [
        ("audio", False, "ready"),
        ("flat", True, "switch: beta_api_shape_disabled: "),  # retired: the gateway goes to GA
        ("flat", False, "refused: "),
    ],
)
async def test_the_probe_says_what_the_gateways_own_handshake_would_decide(
    schema: str, header: bool, verdict: str
) -> None:
    from shared.runtime.settings import load_settings
    from sim.openai_realtime import RealtimeEmulator
    from tools.probe_findings import Combo
    from tools.probe_io import Target, probe_run

    async with RealtimeEmulator() as emulator:  # the beta refused, as the live API does
        target = Target(url=emulator.url, models=["gpt-realtime"], api_key="sk-x", runs=1)
        pcm = b"\x00\x00" * 24000
        finding = await probe_run(
            target,
            "gpt-realtime",
            Combo(schema, header),
            1,
            load_settings().session_config(),
            pcm,
            {},
        )
    assert (finding.gateway_verdict or "").startswith(verdict), finding.gateway_verdict


async def test_the_probe_finds_combo_b_ready_where_the_beta_is_still_served() -> None:
    from shared.runtime.settings import load_settings
    from sim.openai_realtime import RealtimeEmulator
    from tools.probe_findings import Combo
    from tools.probe_io import Target, probe_run

    async with RealtimeEmulator(beta="accept") as emulator:
        target = Target(url=emulator.url, models=["gpt-realtime"], api_key="sk-x", runs=1)
        config = load_settings().session_config()
        pcm = b"\x00\x00" * 24000
        finding = await probe_run(target, "gpt-realtime", Combo("flat", True), 1, config, pcm, {})
    assert finding.gateway_verdict == "ready"


# --- combo C (GPT-Live) ------------------------------------------------------------------------


def test_the_emulator_report_has_combo_c_beside_a_and_b(emulator_report: Any) -> None:
    """The Live endpoint answered as the live API does: a session that returns audio, and every
    check accepted or refused as the types and the docs say."""
    report, markdown, _, printed = emulator_report
    live = report["live"]
    assert live["combo"] == "C" and live["url"].endswith("/v1/live/sessions")
    assert live["status"] == "works", live["detail"]
    assert all(run["ok"] and run["ms_to_first_sound"] is not None for run in live["runs"])
    wrong = [c for c in live["checks"] if not c["ok"]]
    assert wrong == [], wrong
    refused = [c for c in live["checks"] if c["expect"] == "refused"]
    # Each refusal in the endpoint's own words: an error event, a close, or an HTTP status.
    assert refused and all(c["error"] or c["close_code"] or c["connect_error"] for c in refused)
    model_in_url = next(c for c in live["checks"] if c["check"] == "model_in_url")
    assert model_in_url["outcome"] == "refused"
    assert "## GPT-Live (combo C)" in markdown and "| check | expected |" in markdown
    assert "combo C (live)" in printed


def _session_start_event(check_id: str) -> dict[str, Any]:
    from tools.probe_live import LIVE_CHECKS, _config, _mutate

    check = next(c for c in LIVE_CHECKS if c.id == check_id)
    config = _mutate(_config("gpt-live-1.1", 24000, "marin", "Be brief."), check)
    return {"type": "session.start", "session": config}


def test_the_live_checks_agree_with_the_sdks_types() -> None:
    """What a check expects the endpoint to accept validates against the official types with
    nothing unknown; what it expects refused for its shape does not (or carries an unknown key)."""
    from openai.types.live import ClientEvent
    from pydantic import TypeAdapter, ValidationError

    from tools.probe_live import LIVE_CHECKS

    adapter = TypeAdapter(ClientEvent)
    for check in LIVE_CHECKS:
        if check.first or check.again or check.model_in_url:
            continue  # refused for when or where it is sent, not for its shape
        event = _session_start_event(check.id)
        try:
            parsed = adapter.validate_python(event)
            extra = parsed.session.model_extra or {}  # type: ignore[union-attr]
            fits = not extra
        except ValidationError:
            fits = False
        assert fits is (check.expect == "accepted"), (check.id, event)


def test_live_verdicts_from_hand_made_findings() -> None:
    from tools.probe_live import LiveFindings, LiveRunFinding, summarise_live

    def findings(*runs: LiveRunFinding) -> LiveFindings:
        return LiveFindings("ws://127.0.0.1:1/v1/live/sessions", "gpt-live-1.1", 24000, list(runs))

    assert summarise_live(findings(LiveRunFinding(1, ok=True)))[0] == "works"
    assert summarise_live(findings(LiveRunFinding(1, ok=True), LiveRunFinding(2)))[0] == "flaky"
    refused = LiveRunFinding(1, errors=[ErrorSeen("unknown_parameter", "Unknown parameter")])
    assert summarise_live(findings(refused)) == ("refused", "unknown_parameter: Unknown parameter")
    gone = LiveRunFinding(1, failure="cannot connect to ws://x: refused")
    assert summarise_live(findings(gone))[0] == "unreachable"
