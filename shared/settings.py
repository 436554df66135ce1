"""The gateway's configuration: one typed object, read from the environment, shared by every
service.

Every variable of the dialect report is here with the report's default, beside the gateway's own.
A bad value is a start-up error: :func:`settings_or_exit` prints one line naming the variable, the
value and what is allowed, and exits with code 2 (no traceback), so a supervisor or container
runtime shows the operator exactly what to fix.
"""

from __future__ import annotations

import socket
import sys
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Schema = Literal["audio", "flat", "auto"]
TurnDetection = Literal["server_vad", "semantic_vad", "none"]

EXIT_CONFIG_ERROR = 2


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable, the value and what is
    allowed."""


class Settings(BaseSettings):
    """All settings; field names are the environment variables' names in lower case."""

    model_config = SettingsConfigDict(
        env_prefix="", case_sensitive=False, extra="ignore", frozen=True, validate_default=True
    )

    # --- OpenAI Realtime: the dialect report's variables, with its defaults -----------------
    realtime_model: str = Field("gpt-realtime", min_length=1)
    realtime_url: str = "wss://api.openai.com/v1/realtime"
    realtime_beta_header: bool = False
    realtime_schema: Schema = "audio"
    realtime_audio_rate: int = Field(24000, gt=0)
    realtime_commit_frames: int = Field(50, ge=5, le=3000)
    runs: int = Field(10, ge=1, le=10_000)
    audio_ms: int = Field(600, ge=100, le=60_000)
    timeout_ms: int = Field(8000, ge=100, le=600_000)
    openai_api_key: SecretStr | None = None

    # --- What the model is told and how it speaks ---------------------------------------------
    realtime_voice: str = Field("alloy", min_length=1, max_length=64)
    realtime_instructions: str = Field(
        "You are a helpful voice assistant on a phone call. "
        "Keep answers short and speak naturally.",
        max_length=16_000,
    )
    realtime_greeting: str = Field("", max_length=2_000)
    realtime_turn_detection: TurnDetection = "server_vad"
    realtime_transcription_model: str = Field("whisper-1", max_length=64)
    # How long a call may go without a working Realtime session before it is ended for the caller.
    realtime_restore_seconds: float = Field(15.0, gt=0, le=600)

    # --- Redis ------------------------------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    # REDIS_URL names one node of a Redis Cluster; the cluster client finds the rest.
    redis_cluster: bool = False
    # The lifecycle stream split in this many hash-tagged partitions, so that on a cluster no
    # single slot carries every call's start (1 keeps the single key gw:calls).
    lifecycle_partitions: int = Field(1, ge=1, le=256)
    # Approximate cap of every per-call audio stream, in entries (one entry is one 20 ms frame).
    stream_maxlen: int = Field(3000, ge=100, le=1_000_000)
    # How long a call's keys live after it ends (transcripts can be read back until then).
    call_retention_seconds: int = Field(3600, ge=10, le=30 * 86400)
    # Longest call; also the expiry every per-call key gets while the call runs.
    call_max_seconds: int = Field(4 * 3600, ge=60, le=7 * 86400)
    # A call whose owner has not refreshed its claim for this long is taken over by another
    # instance.
    owner_idle_ms: int = Field(3000, ge=500, le=600_000)

    # --- Twilio edge ------------------------------------------------------------------------------
    edge_host: str = "0.0.0.0"
    edge_port: int = Field(8080, ge=0, le=65535)  # 0: any free port (tests)
    public_url: str = ""
    twilio_auth_token: SecretStr | None = None
    max_calls: int = Field(200, ge=1, le=100_000)
    max_message_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    # Twilio sends 50 media messages a second; this leaves room for bursts after network stalls.
    max_messages_per_second: int = Field(400, ge=10, le=100_000)

    # --- Every service ----------------------------------------------------------------------------
    metrics_port: int = Field(0, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"
    consumer_name: str = Field(default_factory=lambda: f"{socket.gethostname()}", max_length=200)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("realtime_beta_header", mode="before")
    @classmethod
    def _zero_or_one(cls, value: object) -> object:
        if isinstance(value, str) and value.strip() not in {"0", "1", "true", "false", ""}:
            raise ValueError("must be 0 or 1")
        return value

    @field_validator("realtime_url")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"ws", "wss"} or not parts.hostname:
            raise ValueError("must be a ws:// or wss:// URL with a host")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("must name a host")
        try:
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            raise ValueError("has a malformed port") from None
        db = parts.path.lstrip("/")
        if db and not db.isdigit() and parts.scheme != "unix":
            raise ValueError("database must be a number")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in {"https", "http", "wss", "ws"} or not parts.hostname:
            raise ValueError("must be an https:// base URL with a host")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _rate_fits_schema(self) -> Settings:
        # The GA dialect rejects audio/pcm below 24000 Hz (dialect report).
        if self.realtime_schema in {"audio", "auto"} and self.realtime_audio_rate < 24000:
            raise ValueError(
                f"REALTIME_AUDIO_RATE={self.realtime_audio_rate} is not allowed with "
                f"REALTIME_SCHEMA={self.realtime_schema}: audio/pcm needs a rate >= 24000"
            )
        return self

    # --- Derived values ---------------------------------------------------------------------------
    @property
    def uses_emulator(self) -> bool:
        """True when the Realtime URL points at this machine (the local emulator)."""
        host = urlsplit(self.realtime_url).hostname or ""
        return host in {"127.0.0.1", "localhost", "::1"}

    def public_media_url(self) -> str:
        """The ``wss://`` URL Twilio dials for Media Streams (and signs), from ``PUBLIC_URL``."""
        base = self.public_url or f"http://{self.edge_host}:{self.edge_port}"
        parts = urlsplit(base)
        scheme = "wss" if parts.scheme in {"https", "wss"} else "ws"
        return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}/media"

    def public_twiml_url(self) -> str:
        """The webhook URL to give Twilio (``https://<PUBLIC_URL host>/twiml``)."""
        base = self.public_url or f"http://{self.edge_host}:{self.edge_port}"
        return f"{base.rstrip('/')}/twiml"


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    loc = first.get("loc") or ()
    name = str(loc[0]).upper() if loc else ""
    message = str(first.get("msg", "invalid"))
    message = message.removeprefix("Value error, ")
    value = first.get("input")
    if not name:
        return message
    shown = "<hidden>" if name in {"OPENAI_API_KEY", "TWILIO_AUTH_TOKEN"} else repr(value)
    return f"{name}={shown} is not allowed: {message}"


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment (``overrides`` win); raise :class:`ConfigError`."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def settings_or_exit(service: str) -> Settings:
    """The settings for a service's ``main``: one line on stderr and exit code 2 when they are
    bad."""
    try:
        return load_settings()
    except ConfigError as exc:
        print(f"{service}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG_ERROR) from None
