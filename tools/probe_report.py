"""Render a probe's findings as the dialect report (markdown), its JSON twin and a terminal table.

Pure: it takes :class:`~tools.probe_findings.ProbeFindings` and returns text, so the report's
layout is tested without a network. The markdown follows the hand-written dialect report's
sections (Goal, Verified Combo, Smoke Test, Env Vars, Known Pitfalls, Observations) so a reader
can diff a regenerated report against the original; the JSON carries every raw run.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from tools.probe_errors import ErrorSeen
from tools.probe_findings import (
    BETA_HEADER,
    COMMIT_EMPTY_CODE,
    ComboSummary,
    NegativeFinding,
    ProbeFindings,
    recommend,
    summarise_all,
)
from tools.probe_live import live_json, live_markdown, live_table


def compact(value: Any) -> str:
    """JSON as the dialect report writes it: no spaces."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def code(text: Any) -> str:
    """Inline code that survives backticks inside ``text``."""
    text = str(text)
    if not text:
        return '`""`'
    fence = "`"
    while fence in text:
        fence += "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def dotted(value: Any, prefix: str) -> list[tuple[str, Any]]:
    """Leaves of a JSON object as (dotted.path, value); empty objects are leaves too."""
    if isinstance(value, dict) and value:
        return [pair for key, child in value.items() for pair in dotted(child, f"{prefix}.{key}")]
    return [(prefix, value)]


def payload_bullets(payload: dict[str, Any] | None, indent: str = "  ") -> list[str]:
    """The session.update payload as the report's bullet list of ``session.*`` keys."""
    if not payload:
        return [f"{indent}- (not sent)"]
    lines = []
    for path, value in dotted(payload.get("session", {}), "session"):
        shown = compact(value)
        if len(shown) > 100:  # instructions: the JSON twin has them whole
            shown = shown[:96] + '..."'
        lines.append(f"{indent}- {code(f'{path}: {shown}')}")
    return lines


def describe_error(error: ErrorSeen) -> str:
    """An error in the report's words: the exact message, then code and param."""
    parts = [code(error.message or "(no message)")]
    if error.code:
        parts.append(f"code {code(error.code)}")
    if error.param:
        parts.append(f"param {code(error.param)}")
    if error.gateway_kind:
        parts.append(f"the gateway reads it as {code(error.gateway_kind)}")
    return ", ".join(parts)


def _close(close_code: int | None, reason: str | None) -> str:
    return f"{close_code} {code(reason)}" if reason else f"{close_code}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _title(summary: ComboSummary, models: list[str]) -> str:
    suffix = f", model {code(summary.model)}" if len(models) > 1 else ""
    return f"{summary.combo.title}{suffix}"


def _combo_section(summary: ComboSummary, models: list[str], recommended: bool) -> list[str]:
    first = summary.first
    lines = [
        f"### {_title(summary, models)}",
        f"- Model: {code(summary.model)}",
        f"- URL: {code(first.url) if first.url else '(not connected)'}",
        f"- Header: {code(BETA_HEADER)} **{summary.combo.header}**",
        f"- Session update shape: {code(summary.combo.schema)}",
        "- Session update payload:",
        *payload_bullets(first.session_update),
        "- Response create shape:",
        f"  - {code(compact(first.response_create)) if first.response_create else '(not sent)'}",
        "- Output event: " + (" or ".join(code(t) for t in summary.audio_types) or "(none seen)"),
        f"- Result: **{summary.status}**: {summary.detail}",
        "- Notes:",
    ]
    notes = []
    if summary.transcript_types:
        notes.append("transcript events: " + ", ".join(code(t) for t in summary.transcript_types))
    if summary.commit_empty_runs:
        tail = ", but audio delta still arrived." if summary.runs_with_audio else "."
        notes.append(
            f"{code(COMMIT_EMPTY_CODE)} appeared in {summary.commit_empty_runs}/"
            f"{summary.runs} runs{tail}"
        )
    for error in summary.session_update_errors:
        notes.append(f"`session.update` rejected: {describe_error(error)}")
    for error in summary.response_errors:
        notes.append(f"`response.create` rejected: {describe_error(error)}")
    for close_code, reason in summary.closes:
        notes.append(f"server closed the socket: {_close(close_code, reason)}")
    if recommended:
        notes.append(
            "**This combo is recommended for Twilio integration** (PCM24k <-> PCMU 8k "
            "conversion in the transcoder)."
        )
    lines += [f"  - {note}" for note in notes] or ["  - (none)"]
    return lines + [""]


def _pitfalls(findings: ProbeFindings, summaries: list[ComboSummary]) -> list[str]:
    """Known pitfalls, each derived from something this probe saw."""
    lines = []
    for s in summaries:
        where = f"{s.combo.schema} schema with the beta header {s.combo.header} ({code(s.model)})"
        if s.status == "retired":
            closes = ", ".join(f"close {_close(c, r)}" for c, r in s.closes)
            lines.append(
                f"- {where}: the server retired the beta dialect "
                f"({code('beta_api_shape_disabled')}{', ' + closes if closes else ''}): "
                f"{s.detail.split(': ', 1)[-1]} The gateway goes on in GA (combo A) when it "
                "meets this; `make smoke` with combo B fails with this message."
            )
        for error in s.session_update_errors:
            lines.append(f"- {where}: `session.update` is rejected: {describe_error(error)}.")
        for error in s.response_errors:
            lines.append(f"- {where}: `response.create` is rejected: {describe_error(error)}.")
    for n in findings.negatives:
        if n.result == "rejected" and n.error:
            lines.append(
                f"- {n.spec.dialect}, {code(n.model)}: {n.spec.report_says} "
                f"Server: {describe_error(n.error)}."
            )
    by_type: dict[str, list[str]] = {}
    for s in summaries:
        for t in s.audio_types:
            by_type.setdefault(t, []).append(s.combo.letter)
    if len(by_type) > 1:
        names = "; ".join(
            f"{code(t)} (combo {', '.join(dict.fromkeys(c))})" for t, c in by_type.items()
        )
        lines.append(f"- Audio event names vary by dialect: {names}; accept both.")
    empties = sum(s.commit_empty_runs for s in summaries)
    if empties:
        lines.append(
            f"- {code(COMMIT_EMPTY_CODE)} appeared in {empties} run(s): a client commit "
            "racing server VAD; not a failure when audio follows."
        )
    for s in summaries:
        if s.audio_types and s.parsed and not s.parsed.get("AudioDelta"):
            names = ", ".join(code(t) for t in s.audio_types)
            lines.append(
                f"- {s.combo.title} ({code(s.model)}): the gateway's dialect layer did "
                f"not parse {names} as audio."
            )
    return lines or ["- (no rejection observed)"]


def _observation(summary: ComboSummary) -> list[str]:
    s, first = summary, summary.first
    head = (
        f"- {code(s.model)}: {code(f'REALTIME_BETA_HEADER={int(s.combo.beta_header)}')} + "
        f"{code(f'REALTIME_SCHEMA={s.combo.schema}')} (combo {s.combo.letter}): "
        f"**{s.status}**, {s.detail}"
    )
    lines = [head]
    if s.connect_errors:
        lines.append("  - connection: " + "; ".join(s.connect_errors))
    if s.status == "unreachable":
        return lines
    seen = first.session_created
    if seen is None:
        lines.append("  - no `session.created`")
    else:
        modal = (
            f"{code('output_modalities: ' + compact(seen.output_modalities))}"
            if seen.output_modalities is not None
            else f"{code('modalities: ' + compact(seen.modalities))}"
        )
        lines.append(
            f"  - `session.created` after {_ms(s.ms_session_created)} (median) reports input "
            f"format {code(compact(seen.input_format))}, output format "
            f"{code(compact(seen.output_format))}, {modal}; "
            f"exposes an `audio` object: {'yes' if seen.has_audio_object else 'no'}"
            + (
                f"; the gateway reads it as {code(seen.gateway_reads)}"
                if seen.gateway_reads
                else ""
            )
        )
        lines.append(f"  - raw session (trimmed): {code(compact(seen.raw))}")
    su = ", ".join(s.session_update_results)
    lines.append(
        f"  - `session.update`: {su}"
        + "".join(f"; {describe_error(e)}" for e in s.session_update_errors)
    )
    rc = ", ".join(s.response_results)
    lines.append(
        f"  - `response.create`: {rc}"
        + "".join(f"; {describe_error(e)}" for e in s.response_errors)
    )
    audio = ", ".join(code(t) for t in s.audio_types) or "none"
    transcript = ", ".join(code(t) for t in s.transcript_types) or "none"
    timing = (
        f"; first audio delta {_ms(s.ms_first_audio)} after `response.create` (median)"
        if s.ms_first_audio is not None
        else ""
    )
    lines.append(f"  - audio events: {audio}; transcript events: {transcript}{timing}")
    if s.parsed:
        parsed = ", ".join(f"{name} x{count}" for name, count in s.parsed.items())
        lines.append(f"  - the gateway's dialect layer parsed: {parsed}")
    lines.append(f"  - {code(COMMIT_EMPTY_CODE)} appeared in {s.commit_empty_runs}/{s.runs} runs")
    for error in s.other_errors:
        lines.append(f"  - other error: {describe_error(error)}")
    for close_code, reason in s.closes:
        lines.append(f"  - server closed: {_close(close_code, reason)}")
    lines.append("  - all event types: " + (", ".join(code(t) for t in s.event_types) or "none"))
    return lines


def _negative(n: NegativeFinding) -> list[str]:
    spec = n.spec
    if n.reproduced:
        verdict = "reproduced"
    elif n.result in ("rejected", "accepted", "no answer"):
        verdict = "NOT reproduced"
    else:  # the payload never reached a session that could judge it
        verdict = "not tested"
    if n.error:
        observed = f"{n.result}: {describe_error(n.error)}"
    elif n.connect_error:
        observed = f"{n.result}: {n.connect_error}"
    else:
        observed = n.result
    if n.close_code is not None:
        observed += f" (server closed {_close(n.close_code, n.close_reason)})"
    changes = ", ".join(
        code(f"{path}: {'(removed)' if value == '<delete>' else compact(value)}")
        for path, value in spec.mutations
    )
    return [
        f"- {code(spec.id)} ({spec.dialect}, {code(n.model)}, {code(spec.target)}): "
        f"the report says {spec.report_says} Observed: {observed}. **{verdict}**",
        f"  - sent combo {spec.combo.letter}'s {code(spec.target)} with {changes}",
    ]


def render_markdown(findings: ProbeFindings) -> str:
    """The dialect report, regenerated from what the probe saw."""
    summaries = summarise_all(findings)
    best = recommend(summaries)
    where = " (the local emulator: no `OPENAI_API_KEY`)" if findings.emulator else ""
    lines = [
        "# Realtime Dialect Report",
        "",
        f"_Regenerated by `make probe` at {findings.generated_at} against {code(findings.url)}"
        f"{where}; models {', '.join(code(m) for m in findings.models)}; RUNS={findings.runs}, "
        f"AUDIO_MS={findings.audio_ms}, TIMEOUT_MS={findings.timeout_ms}; input audio: "
        f"{findings.audio_source}. Raw findings: `dialect-report.json`._",
        "",
        "## Goal",
        "Document the exact OpenAI Realtime “dialect” that reliably returns audio deltas.",
        "",
        "## Verified Combo (probe results)",
    ]
    working = [s for s in summaries if s.works]
    if not working:
        lines += ["No combination returned audio in every run.", ""]
    for s in working:
        lines += _combo_section(s, findings.models, s is best)
    failing = [s for s in summaries if not s.works]
    if failing:
        lines += ["## Combos That Did Not Work"]
        for s in failing:
            lines += _combo_section(s, findings.models, False)
    if findings.live is not None:
        lines += ["## GPT-Live (combo C)", *live_markdown(findings.live)]
    lines += ["## Smoke Test", "Use the smoke test before Twilio integration."]
    if best:
        lines += [
            "",
            "```bash",
            f"OPENAI_API_KEY=... REALTIME_MODEL={best.model} {best.combo.env} make smoke",
            "```",
        ]
    lines += [
        "",
        "Regenerate this report with `make probe` (without a key it probes the local emulator).",
        "",
        "### Env Vars",
        f"- `REALTIME_MODEL` default: `gpt-realtime` (the probe takes a comma-separated list; "
        f"probed: {', '.join(code(m) for m in findings.models)})",
        "- `REALTIME_URL` default: `wss://api.openai.com/v1/realtime` "
        f"(probed: {code(findings.url)})",
        "- `REALTIME_BETA_HEADER`: `1` to send `OpenAI-Beta: realtime=v1`, `0` to omit "
        "(the probe tries both)",
        "- `REALTIME_SCHEMA`: `flat` or `audio` "
        "(the probe tries both; the gateway also takes `auto`)",
        "- `REALTIME_AUDIO_RATE`: output/input sample rate for audio schema (default `24000`)",
        "- `REALTIME_COMMIT_FRAMES`: Twilio frame count before commit (default `50`)",
        f"- `RUNS`: runs per combination (default `10`; this probe: {findings.runs})",
        "- `AUDIO_MS`: input audio duration in ms "
        f"(default `600`; this probe: {findings.audio_ms})",
        f"- `TIMEOUT_MS`: per-step timeout (default `8000`; this probe: {findings.timeout_ms})",
        "- `PROBE_OUT`: folder for `dialect-report.md` and `dialect-report.json` "
        "(default: the current folder)",
        "",
        "## Known Pitfalls",
        *_pitfalls(findings, summaries),
        "",
        "## Observations (probe runs)",
    ]
    for s in summaries:
        lines += _observation(s)
    for model in findings.models:
        negatives = [n for n in findings.negatives if n.model == model]
        if negatives:
            lines += ["", f"### Negative checks ({code(model)}): the report's known rejections"]
            for n in negatives:
                lines += _negative(n)
    lines += [
        "",
        "## Recommendation for Twilio",
        (
            f"{best.combo.title} on {code(best.model)} ({code(best.combo.env)})."
            if best
            else "None: no combination returned audio in every run."
        ),
    ]
    return "\n".join(lines) + "\n"


def _summary_json(s: ComboSummary) -> dict[str, Any]:
    first = s.first
    return {
        "model": s.model,
        "combo": s.combo.letter,
        "schema": s.combo.schema,
        "beta_header": s.combo.beta_header,
        "status": s.status,
        "detail": s.detail,
        "works": s.works,
        "runs": s.runs,
        "runs_ok": s.runs_ok,
        "runs_with_audio": s.runs_with_audio,
        "url": first.url,
        "headers": first.headers,
        "session_update": first.session_update,
        "response_create": first.response_create,
        "session_created": asdict(first.session_created) if first.session_created else None,
        "session_update_results": s.session_update_results,
        "session_update_errors": [asdict(e) for e in s.session_update_errors],
        "response_results": s.response_results,
        "response_errors": [asdict(e) for e in s.response_errors],
        "other_errors": [asdict(e) for e in s.other_errors],
        "audio_types": s.audio_types,
        "transcript_types": s.transcript_types,
        "event_types": s.event_types,
        "parsed": s.parsed,
        "ms_session_created_median": s.ms_session_created,
        "ms_first_audio_median": s.ms_first_audio,
        "commit_empty_runs": s.commit_empty_runs,
        "closes": [{"code": c, "reason": r} for c, r in s.closes],
        "connect_errors": s.connect_errors,
    }


def render_json(findings: ProbeFindings) -> dict[str, Any]:
    """The raw findings and the verdicts drawn from them, as one JSON-ready object."""
    summaries = summarise_all(findings)
    best = recommend(summaries)
    return {
        "generated_at": findings.generated_at,
        "target": {
            "url": findings.url,
            "models": findings.models,
            "emulator": findings.emulator,
            "runs": findings.runs,
            "audio_ms": findings.audio_ms,
            "timeout_ms": findings.timeout_ms,
            "voice": findings.voice,
            "audio_source": findings.audio_source,
        },
        "recommended": None
        if best is None
        else {
            "model": best.model,
            "combo": best.combo.letter,
            "schema": best.combo.schema,
            "beta_header": best.combo.beta_header,
        },
        "combos": [_summary_json(s) for s in summaries],
        "negative_checks": [
            {
                **asdict(n),
                "dialect": n.spec.dialect,
                "target": n.spec.target,
                "report_says": n.spec.report_says,
                "reproduced": n.reproduced,
            }
            for n in findings.negatives
        ],
        "runs": [asdict(r) for r in findings.run_findings],
        "live": live_json(findings.live) if findings.live is not None else None,
    }


def render_table(findings: ProbeFindings) -> str:
    """A compact terminal table of the verdicts, the negative checks and the recommendation."""
    summaries = summarise_all(findings)
    rows = [
        (
            "model",
            "combo",
            "schema",
            "header",
            "result",
            "ok",
            "session.update",
            "response.create",
            "audio event",
            "created",
            "1st audio",
        )
    ]
    for s in summaries:
        rows.append(
            (
                s.model,
                s.combo.letter,
                s.combo.schema,
                s.combo.header,
                s.status,
                f"{s.runs_ok}/{s.runs}",
                "/".join(s.session_update_results),
                "/".join(s.response_results),
                ",".join(s.audio_types) or "-",
                _ms(s.ms_session_created),
                _ms(s.ms_first_audio),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    for s in summaries:
        if not s.works:
            out.append(f"  {s.model} combo {s.combo.letter}: {s.detail}")
    if findings.negatives:
        out.append("negative checks:")
        for n in findings.negatives:
            said = n.error.message if n.error else (n.connect_error or "")
            mark = "ok" if n.reproduced else "NO" if n.result in ("rejected", "accepted") else "--"
            out.append(f"  {mark}  {n.model} {n.check}: {n.result}" + (f": {said}" if said else ""))
    if findings.live is not None:
        out += live_table(findings.live)
    best = recommend(summaries)
    out.append(
        f"recommended for Twilio: {best.combo.title} on {best.model} ({best.combo.env})"
        if best
        else "recommended for Twilio: none (no combination returned audio)"
    )
    return "\n".join(out)
