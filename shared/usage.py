"""What a call's Realtime sessions used, and what that is estimated to cost.

Pure: ``response.done``'s ``usage`` object (GA ``RealtimeResponseUsage``) in, token counts by
kind out; counts summed over a call; a price table (US dollars per million tokens, per model, per
kind) turning them into an estimated cost. The worker writes one ``usage`` event per response
(:func:`usage_fields`), so a call's total is the sum of its events, whichever workers served it.

Kinds: ``{text,audio,image}_in`` (input not served from the cache), ``{text,audio,image}_cached``
(cached input) and ``{text,audio}_out``. The API reports input tokens with the cached ones
included; they are split here so that each kind has one price.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

KINDS = (
    "text_in",
    "text_cached",
    "audio_in",
    "audio_cached",
    "image_in",
    "image_cached",
    "text_out",
    "audio_out",
)
# The default price table (US dollars per million tokens), as the model pages of
# developers.openai.com gave it on PRICES_AS_OF for gpt-realtime-1.5, gpt-realtime-2 and
# gpt-realtime-2.1-mini; gpt-realtime, gpt-realtime-2.1 and gpt-realtime-mini are assumed to cost
# what their nearest sibling costs (docs/usage-and-reports.md). Prices change: the operator must
# keep this current, or override it (REALTIME_PRICES).
PRICES_AS_OF = "2026-12-04"
PRICES_SOURCE = "https://developers.openai.com/api/docs/models/<model> (each model's page)"
_FULL = {"text_in": 4.0, "text_cached": 0.4, "audio_in": 32.0, "audio_cached": 0.4}
_FULL |= {"image_in": 5.0, "image_cached": 0.5, "audio_out": 64.0}
_MINI = {"text_in": 0.6, "text_cached": 0.06, "audio_in": 10.0, "audio_cached": 0.3}
_MINI |= {"image_in": 0.8, "image_cached": 0.08, "text_out": 2.4, "audio_out": 20.0}
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "gpt-realtime": {**_FULL, "text_out": 16.0},
    "gpt-realtime-1.5": {**_FULL, "text_out": 16.0},
    "gpt-realtime-2": {**_FULL, "text_out": 24.0},
    "gpt-realtime-2.1": {**_FULL, "text_out": 24.0},
    "gpt-realtime-mini": dict(_MINI),
    "gpt-realtime-2.1-mini": dict(_MINI),
}
_SNAPSHOT_RE = re.compile(r"-\d{4}-\d{2}-\d{2}$")
Prices = Mapping[str, Mapping[str, float]]


class PriceTableError(ValueError):
    """A price table that cannot be used; the message says where and why."""


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def tokens_by_kind(usage: Any) -> dict[str, int]:
    """``response.done``'s ``response.usage`` as counts by kind (missing or malformed parts
    count 0: the server's accounting must never break a call)."""
    if not isinstance(usage, Mapping):
        return {}
    inp = usage.get("input_token_details")
    inp = inp if isinstance(inp, Mapping) else {}
    out = usage.get("output_token_details")
    out = out if isinstance(out, Mapping) else {}
    cached = inp.get("cached_tokens_details")
    cached = cached if isinstance(cached, Mapping) else {}
    counts: dict[str, int] = {}
    for modality in ("text", "audio", "image"):
        total = _count(inp.get(f"{modality}_tokens"))
        hit = min(total, _count(cached.get(f"{modality}_tokens")))
        counts[f"{modality}_in"] = total - hit
        counts[f"{modality}_cached"] = hit
    if not cached and (hit := _count(inp.get("cached_tokens"))):
        # Only a total of cached tokens: count them as text, the cheaper guess is not ours to
        # make either way, so take them from the text input first, then from audio.
        for modality in ("text", "audio"):
            moved = min(hit, counts[f"{modality}_in"])
            counts[f"{modality}_in"] -= moved
            counts[f"{modality}_cached"] += moved
            hit -= moved
    counts["text_out"] = _count(out.get("text_tokens"))
    counts["audio_out"] = _count(out.get("audio_tokens"))
    return {kind: n for kind, n in counts.items() if n}


def usage_fields(model: str, response_id: str, usage: Any) -> dict[str, str] | None:
    """The ``usage`` event of one response (``None`` when it used nothing worth a line)."""
    counts = tokens_by_kind(usage)
    if not counts:
        return None
    return {"model": model, "response_id": response_id, **{k: str(n) for k, n in counts.items()}}


@dataclass(slots=True)
class CallUsage:
    """A call's tokens, by model and kind (a call may change model only across deployments,
    but a price is per model, so they are kept apart)."""

    tokens: dict[str, dict[str, int]] = field(default_factory=dict)
    responses: int = 0

    def add_event(self, data: Mapping[str, str]) -> None:
        """Add one ``usage`` event's counts (unknown or malformed fields are skipped)."""
        by_kind = self.tokens.setdefault(data.get("model", "") or "unknown", {})
        self.responses += 1
        for kind in KINDS:
            text = data.get(kind, "")
            if text.isdigit():
                by_kind[kind] = by_kind.get(kind, 0) + int(text)

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for by_kind in self.tokens.values():
            for kind, n in by_kind.items():
                out[kind] = out.get(kind, 0) + n
        return out

    def cost(self, prices: Prices) -> tuple[float | None, list[str]]:
        """The estimated cost in US dollars, and the models the table has no price for (whose
        tokens are left out; ``None`` when no token could be priced)."""
        total, unpriced, priced = 0.0, [], False
        for model, by_kind in self.tokens.items():
            table = price_for(prices, model)
            if table is None:
                unpriced.append(model)
                continue
            priced = True
            total += sum(n * table.get(kind, 0.0) for kind, n in by_kind.items()) / 1_000_000
        if not priced and self.tokens:
            return None, unpriced
        return round(total, 6), unpriced

    def report(self, prices: Prices) -> dict[str, Any]:
        """What the API and the end-of-call report show."""
        cost, unpriced = self.cost(prices)
        return {
            "responses": self.responses,
            "tokens": self.totals(),
            "by_model": {m: dict(k) for m, k in self.tokens.items()},
            "estimated_cost_usd": cost,
            "unpriced_models": unpriced,
            "prices_as_of": PRICES_AS_OF,
        }


def sum_events(events: Iterable[Mapping[str, str]]) -> CallUsage:
    usage = CallUsage()
    for data in events:
        usage.add_event(data)
    return usage


def price_for(prices: Prices, model: str) -> Mapping[str, float] | None:
    """A model's prices: its own entry, else its undated name's (``-2025-08-28`` snapshots)."""
    return prices.get(model) or prices.get(_SNAPSHOT_RE.sub("", model))


def load_prices(value: str) -> dict[str, dict[str, float]]:
    """``REALTIME_PRICES``: empty (the default table), JSON (``{"model": {"kind": usd}}``) or the
    path of a file holding it. A model in it replaces that model's default entry whole; every
    kind must be priced. Raises :class:`PriceTableError`."""
    prices = {model: dict(kinds) for model, kinds in DEFAULT_PRICES.items()}
    text = value.strip()
    if not text:
        return prices
    if not text.startswith("{"):
        try:
            with open(text, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise PriceTableError(f"{value}: cannot be read ({exc.strerror})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise PriceTableError(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise PriceTableError('must be {"model": {"kind": dollars per million tokens}}')
    for model, kinds in data.items():
        if not isinstance(kinds, dict):
            raise PriceTableError(f"{model}: must be a table of kind = dollars per million")
        missing = [k for k in KINDS if k not in kinds]
        unknown = [k for k in kinds if k not in KINDS]
        if missing or unknown:
            raise PriceTableError(
                f"{model}: needs exactly the kinds {', '.join(KINDS)}"
                + (f" (missing {', '.join(missing)})" if missing else "")
                + (f" (unknown {', '.join(unknown)})" if unknown else "")
            )
        for kind, price in kinds.items():
            if isinstance(price, bool) or not isinstance(price, int | float) or price < 0:
                raise PriceTableError(f"{model}.{kind}: must be a number >= 0")
        prices[model] = {k: float(v) for k, v in kinds.items()}
    return prices
