"""The console API's wire models: what its routes take and return (the OpenAPI schema)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.outbound import valid_e164

_VOICE = re.compile(r"[a-z][a-z0-9_-]{0,31}")


class CallOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    call_sid: str
    direction: str = Field(description="inbound | outbound")
    from_: str = Field(alias="from")
    to: str
    state: str = Field(description="ringing | in_progress | ended")
    started_at: int = Field(description="epoch ms")
    ended_at: int | None = Field(None, description="epoch ms")
    outcome: str | None = Field(
        None,
        description="caller_hung_up | model_hung_up | transferred | supervisor_hung_up | "
        "voicemail | no_answer | busy | canceled | failed | disconnected | completed",
    )
    end_reason: str | None = Field(None, description="the stage's own end reason")
    dialect: str | None = Field(None, description="Model combo of the session (GA | BETA | LIVE)")
    answered_by: str | None = Field(None, description="Twilio's AMD verdict (outbound)")


class CallsPage(BaseModel):
    calls: list[CallOut]
    next_before: str | None = Field(None, description="pass as ?before= for the next page")


class CallDetailOut(CallOut):
    transcript: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    barge_ins: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    dtmf: list[dict[str, Any]]
    latency: dict[str, Any] = Field(
        description="greeting_ms, first_reply_ms and per reply: end of the caller's turn to the "
        "reply's first audio"
    )
    turns: list[dict[str, Any]] = Field(
        description="who spoke when, from the audio the streams still hold: "
        "{role: caller|assistant, start, end} in epoch ms"
    )
    recording: bool = Field(description="a recording can be fetched at .../recording")
    mcp_calls: list[dict[str, Any]] = Field(
        description="remote MCP calls: {at, server, name, arguments, outcome (approved|refused: "
        "the gateway's answer to an approval request; ok|error: a call the server ran), output, "
        "error, duration_ms}"
    )
    usage: dict[str, Any] = Field(
        description="the Realtime tokens the call used, summed from response.done's usage: "
        "responses, tokens by kind, by_model, estimated_cost_usd (null when no model of the "
        "call has a price), unpriced_models, prices_as_of (the built-in table's date)"
    )


class OutboundIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    to: str = Field(description="E.164, e.g. +15551234567")
    from_: str | None = Field(None, alias="from", description="E.164; default TWILIO_FROM_NUMBER")
    instructions: str | None = Field(None, max_length=1024)
    greeting: str | None = Field(None, max_length=1024)
    voice: str | None = Field(None, max_length=32)
    parameters: dict[str, Annotated[str, Field(max_length=1024)]] | None = Field(
        None, description="more <Parameter>s for the stream (at most 20)"
    )
    machine_detection: bool = Field(
        True, description="answering-machine detection: a machine gets the voicemail message"
    )

    @field_validator("to", "from_")
    @classmethod
    def _e164(cls, value: str | None) -> str | None:
        if value is not None and not valid_e164(value):
            raise ValueError("must be an E.164 phone number: + then up to 15 digits")
        return value

    @field_validator("voice")
    @classmethod
    def _voice(cls, value: str | None) -> str | None:
        if value is not None and not _VOICE.fullmatch(value):
            raise ValueError("must be a voice name (lower case letters, digits, - and _)")
        return value


class PlacedOut(BaseModel):
    call_sid: str
    status: str
