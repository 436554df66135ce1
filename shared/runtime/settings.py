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
from collections.abc import Callable
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.agent import E164_RE, Agent, AgentFileError, load_agent_file
from shared.audio import AudioFormatError, resampling_ratio
from shared.live_dialect import LIVE_MODEL, LIVE_RATES, LIVE_URL, LiveConfig
from shared.realtime_dialect import SessionConfig, TurnDetection

# audio: combo A; flat: combo B; auto: A, else B; live: GPT-Live (combo C, docs/live.md).
Schema = Literal["audio", "flat", "auto", "live"]

EXIT_CONFIG_ERROR = 2
FLAT_PCM_RATE = 24000  # the beta dialect's pcm16: 16-bit mono at 24 kHz, no rate to set


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
    # Unset: follows the schema (combo A: audio without it, combo B: flat with it).
    realtime_beta_header: bool = False
    realtime_schema: Schema = "audio"
    realtime_audio_rate: int = Field(24000, gt=0)
    realtime_commit_frames: int = Field(50, ge=5, le=3000)
    openai_api_key: SecretStr | None = None
    # How long the worker gives a new Realtime session to connect and accept its update.
    realtime_open_timeout_ms: int = Field(8000, ge=100, le=600_000)
    # GPT-Live (REALTIME_SCHEMA=live): the Responses model that runs the agent file's tools
    # when the live model delegates a task to it (delegation.responses.model).
    live_delegation_model: str = Field("gpt-5.4-mini", min_length=1, max_length=64)

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
    # The agent file (TOML): instructions, voice, greeting, turn detection, tools. It overrides
    # the REALTIME_* variables above; a call's <Parameter>s override it.
    agent_file: str = ""
    # --- Tools ------------------------------------------------------------------------------------
    tool_calls_per_call: int = Field(50, ge=0, le=10_000)
    tool_calls_in_flight: int = Field(4, ge=1, le=100)  # per call, at once
    # A tool still running this long gets the model to tell the caller it is still on it.
    tool_still_working_ms: int = Field(3000, ge=500, le=120_000)
    # Signs every HTTP tool request (X-Gateway-Signature) when set.
    tools_signing_secret: SecretStr | None = None
    # A Realtime session this old gives way to the next at the first quiet moment (the live API
    # ends GA sessions at 60 minutes, beta ones at 30); 0: never before the server ends it.
    realtime_session_max_seconds: int = Field(3300, ge=0, le=86_400)
    # How much of the conversation (characters of text) a new session is given as context.
    realtime_context_chars: int = Field(12_000, ge=0, le=1_000_000)
    # How long a call may go without a working Realtime session before it is ended for the caller.
    realtime_restore_seconds: float = Field(15.0, gt=0, le=600)

    # --- Redis ------------------------------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    # REDIS_URL names one node of a Redis Cluster; the cluster client finds the rest.
    redis_cluster: bool = False
    # The lifecycle stream split in this many hash-tagged partitions, so that on a cluster no
    # single slot carries every call's start (1 keeps the single key gw:calls).
    lifecycle_partitions: int = Field(1, ge=1, le=256)
    # The per-frame loops (the stages' shared readers, the batched writers) send to Redis at most
    # once per this many milliseconds each: under load a round trip then carries every frame that
    # arrived meanwhile, instead of one frame per call (what each round trip costs, at both ends,
    # is most of the pipeline's CPU). It adds at most this much to each hop, and nothing when
    # frames are further apart; 0 sends each batch as soon as the last one is answered.
    redis_batch_ms: float = Field(3.0, ge=0, le=20)
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
    # The secret of a Twilio SharedKey, for webhooks a Webhook Rule signs with it (HMAC-SHA256).
    twilio_shared_key_secret: SecretStr | None = None
    # auto: verify when a secret is set, and refuse to start against the live API without one;
    # on: a secret is required whatever the model; off: accept unsigned requests (a warning).
    twilio_signatures: Literal["auto", "on", "off"] = "auto"
    max_calls: int = Field(200, ge=1, le=100_000)
    max_message_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    # Twilio sends 50 media messages a second; this leaves room for bursts after network stalls.
    max_messages_per_second: int = Field(400, ge=10, le=100_000)
    # How long an edge whose stream broke (no stop, no close of ours) keeps the call open for
    # its resumption on another stream (Twilio's <Connect action>) before ending it; 0: at once.
    edge_resume_grace_seconds: float = Field(5.0, ge=0.0, le=120.0)

    # --- Console, outbound calls, recordings (services.console, services.recorder) --------------
    console_host: str = "127.0.0.1"
    console_port: int = Field(8090, ge=0, le=65535)  # 0: any free port (tests)
    # Every /api request must carry "Authorization: Bearer <CONSOLE_TOKEN>"; the console refuses
    # to start without one.
    console_token: SecretStr | None = None
    # Twilio's REST API, for outbound calls (console) and the voicemail of an answering machine
    # (edge); the Auth Token above signs and verifies as before.
    twilio_account_sid: str = Field("", max_length=64)
    twilio_from_number: str = Field("", max_length=16)
    # Where the twilio package sends its REST requests (a local stand-in in tests); empty: Twilio.
    twilio_api_base: str = ""
    # What an answering machine gets on an outbound call, unless the agent file says.
    voicemail_message: str = Field("", max_length=2_000)
    # Recording is off unless set: one stereo WAV per call in this folder.
    recordings_dir: str = ""
    recordings_retention_days: float = Field(30.0, gt=0, le=3650)

    # --- Every service ----------------------------------------------------------------------------
    metrics_port: int = Field(0, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"
    consumer_name: str = Field(default_factory=lambda: f"{socket.gethostname()}", max_length=200)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="before")
    @classmethod
    def _header_follows_schema(cls, data: object) -> object:
        # The report verified exactly two combos; a schema alone names one of them.
        if isinstance(data, dict) and data.get("realtime_beta_header") in (None, ""):
            data = {k: v for k, v in data.items() if k != "realtime_beta_header"}
            schema = str(data.get("realtime_schema", "audio")).strip()
            data["realtime_beta_header"] = schema == "flat"
        return data

    @model_validator(mode="before")
    @classmethod
    def _live_defaults(cls, data: object) -> object:
        # GPT-Live has its own endpoint and models: unset (or empty) means theirs, not Realtime's.
        if isinstance(data, dict) and str(data.get("realtime_schema", "")).strip() == "live":
            data = dict(data)
            for key, default in (("realtime_url", LIVE_URL), ("realtime_model", LIVE_MODEL)):
                if not str(data.get(key) or "").strip():
                    data[key] = default
        return data

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
        if parts.query or parts.fragment:
            raise ValueError("must be a base URL, without a query or fragment")
        # Twilio calls the webhook over https and dials the stream over wss on the same host:
        # a wss:// base names the same place as https://, and signatures are over the https form.
        scheme = {"wss": "https", "ws": "http"}.get(parts.scheme, parts.scheme)
        return f"{scheme}://{parts.netloc}{parts.path}".rstrip("/")

    @field_validator("twilio_api_base")
    @classmethod
    def _api_base(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme not in {"https", "http"} or not parts.hostname or parts.query:
            raise ValueError("must be an http(s):// base URL with a host and no query")
        return value.rstrip("/")

    @field_validator("twilio_from_number")
    @classmethod
    def _from_number(cls, value: str) -> str:
        if value and not E164_RE.fullmatch(value):
            raise ValueError("must be an E.164 number (+ and up to 15 digits)")
        return value

    @model_validator(mode="after")
    def _agent_file_is_good(self) -> Settings:
        if self.agent_file:
            try:
                object.__setattr__(self, "_agent_cache", load_agent_file(self.agent_file))
            except AgentFileError as exc:
                raise ValueError(str(exc)) from None
        return self

    @property
    def agent(self) -> Agent:
        """The agent file, checked at start (an empty agent without ``AGENT_FILE``)."""
        cached = self.__dict__.get("_agent_cache")
        return cached if isinstance(cached, Agent) else Agent()

    @model_validator(mode="after")
    def _rate_fits_schema(self) -> Settings:
        rate, schema = self.realtime_audio_rate, self.realtime_schema
        if schema == "flat":
            return self  # the report: the rate is the audio schema's; pcm16 is always 24 kHz
        prefix = f"REALTIME_AUDIO_RATE={rate} is not allowed with REALTIME_SCHEMA={schema}"
        if schema == "live":
            if rate not in LIVE_RATES:
                raise ValueError(f"{prefix}: GPT-Live's audio/pcm takes 16000 or 24000")
            return self
        # The GA dialect rejects audio/pcm below 24000 Hz (dialect report).
        if rate < 24000:
            raise ValueError(f"{prefix}: audio/pcm needs a rate >= 24000")
        if schema == "auto" and rate != FLAT_PCM_RATE:
            raise ValueError(
                f"{prefix}: auto falls back to the flat schema when the server wants it, "
                "and its pcm16 is 24000 Hz"
            )
        try:
            resampling_ratio(rate)
        except AudioFormatError:
            raise ValueError(
                f"{prefix}: the transcoder resamples 8000 Hz by whole multiples "
                "(24000, 32000, 40000, 48000, ... up to 384000)"
            ) from None
        return self

    @model_validator(mode="after")
    def _live_url_has_no_model(self) -> Settings:
        if self.realtime_schema == "live" and "model=" in (urlsplit(self.realtime_url).query):
            raise ValueError(
                f"REALTIME_URL={self.realtime_url} names a model: GPT-Live takes REALTIME_MODEL "
                "in session.start, never in the URL"
            )
        return self

    def unverified_combo(self) -> str | None:
        """Why the schema and header are not one of the report's two combos (``None`` if they
        are). The report saw the beta-header-off server require ``session.type``, which the flat
        shape lacks, and the beta server refuse the GA shape's keys: such a pair fails every call,
        so the services refuse it at start-up. The smoke test may still try it."""
        if self.realtime_schema == "flat" and not self.realtime_beta_header:
            return (
                "REALTIME_SCHEMA=flat needs REALTIME_BETA_HEADER=1 (combo B); without the header "
                "the server requires the audio schema's session.type"
            )
        if self.realtime_schema == "live" and self.realtime_beta_header:
            return "REALTIME_SCHEMA=live needs REALTIME_BETA_HEADER=0: GPT-Live has no beta shape"
        if self.realtime_schema == "audio" and self.realtime_beta_header:
            return (
                "REALTIME_SCHEMA=audio needs REALTIME_BETA_HEADER=0 (combo A); the beta header "
                "selects the flat schema's dialect"
            )
        return None

    def unsigned_edge(self) -> str | None:
        """Why the edge must not start (``None`` when it may): open to unsigned requests while
        the model is the live API, anyone who finds its address could talk to the model on the
        operator's account. ``TWILIO_SIGNATURES=off`` says that this is wanted."""
        has_secret = bool(self.twilio_auth_token or self.twilio_shared_key_secret)
        if has_secret or self.twilio_signatures == "off":
            return None
        if self.twilio_signatures == "on":
            return (
                "TWILIO_SIGNATURES=on needs TWILIO_AUTH_TOKEN or TWILIO_SHARED_KEY_SECRET "
                "to verify Twilio's signatures"
            )
        if self.openai_api_key and not self.uses_emulator:
            return (
                "OPENAI_API_KEY is set and REALTIME_URL is not a local emulator, but neither "
                "TWILIO_AUTH_TOKEN nor TWILIO_SHARED_KEY_SECRET is: anyone could reach the model "
                "through /twiml and /media; set one, or TWILIO_SIGNATURES=off to accept "
                "unsigned requests"
            )
        return None

    def keyless_worker(self) -> str | None:
        """Why the worker must not start (``None`` when it may): the live API needs a key."""
        if self.openai_api_key is None and not self.uses_emulator:
            return (
                f"OPENAI_API_KEY is required when REALTIME_URL ({self.realtime_url}) is not the "
                "local emulator"
            )
        return None

    @property
    def verifies_signatures(self) -> bool:
        """Whether the edge checks Twilio's signatures (a secret is set and they are not off)."""
        has_secret = bool(self.twilio_auth_token or self.twilio_shared_key_secret)
        return has_secret and self.twilio_signatures != "off"

    # --- Derived values ---------------------------------------------------------------------------
    def session_config(self) -> SessionConfig:
        """The Realtime session these settings describe, the agent file over the environment
        (a call's overrides go on top: :meth:`SessionConfig.with_overrides`)."""
        agent = self.agent
        turn = agent.turn_detection
        transcription = (
            agent.transcription_model
            if agent.transcription_model is not None
            else self.realtime_transcription_model
        )
        return SessionConfig(
            voice=agent.voice or self.realtime_voice,
            instructions=(
                agent.instructions if agent.instructions is not None else self.realtime_instructions
            ),
            turn_detection=turn.type if turn else self.realtime_turn_detection,
            rate=self.pcm_rate,
            transcription_model=transcription or None,
            turn_knobs=dict(turn.knobs) if turn else {},
            noise_reduction=agent.noise_reduction,
            tools=tuple(tool.declaration() for tool in agent.tools),
        )

    def live_config(self) -> LiveConfig:
        """The GPT-Live session these settings describe (REALTIME_SCHEMA=live): the same voice,
        instructions and tools as :meth:`session_config`, the model in the session."""
        config = self.session_config()
        return self.live_config_for(config)

    def live_config_for(self, config: SessionConfig) -> LiveConfig:
        """A call's GPT-Live session from its Realtime-shaped config (a call's overrides)."""
        return LiveConfig(
            model=self.realtime_model,
            instructions=config.instructions,
            voice=config.voice,
            rate=self.pcm_rate,
            tools=config.tools,
            delegation_model=self.live_delegation_model,
            # The agent file's one text holds the business rules the backend needs too.
            delegation_instructions=config.instructions,
        )

    @property
    def voicemail(self) -> str:
        """What an answering machine gets: the agent file's ``voicemail_message``, else
        ``VOICEMAIL_MESSAGE`` (empty: a hang-up without a message)."""
        agent = self.agent.voicemail_message
        return agent if agent is not None else self.voicemail_message

    @property
    def greeting(self) -> str:
        """What the model says first (empty: it waits for the caller)."""
        agent = self.agent.greeting
        return agent if agent is not None else self.realtime_greeting

    @property
    def pcm_rate(self) -> int:
        """The rate of the PCM16 the pipeline carries to and from OpenAI: REALTIME_AUDIO_RATE in
        the audio schema, 24000 in the flat one (its pcm16 has no other rate). Every stage must
        agree on it, so every stage reads it from here."""
        return FLAT_PCM_RATE if self.realtime_schema == "flat" else self.realtime_audio_rate

    @property
    def uses_emulator(self) -> bool:
        """True when the Realtime URL points at this machine (the local emulator)."""
        host = urlsplit(self.realtime_url).hostname or ""
        return host in {"127.0.0.1", "localhost", "::1"}

    def public_media_url(self, base: str | None = None) -> str:
        """The ``wss://`` URL Twilio dials for Media Streams (and signs), from ``PUBLIC_URL``
        (or ``base``, the edge's address as the request reached it, when that is unset)."""
        base = self.public_url or base or f"http://{self.edge_host}:{self.edge_port}"
        parts = urlsplit(base)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}/media"

    def public_twiml_url(self, base: str | None = None) -> str:
        """The webhook URL to give Twilio (``https://<PUBLIC_URL host>/twiml``)."""
        base = self.public_url or base or f"http://{self.edge_host}:{self.edge_port}"
        return f"{base.rstrip('/')}/twiml"


def describe_error(error: ValidationError) -> str:
    """One line: the variable, its value (hidden for a secret) and what is allowed."""
    first = error.errors()[0]
    loc = first.get("loc") or ()
    name = str(loc[0]).upper() if loc else ""
    message = str(first.get("msg", "invalid"))
    message = message.removeprefix("Value error, ")
    value = first.get("input")
    if not name:
        return message
    hidden = {
        "OPENAI_API_KEY",
        "TWILIO_AUTH_TOKEN",
        "TWILIO_SHARED_KEY_SECRET",
        "TOOLS_SIGNING_SECRET",
        "CONSOLE_TOKEN",
    }
    shown = "<hidden>" if name in hidden else repr(value)
    return f"{name}={shown} is not allowed: {message}"


def load_settings(**overrides: object) -> Settings:
    """Read the settings from the environment (``overrides`` win); raise :class:`ConfigError`."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(describe_error(exc)) from None


def settings_or_exit(
    service: str,
    *,
    any_combo: bool = False,
    checks: tuple[Callable[[Settings], str | None], ...] = (),
) -> Settings:
    """The settings for a service's ``main``: one line on stderr and exit code 2 when they are
    bad. Only the smoke test (``any_combo``) may run a schema/header pair outside the report's
    two combos. ``checks`` are the service's own start-up rules (e.g.
    :meth:`Settings.unsigned_edge`), each returning why it must not start."""
    try:
        settings = load_settings()
        rules = checks if any_combo else (Settings.unverified_combo, *checks)
        for rule in rules:
            problem = rule(settings)
            if problem:
                raise ConfigError(problem)
        return settings
    except ConfigError as exc:
        print(f"{service}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG_ERROR) from None
