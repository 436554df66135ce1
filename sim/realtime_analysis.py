"""The emulator's answer to an end-of-call analysis request: JSON that fits the schema it was
given (the gateway's instructions end with ``JSON Schema:`` and the schema), so a test can check
the report's ``analysis`` against the agent file's ``[analysis]`` without a live model.

The instance is built from the schema's own words: every property (required or not), an
``enum``'s or a ``const``'s first value, a boolean ``true``, a number at its ``minimum``, a string
of at least ``minLength`` characters, an array of ``minItems`` items.
"""

from __future__ import annotations

import json
from typing import Any

MARKER = "JSON Schema:"


def analysis_answer(instructions: str) -> str | None:
    """The JSON text to answer with, or ``None`` when the instructions ask no analysis."""
    head, sep, tail = instructions.rpartition(MARKER)
    if not sep:
        return None
    try:
        schema = json.loads(tail)
    except ValueError:
        return None
    return json.dumps(instance(schema)) if isinstance(schema, dict) else None


def instance(schema: Any) -> Any:
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {name: instance(sub) for name, sub in props.items()}
    if kind == "array":
        return [instance(schema.get("items", {})) for _ in range(schema.get("minItems", 0))]
    if kind == "boolean":
        return True
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    if kind == "string":
        text = "The caller asked a question and got an answer."
        return text.ljust(schema.get("minLength", 0), ".")[: schema.get("maxLength", 10_000)]
    return None
