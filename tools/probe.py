"""``make probe``: regenerate the dialect report from the configured Realtime endpoint.

For every model in ``REALTIME_MODEL`` (comma-separated) it tries schema ``audio``/``flat`` x beta
header on/off, ``RUNS`` times each, with the gateway's own dialect payloads, and re-sends the
dialect report's known rejections to record the server's exact words. Beside them it probes
combo C, GPT-Live, at ``/v1/live/sessions`` on the same host (:mod:`tools.probe_live`: ``RUNS``
sessions and what the endpoint accepted and refused); ``PROBE_LIVE=0`` skips it. With
``REALTIME_SCHEMA=live``, ``REALTIME_URL`` and ``REALTIME_MODEL`` are the Live ones and the
Realtime combos are probed at ``/v1/realtime`` on the same host with ``gpt-realtime``. It writes
``dialect-report.md`` (the report's layout) and ``dialect-report.json`` (raw findings) into
``PROBE_OUT`` (default: the current folder), prints a table and the combination it recommends for
Twilio, and exits 0 when at least one combination works, 1 otherwise (2: bad settings).

Without ``OPENAI_API_KEY`` it starts the Realtime emulator in-process on a free port of
127.0.0.1 and probes that, so the command works on a laptop without a key.

Modules: :mod:`tools.probe_findings` (records and verdicts, pure), :mod:`tools.probe_report`
(markdown/JSON/table, pure), :mod:`tools.probe_io` (the network).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from shared.runtime.settings import Settings, settings_or_exit
from tools.probe_findings import NEGATIVE_CHECKS, ProbeFindings, recommend, summarise_all
from tools.probe_report import render_json, render_markdown, render_table
from tools.run_settings import RunSettings, run_settings_or_exit

MARKDOWN_NAME = "dialect-report.md"
JSON_NAME = "dialect-report.json"
# The emulator wants a bearer token; this one is not a secret and never leaves 127.0.0.1.
EMULATOR_KEY = "sk-emulator-probe"


def models_of(setting: str) -> list[str]:
    """``REALTIME_MODEL`` as a list: comma-separated, blanks and repeats dropped, order kept."""
    return list(dict.fromkeys(m.strip() for m in setting.split(",") if m.strip()))


def write_report(findings: ProbeFindings, out_dir: Path) -> tuple[Path, Path]:
    """Write the markdown report and its JSON twin; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown, raw = out_dir / MARKDOWN_NAME, out_dir / JSON_NAME
    markdown.write_text(render_markdown(findings), encoding="utf-8")
    raw.write_text(
        json.dumps(render_json(findings), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return markdown, raw


def exit_code(findings: ProbeFindings) -> int:
    """0 when some combination works (there is something to recommend), 1 otherwise."""
    from tools.probe_live import summarise_live

    live_works = findings.live is not None and summarise_live(findings.live)[0] == "works"
    return 0 if recommend(summarise_all(findings)) or live_works else 1


def endpoints(settings: Settings, url: str | None) -> tuple[str, list[str], str, str]:
    """(Realtime URL, Realtime models, Live URL, Live model) for a probe of ``url`` (default
    ``REALTIME_URL``), whichever of the two endpoints it names."""
    from tools.probe_live import LIVE_MODEL, live_url_beside

    given = url or settings.realtime_url
    if settings.realtime_schema == "live":
        parts = urlsplit(given)
        realtime = urlunsplit((parts.scheme, parts.netloc, "/v1/realtime", "", ""))
        return realtime, ["gpt-realtime"], given, settings.realtime_model
    return given, models_of(settings.realtime_model), live_url_beside(given), LIVE_MODEL


async def run_probe(
    settings: Settings,
    out_dir: Path,
    *,
    url: str | None = None,
    api_key: str | None = None,
    emulator: bool | None = None,
    concurrency: int = 4,
    runs: RunSettings | None = None,
) -> ProbeFindings:
    """Probe ``url`` (default ``REALTIME_URL``) with ``settings`` and write the report files;
    ``runs`` (default: ``RUNS``, ``AUDIO_MS``, ``TIMEOUT_MS`` from the environment)."""
    # Imported here so `--help` and a configuration error do not need the dialect layer.
    from tools.probe_io import Target, probe

    runs = runs or RunSettings()  # type: ignore[call-arg]  # read from the environment
    if api_key is None and settings.openai_api_key is not None:
        api_key = settings.openai_api_key.get_secret_value()
    realtime_url, models, live_url, live_model = endpoints(settings, url)
    target = Target(
        url=realtime_url,
        models=models,
        api_key=api_key or EMULATOR_KEY,
        runs=runs.runs,
        audio_ms=runs.audio_ms,
        timeout_ms=runs.timeout_ms,
        concurrency=concurrency,
    )
    findings = await probe(
        target,
        settings.session_config(),
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        emulator=settings.uses_emulator if emulator is None else emulator,
        voice=settings.realtime_voice,
    )
    if os.environ.get("PROBE_LIVE", "1") != "0":
        from tools.probe_live import probe_live
        from tools.smoke_run import caller_speech

        rate = settings.realtime_audio_rate if settings.realtime_audio_rate == 16000 else 24000
        findings.live = await probe_live(
            live_url,
            api_key or EMULATOR_KEY,
            model=live_model,
            rate=rate,
            voice=settings.realtime_voice,
            instructions=settings.realtime_instructions,
            runs=runs.runs,
            speech=caller_speech(runs.audio_ms, rate),
            timeout_ms=runs.timeout_ms,
        )
    write_report(findings, out_dir)
    return findings


def _announce(settings: Settings, runs: RunSettings, url: str, out_dir: Path) -> None:
    from tools.probe_live import LIVE_CHECKS

    realtime_url, models, live_url, live_model = endpoints(settings, url)
    live = (
        f"; combo C at {live_url} ({live_model}): {runs.runs} run(s) and {len(LIVE_CHECKS)} checks"
        if os.environ.get("PROBE_LIVE", "1") != "0"
        else ""
    )
    print(
        f"probe: {realtime_url}, models {', '.join(models)}: 4 combinations x {runs.runs} "
        f"run(s) and {len(NEGATIVE_CHECKS)} negative checks per model{live}; "
        f"TIMEOUT_MS={runs.timeout_ms}; report into {out_dir.resolve()}",
        flush=True,
    )


async def amain(argv: list[str] | None = None) -> int:
    """The command; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.probe", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--out", help="folder for the report files (default: PROBE_OUT or .)")
    parser.add_argument("--concurrency", type=int, default=4, help="connections at once (4)")
    args = parser.parse_args(argv)
    settings = settings_or_exit("probe")
    runs = run_settings_or_exit("probe")
    out_dir = Path(args.out or os.environ.get("PROBE_OUT") or ".")
    concurrency = max(1, args.concurrency)
    if settings.openai_api_key is None:
        from sim.openai_realtime import RealtimeEmulator

        emulator = RealtimeEmulator(host="127.0.0.1", port=0)
        await emulator.start()
        print(f"probe: no OPENAI_API_KEY: probing the local emulator started at {emulator.url}")
        try:
            _announce(settings, runs, emulator.url, out_dir)
            findings = await run_probe(
                settings,
                out_dir,
                url=emulator.url,
                emulator=True,
                concurrency=concurrency,
                runs=runs,
            )
        finally:
            await emulator.stop()
    else:
        _announce(settings, runs, settings.realtime_url, out_dir)
        findings = await run_probe(settings, out_dir, concurrency=concurrency, runs=runs)
    print(render_table(findings))
    print(f"wrote {out_dir / MARKDOWN_NAME} and {out_dir / JSON_NAME}")
    return exit_code(findings)


def main() -> None:
    try:
        code = asyncio.run(amain())
    except KeyboardInterrupt:
        print("probe: interrupted", file=sys.stderr)
        code = 130
    raise SystemExit(code)


if __name__ == "__main__":
    main()
