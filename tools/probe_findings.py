"""What one dialect probe found, and the pure judgement of what it means.

The probe's I/O part (:mod:`tools.probe_io`) fills :class:`RunFinding` and :class:`NegativeFinding`
with raw facts (event type strings as the server spelt them, errors verbatim, close codes); this
module turns them into per-combination verdicts and a recommendation without any socket, clock or
import of the dialect layer, so the judgement can be tested on hand-made findings.
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from tools.probe_errors import BETA_DISABLED_CODE, ErrorSeen, trim

if TYPE_CHECKING:
    from tools.probe_live import LiveFindings

Outcome = Literal["accepted", "rejected", "no answer", "not sent"]
Schema = Literal["audio", "flat"]

COMMIT_EMPTY_CODE = "input_audio_buffer_commit_empty"
# Errors that say nothing about the payload's shape: a commit racing server VAD (the report saw it
# and audio still arrived) and a response.create racing the server's own VAD-triggered response.
BENIGN_CODES = frozenset({COMMIT_EMPTY_CODE, "conversation_already_has_active_response"})
BETA_HEADER = "OpenAI-Beta: realtime=v1"


@dataclass(frozen=True)
class Combo:
    """One schema x beta-header combination; letters follow the dialect report (A and B); the
    two pairs the report did not verify are A' (the audio schema with the header) and B' (the
    flat one without). Combo C is GPT-Live, a separate endpoint (:mod:`tools.probe_live`)."""

    schema: Schema
    beta_header: bool

    @property
    def letter(self) -> str:
        return {("audio", False): "A", ("flat", True): "B", ("audio", True): "A'"}.get(
            (self.schema, self.beta_header), "B'"
        )

    @property
    def header(self) -> str:
        return "on" if self.beta_header else "off"

    @property
    def title(self) -> str:
        return f"Combo {self.letter} ({self.schema} schema, beta header {self.header})"

    @property
    def env(self) -> str:
        return f"REALTIME_BETA_HEADER={int(self.beta_header)} REALTIME_SCHEMA={self.schema}"


# Preference order for the Twilio recommendation: the report runs Twilio on combo A, and third
# parties report the beta dialect being switched off, so GA without the header comes first.
COMBOS: tuple[Combo, ...] = (
    Combo("audio", False),
    Combo("flat", True),
    Combo("audio", True),
    Combo("flat", False),
)
GA = Combo("audio", False)
BETA = Combo("flat", True)


def _get(data: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


@dataclass(frozen=True)
class SessionSeen:
    """What ``session.created`` reported, in both dialects' spellings."""

    input_format: Any = None
    output_format: Any = None
    modalities: Any = None
    output_modalities: Any = None
    has_audio_object: bool = False
    session_type: Any = None
    voice: Any = None
    raw: Any = None
    gateway_reads: str | None = None  # the dialect layer's reading: "ga" or "beta"

    @classmethod
    def from_session(cls, session: Any) -> SessionSeen:
        session = session if isinstance(session, dict) else {}
        audio = session.get("audio")
        return cls(
            input_format=_get(session, "audio.input.format") or session.get("input_audio_format"),
            output_format=_get(session, "audio.output.format")
            or session.get("output_audio_format"),
            modalities=session.get("modalities"),
            output_modalities=session.get("output_modalities"),
            has_audio_object=isinstance(audio, dict),
            session_type=session.get("type"),
            voice=_get(session, "audio.output.voice") or session.get("voice"),
            raw=trim(session),
        )


@dataclass
class RunFinding:
    """Everything one connection of one combination observed, raw."""

    model: str
    schema: Schema
    beta_header: bool
    run: int
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)  # Authorization redacted
    session_update: dict[str, Any] | None = None
    response_create: dict[str, Any] | None = None
    connect_error: str | None = None
    session_created: SessionSeen | None = None
    ms_to_session_created: float | None = None  # from the start of the TCP connect
    session_update_result: Outcome = "not sent"
    session_update_error: ErrorSeen | None = None
    response_result: Outcome = "not sent"
    response_error: ErrorSeen | None = None
    other_errors: list[ErrorSeen] = field(default_factory=list)
    event_types: dict[str, int] = field(default_factory=dict)  # raw type -> count, first-seen order
    audio_types: list[str] = field(default_factory=list)
    transcript_types: list[str] = field(default_factory=list)  # the reply's (response.*)
    audio_deltas: int = 0
    ms_to_first_audio: float | None = None  # from sending response.create
    parsed: dict[str, int] = field(default_factory=dict)  # the dialect layer's event classes
    commit_empty: bool = False
    close_code: int | None = None
    close_reason: str | None = None
    timed_out: bool = False
    # What the gateway's own handshake core (shared/realtime_handshake.py) makes of the same
    # events: "ready", "refused: <why>", "switch: <why>", "dropped" (or None: undecided).
    gateway_verdict: str | None = None

    @property
    def combo(self) -> Combo:
        return Combo(self.schema, self.beta_header)

    @property
    def errors(self) -> list[ErrorSeen]:
        return [e for e in (self.session_update_error, self.response_error) if e] + list(
            self.other_errors
        )

    @property
    def beta_disabled(self) -> bool:
        return any(e.beta_disabled for e in self.errors) or BETA_DISABLED_CODE in (
            self.close_reason or ""
        )

    @property
    def ok(self) -> bool:
        """session.update accepted, response.create not rejected, and audio came back."""
        return (
            self.session_update_result == "accepted"
            and self.response_result != "rejected"
            and self.audio_deltas > 0
        )


@dataclass(frozen=True)
class NegativeCheck:
    """A payload the dialect report saw rejected, re-sent raw to see the server's exact error.

    ``mutations`` are applied to the gateway dialect's own payload for ``combo`` (dotted path,
    value; :data:`DELETE` removes the key), so the known rejection is the only difference.
    """

    id: str
    combo: Combo
    target: Literal["session.update", "response.create"]
    mutations: tuple[tuple[str, Any], ...]
    report_says: str
    expect_in_message: str | None = None

    @property
    def dialect(self) -> str:
        return "beta (header on)" if self.combo.beta_header else "GA (header off)"


DELETE = "<delete>"
_BOTH_RATES = ("session.audio.input.format.rate", "session.audio.output.format.rate")
NEGATIVE_CHECKS: tuple[NegativeCheck, ...] = (
    NegativeCheck(
        "ga_session_turn_detection",
        GA,
        "session.update",
        (("session.turn_detection", {"type": "server_vad"}),),
        "`session.turn_detection` is rejected (`Unknown parameter`) in this dialect.",
        "Unknown parameter",
    ),
    NegativeCheck(
        "ga_missing_session_type",
        GA,
        "session.update",
        (("session.type", DELETE),),
        "`session.update` requires `session.type` (e.g. `realtime`).",
    ),
    NegativeCheck(
        "ga_pcm_rate_16000",
        GA,
        "session.update",
        tuple((path, 16000) for path in _BOTH_RATES),
        "`audio/pcm` requires `rate >= 24000`.",
    ),
    NegativeCheck(
        "ga_pcm_without_rate",
        GA,
        "session.update",
        tuple((path, DELETE) for path in _BOTH_RATES),
        "`session.audio.*.format.rate` is required for `audio/pcm`.",
    ),
    NegativeCheck(
        "ga_response_modalities",
        GA,
        "response.create",
        (("response.modalities", ["audio", "text"]),),
        "`response.modalities` is rejected in this dialect.",
    ),
    NegativeCheck(
        "beta_session_audio",
        BETA,
        "session.update",
        (("session.audio", {"output": {"voice": "alloy"}}),),
        "`session.audio` can be rejected by some models with `Unknown parameter`.",
        "Unknown parameter",
    ),
    NegativeCheck(
        "beta_modalities_audio_only",
        BETA,
        "session.update",
        (("session.modalities", ["audio"]),),
        '`modalities: ["audio"]` is rejected; must use `["audio","text"]`.',
    ),
)


def apply_mutations(
    payload: dict[str, Any], mutations: tuple[tuple[str, Any], ...]
) -> dict[str, Any]:
    """A deep copy of ``payload`` with each dotted path set (missing objects created) or deleted."""
    result = copy.deepcopy(payload)
    for path, value in mutations:
        *parents, last = path.split(".")
        node = result
        for key in parents:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        if value == DELETE:
            node.pop(last, None)
        else:
            node[last] = copy.deepcopy(value)
    return result


@dataclass
class NegativeFinding:
    """What the server said to one :class:`NegativeCheck` payload."""

    model: str
    check: str
    payload: dict[str, Any] | None = None
    result: Literal[
        "rejected", "accepted", "no answer", "unreachable", "closed", "retired", "no session"
    ] = "no answer"
    error: ErrorSeen | None = None
    connect_error: str | None = None
    close_code: int | None = None
    close_reason: str | None = None

    @property
    def spec(self) -> NegativeCheck:
        return next(c for c in NEGATIVE_CHECKS if c.id == self.check)

    @property
    def reproduced(self) -> bool:
        """The server rejected it, in the report's words where the report quotes them."""
        if self.result != "rejected" or self.error is None:
            return False
        expected = self.spec.expect_in_message
        return expected is None or expected.lower() in (self.error.message or "").lower()


@dataclass
class ProbeFindings:
    """All raw findings of one probe, plus what it was pointed at (never the key)."""

    generated_at: str
    url: str
    models: list[str]
    emulator: bool
    runs: int
    audio_ms: int
    timeout_ms: int
    voice: str
    audio_source: str
    run_findings: list[RunFinding] = field(default_factory=list)
    negatives: list[NegativeFinding] = field(default_factory=list)
    live: LiveFindings | None = None  # combo C, GPT-Live (tools.probe_live)


# "retired": the server refused the beta dialect as retired (beta_api_shape_disabled, close 4000),
# as the live API does since May 2026.
Status = Literal["works", "flaky", "rejected", "retired", "no audio", "no session", "unreachable"]


def _distinct(items: list[Any]) -> list[Any]:
    seen: list[Any] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 1) if present else None


@dataclass
class ComboSummary:
    """The verdict on one model x combination over all its runs."""

    model: str
    combo: Combo
    status: Status
    detail: str
    runs: int
    runs_ok: int
    runs_with_audio: int
    first: RunFinding  # the run whose payloads and session.created the report shows
    session_update_results: list[str]
    session_update_errors: list[ErrorSeen]
    response_results: list[str]
    response_errors: list[ErrorSeen]
    other_errors: list[ErrorSeen]
    audio_types: list[str]
    transcript_types: list[str]
    event_types: list[str]
    parsed: dict[str, int]
    ms_session_created: float | None
    ms_first_audio: float | None
    commit_empty_runs: int
    closes: list[tuple[int | None, str | None]]
    connect_errors: list[str]

    @property
    def works(self) -> bool:
        return self.status == "works"


def summarise(model: str, combo: Combo, runs: list[RunFinding]) -> ComboSummary:
    """Judge one combination from its runs (at least one)."""
    ok = sum(r.ok for r in runs)
    with_audio = sum(r.audio_deltas > 0 for r in runs)
    su_errors = _distinct([r.session_update_error for r in runs if r.session_update_error])
    rc_errors = _distinct([r.response_error for r in runs if r.response_error])
    closes = _distinct([(r.close_code, r.close_reason) for r in runs if r.close_code is not None])
    connect_errors = _distinct([r.connect_error for r in runs if r.connect_error])
    parsed: dict[str, int] = {}
    for r in runs:
        for name, count in r.parsed.items():
            parsed[name] = parsed.get(name, 0) + count

    def first_error(errors: list[ErrorSeen]) -> str:
        e = errors[0]
        return f"{e.code or e.type}: {e.message}"

    status: Status
    if len(connect_errors) and all(r.connect_error for r in runs):
        status, detail = "unreachable", connect_errors[0]
    elif any(r.beta_disabled for r in runs):
        code, reason = closes[0] if closes else (None, None)
        said = next((e for r in runs for e in r.errors if e.beta_disabled), None)
        status = "retired"
        detail = (
            "the beta dialect is retired: "
            + (f"{BETA_DISABLED_CODE}: {said.message}" if said else BETA_DISABLED_CODE)
            + (f" (close {code} {reason})" if code else "")
        )
    elif su_errors:
        status, detail = "rejected", f"session.update rejected, {first_error(su_errors)}"
    elif rc_errors:
        status, detail = "rejected", f"response.create rejected, {first_error(rc_errors)}"
    elif ok == len(runs):
        status, detail = "works", f"{ok}/{len(runs)} runs returned audio"
    elif with_audio:
        status, detail = "flaky", f"{with_audio}/{len(runs)} runs returned audio"
    elif not any(r.session_created for r in runs):
        status = "no session"
        detail = "no session.created" + (f"; {connect_errors[0]}" if connect_errors else "")
    else:
        status, detail = "no audio", f"no audio delta in {len(runs)} run(s) within TIMEOUT_MS"
    shown = next((r for r in runs if r.session_created), runs[0])
    return ComboSummary(
        model=model,
        combo=combo,
        status=status,
        detail=detail,
        runs=len(runs),
        runs_ok=ok,
        runs_with_audio=with_audio,
        first=shown,
        session_update_results=_distinct([r.session_update_result for r in runs]),
        session_update_errors=su_errors,
        response_results=_distinct([r.response_result for r in runs]),
        response_errors=rc_errors,
        other_errors=_distinct([e for r in runs for e in r.other_errors]),
        audio_types=_distinct([t for r in runs for t in r.audio_types]),
        transcript_types=_distinct([t for r in runs for t in r.transcript_types]),
        event_types=_distinct([t for r in runs for t in r.event_types]),
        parsed=parsed,
        ms_session_created=_median([r.ms_to_session_created for r in runs]),
        ms_first_audio=_median([r.ms_to_first_audio for r in runs]),
        commit_empty_runs=sum(r.commit_empty for r in runs),
        closes=closes,
        connect_errors=connect_errors,
    )


def summarise_all(findings: ProbeFindings) -> list[ComboSummary]:
    """One summary per model and combination, models in the order given, combos A, B, A', B'."""
    summaries = []
    for model in findings.models:
        for combo in COMBOS:
            runs = [r for r in findings.run_findings if r.model == model and r.combo == combo]
            if runs:
                summaries.append(summarise(model, combo, sorted(runs, key=lambda r: r.run)))
    return summaries


def recommend(summaries: list[ComboSummary]) -> ComboSummary | None:
    """The combination for Twilio: the first working one in :data:`COMBOS` order, then model order.

    Combination first: staying on GA matters more than which model answers, since the beta dialect
    is reported disabled by some servers.
    """
    for combo in COMBOS:
        for summary in summaries:
            if summary.combo == combo and summary.works:
                return summary
    return None
