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
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.agent import E164_RE, Agent, AgentFileError, load_agent_file, reasoning_mistake
from shared.audio import AudioFormatError, resampling_ratio
from shared.live_dialect import LIVE_MODEL, LIVE_RATES, LIVE_URL, LiveConfig
from shared.realtime_dialect import SessionConfig, TurnDetection
from shared.stream_token import derive_key
from shared.usage import PriceTableError, load_prices

# audio: combo A; flat: combo B; auto: A, else B; live: GPT-Live (combo C, docs/live.md).
Schema = Literal["audio", "flat", "auto", "live"]

EXIT_CONFIG_ERROR = 2
FLAT_PCM_RATE = 24000  # the beta dialect's pcm16: 16-bit mono at 24 kHz, no rate to set


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable, the value and what is
    allowed."""


class Settings(BaseSettings):
    """All settings; field names are the environment variables' names in lower case.

    Each field's docstring is its documentation: ``python -m tools.settings_doc`` writes
    docs/configuration.md from them, and a test fails when a field has none or the page is stale.
    """

    model_config = SettingsConfigDict(
        env_prefix="",
        case_sensitive=False,
        extra="ignore",
        frozen=True,
        validate_default=True,
        use_attribute_docstrings=True,
    )

    # --- OpenAI Realtime: the dialect report's variables, with its defaults -----------------
    realtime_model: str = Field("gpt-realtime", min_length=1)
    """The Realtime model (the URL's ``?model=``). ``make probe`` takes several, comma-separated."""
    realtime_url: str = "wss://api.openai.com/v1/realtime"
    """The Realtime endpoint; ``make run`` points it at the local emulator when there is no
    ``OPENAI_API_KEY``."""
    realtime_beta_header: bool = Field(
        False, json_schema_extra={"default_doc": "follows the schema: 0 for audio, 1 for flat"}
    )
    """``1`` sends ``OpenAI-Beta: realtime=v1``. Unset, it follows ``REALTIME_SCHEMA`` (combo A:
    ``audio`` without it, combo B: ``flat`` with it). The services refuse to start with ``audio``
    and ``1`` or ``flat`` and ``0``: neither is one of the dialect report's combos, and every call
    would be refused (``make smoke`` may try them)."""
    realtime_schema: Schema = "audio"
    """The session's dialect: ``audio`` (combo A, GA), ``flat`` (combo B, beta) or ``auto``
    (start with combo A, switch once when the server refuses its shape)."""
    realtime_audio_rate: int = Field(24000, gt=0)
    """The audio schema's PCM rate, declared to OpenAI and used by the transcoder: at least 24000
    (``audio/pcm``) and a whole multiple of 8000 (e.g. 48000); ``auto`` needs 24000. The flat
    schema's ``pcm16`` is always 24 kHz, so ``flat`` ignores it. Every stage must share it."""
    realtime_commit_frames: int = Field(50, ge=5, le=3000)
    """With turn detection ``none``: Twilio frames (20 ms) per commit; 5 is 100 ms."""
    openai_api_key: SecretStr | None = None
    """The OpenAI key; never logged, never written to Redis."""
    realtime_open_timeout_ms: int = Field(8000, ge=100, le=600_000)
    """How long the worker gives a new Realtime session to connect and accept its
    ``session.update``."""
    live_delegation_model: str = Field("gpt-5.4-mini", min_length=1, max_length=64)
    """GPT-Live (``REALTIME_SCHEMA=live``): the Responses model that runs the agent file's tools
    when the live model delegates a task to it (``delegation.responses.model``)."""

    # --- What the model is told and how it speaks ---------------------------------------------
    realtime_voice: str = Field("alloy", min_length=1, max_length=64)
    """The model's voice."""
    realtime_instructions: str = Field(
        "You are a helpful voice assistant on a phone call. "
        "Keep answers short and speak naturally.",
        max_length=16_000,
    )
    """The session's instructions."""
    realtime_greeting: str = Field("", max_length=2_000)
    """When set, the model speaks first, with this greeting."""
    realtime_turn_detection: TurnDetection = "server_vad"
    """``server_vad``, ``semantic_vad``, or ``none`` (the worker commits the caller's audio and
    asks for responses itself)."""
    realtime_transcription_model: str = Field("whisper-1", max_length=64)
    """The caller's transcription model; empty turns transcription off."""
    agent_file: str = ""
    """The agent file (TOML, see the agent page): instructions, voice, greeting, turn detection,
    tools and the ``voicemail_message`` an answering machine gets. It overrides the ``REALTIME_*``
    variables above; a call's ``<Parameter>``s override it. Checked whole at start."""
    realtime_prices: str = ""
    """The price table that turns a call's tokens into an estimated cost: JSON
    (``{"gpt-realtime": {"text_in": 4.0, ...}}``, US dollars per million tokens, every kind of
    the usage page) or the path of a file holding it. A model named here replaces that model's
    built-in prices; empty keeps the built-in table (dated; see the usage page), which the
    operator must keep current."""
    # --- Tools ------------------------------------------------------------------------------------
    tool_calls_per_call: int = Field(50, ge=0, le=10_000)
    """Tool calls one phone call may make; beyond, the model is told so at once."""
    tool_calls_in_flight: int = Field(4, ge=1, le=100)
    """Tool calls one phone call may have running at once."""
    tool_still_working_ms: int = Field(3000, ge=500, le=120_000)
    """A tool still running this long gets the model to tell the caller, once per call, that it
    is still on it."""
    tools_signing_secret: SecretStr | None = None
    """When set, signs every HTTP tool request (``X-Gateway-Signature``), and every end-of-call
    report."""
    post_call_webhook_url: str = ""
    """When set, each call's end-of-call report is POSTed here (JSON, signed like the tool
    requests, ``Idempotency-Key: report-<CallSid>``), retried with backoff until a 2xx; the tool
    runners send it (see the usage and reports page)."""

    # --- Long calls: Realtime sessions one after another ---------------------------------------
    realtime_session_max_seconds: int = Field(3300, ge=0, le=86_400)
    """A Realtime session this old gives way to the next at the first quiet moment (the live API
    ends GA sessions at 60 minutes, beta ones at 30); 0: never before the server ends it."""
    worker_drain_seconds: int = Field(30, ge=0, le=86_400)
    """On SIGTERM, how long the worker waits for each call's quiet moment (no caller speech in
    progress, no reply being made or playing) to hand it to another worker, whose session opens
    with the conversation so far; past it the calls left are handed over as they are. With no
    other worker alive the calls are kept until they end or this passes. 0: hand over at once.
    The supervisor's stop timeout (supervisord ``stopwaitsecs``, Kubernetes
    ``terminationGracePeriodSeconds``) must exceed it by the clean stop's 4 s."""
    realtime_context_chars: int = Field(12_000, ge=0, le=1_000_000)
    """How much of the conversation (characters of text) a new session is given as context."""
    realtime_restore_seconds: float = Field(15.0, gt=0, le=600)
    """How long a call may go without a working Realtime session before it is ended for the
    caller."""

    # --- Redis ------------------------------------------------------------------------------------
    redis_url: str = "redis://127.0.0.1:6379/0"
    """``redis://``, ``rediss://`` (TLS) or ``unix://``; an ACL ``user:password@`` works (the
    password is never logged)."""
    redis_cluster: bool = False
    """``1``: ``REDIS_URL`` names one node of a Redis Cluster; the cluster client finds the rest."""
    lifecycle_partitions: int = Field(1, ge=1, le=256)
    """The lifecycle stream split in this many hash-tagged partitions, so that on a cluster no
    single slot carries every call's start (use e.g. 16 there; 1 keeps the single key
    ``gw:calls``). Every service must agree."""
    redis_batch_ms: float = Field(3.0, ge=0, le=20)
    """The per-frame loops (the stages' shared readers, the batched writers) send to Redis at
    most once per this many milliseconds each: under load a round trip then carries every frame
    that arrived meanwhile, instead of one frame per call (what each round trip costs, at both
    ends, is most of the pipeline's CPU). It adds at most this much to each hop, and nothing when
    frames are further apart; 0 sends each batch as soon as the last one is answered."""
    stream_maxlen: int = Field(3000, ge=100, le=1_000_000)
    """Approximate cap of every per-call audio stream, in entries (one entry is one 20 ms frame:
    3000 is 60 s). Also the most caller audio the edge holds per call while Redis is away."""
    call_retention_seconds: int = Field(3600, ge=10, le=30 * 86400)
    """How long a call's keys (its transcript among them) live after it ends."""
    call_max_seconds: int = Field(4 * 3600, ge=60, le=7 * 86400)
    """The longest call; also the expiry every per-call key gets while the call runs."""
    owner_idle_ms: int = Field(3000, ge=500, le=600_000)
    """A call whose owner has not refreshed its claim for this long is taken over by another
    instance."""

    # --- Twilio edge ------------------------------------------------------------------------------
    edge_host: str = "0.0.0.0"
    """The edge's public listening address, the one Twilio reaches (``/media``, ``/twiml``,
    ``/connect-action``, ``/stream-status``, ``/amd``, ``/call-status``, ``/healthz``; never
    ``/metrics``)."""
    edge_port: int = Field(8080, ge=0, le=65535)
    """The edge's public port (0: any free port, for tests)."""
    public_url: str = ""
    """The https base at which Twilio reaches the edge (a ``wss://`` base is taken as its
    ``https://`` form); unset: each request's ``Host`` and ``X-Forwarded-Proto``."""
    twilio_auth_token: SecretStr | None = None
    """When set, Twilio's signatures are verified (403 otherwise); with ``TWILIO_ACCOUNT_SID``,
    also Twilio's REST API."""
    twilio_shared_key_secret: SecretStr | None = None
    """The secret of a Twilio SharedKey: requests carrying
    ``X-Twilio-Webhooks-Signature-Settings`` (a Webhook Rule signing with that key, HMAC-SHA256)
    are verified with it, and refused while it is unset."""
    twilio_signatures: Literal["auto", "on", "off"] = "auto"
    """``auto``: verify when a secret is set, and refuse to start (exit 2, one line naming the
    variables) when ``OPENAI_API_KEY`` is set, ``REALTIME_URL`` is not a local emulator (a loopback
    host) and neither Twilio secret is set; ``on``: a secret is required whatever the model;
    ``off``: accept unsigned requests on ``/twiml`` and ``/media`` even with a secret set (a
    warning at start)."""
    stream_token_secret: SecretStr | None = None
    """The secret the per-call stream tokens' key (``gw_token``, docs/security.md) is derived
    from; unset: ``TWILIO_AUTH_TOKEN``, else ``TWILIO_SHARED_KEY_SECRET``. Every edge and the
    console of a deployment must agree. Tokens are required at ``start`` whenever signatures are
    checked."""
    max_calls: int = Field(200, ge=1, le=100_000)
    """Started streams per edge; a handshake beyond is refused with 503 (a socket still waiting
    for its ``start`` does not count, and one that starts when the edge is full gets 1013)."""
    stream_start_timeout_seconds: float = Field(5.0, gt=0.0, le=60.0)
    """How long a socket may wait to send a valid ``start``; then it is closed (1008)."""
    max_pending_streams: int = Field(50, ge=1, le=100_000)
    """Sockets waiting for their ``start`` at once; one more closes the oldest waiting one, so
    that sockets that never start cannot lock a call out."""
    max_message_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    """The largest WebSocket message; a bigger one closes the socket with 1009."""
    max_messages_per_second: int = Field(400, ge=10, le=100_000)
    """Per-connection message rate; excess media is dropped and counted. Twilio sends 50 media
    messages a second: this leaves room for bursts after network stalls."""
    edge_resume_grace_seconds: float = Field(5.0, ge=0.0, le=120.0)
    """How long an edge whose stream broke (no ``stop``, no close of ours) keeps the call open
    for its resumption on another stream (Twilio's ``<Connect action>``) before ending it;
    0: at once."""

    # --- Console, outbound calls, recordings (services.console, services.recorder) --------------
    console_host: str = "127.0.0.1"
    """The console's listening address."""
    console_port: int = Field(8090, ge=0, le=65535)
    """The console's port (0: any free port, for tests)."""
    console_token: SecretStr | None = None
    """The bearer token every ``/api`` request must carry (``Authorization: Bearer ...``); the
    console refuses to start without one (``make run`` makes one up)."""
    twilio_account_sid: str = Field("", max_length=64)
    """With ``TWILIO_AUTH_TOKEN``: Twilio's REST API, for outbound calls (console) and the
    voicemail of an answering machine (edge)."""
    twilio_from_number: str = Field("", max_length=16)
    """E.164; the caller ID of outbound calls when a request names none."""
    twilio_api_base: str = ""
    """Where the ``twilio`` package sends its REST requests (a local stand-in in tests); empty:
    Twilio."""
    voicemail_message: str = Field("", max_length=2_000)
    """What an answering machine gets on an outbound call when the agent file says nothing
    (empty: hang up without a message)."""
    recordings_dir: str = ""
    """Recording is off unless set: the recorder writes one stereo ``<CallSid>.wav`` per call
    here, and the console serves them from here."""
    recordings_retention_days: float = Field(30.0, gt=0, le=3650)
    """Recordings older than this are removed (checked hourly)."""

    # --- Every service ----------------------------------------------------------------------------
    metrics_port: int = Field(0, ge=0, le=65535)
    """Every service's ``/metrics`` and ``/healthz`` port (0: off). The edge's too: keep it off
    the public network."""
    metrics_host: str = "127.0.0.1"
    """The address ``METRICS_PORT`` listens on: loopback unless set (``make run``'s stack keeps
    its figures on the machine). The container image sets ``0.0.0.0``, where probes and
    scrapers come from outside the container."""
    consumer_name: str = Field(
        default_factory=lambda: f"{socket.gethostname()}",
        max_length=200,
        json_schema_extra={"default_doc": "the host name"},
    )
    """This instance's name in the consumer groups; keep it stable across restarts, so that a
    restarted instance takes its own calls back at once."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """The lowest level logged."""

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
        # GPT-Live has its own endpoint and models: unset (or empty, as compose passes an unset
        # variable) means theirs, not Realtime's; for the other schemas, the field's default.
        if not isinstance(data, dict):
            return data
        data = dict(data)
        live = str(data.get("realtime_schema", "")).strip() == "live"
        for key, default in (("realtime_url", LIVE_URL), ("realtime_model", LIVE_MODEL)):
            if key in data and not str(data[key] or "").strip():
                del data[key]
            if live and key not in data:
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
                agent = load_agent_file(self.agent_file)
            except AgentFileError as exc:
                raise ValueError(str(exc)) from None
            where = f"AGENT_FILE={self.agent_file}"
            if mistake := reasoning_mistake(agent, self.realtime_model):
                raise ValueError(f"{where}: {mistake} (REALTIME_MODEL)")
            ga_only = [
                key
                for key, value in (
                    ("reasoning_effort", agent.reasoning_effort),
                    ("parallel_tool_calls", agent.parallel_tool_calls),
                    ("truncation", agent.truncation),
                    ("mcp_servers", agent.mcp_servers or None),
                )
                if value is not None
            ]
            if ga_only and self.realtime_schema in ("flat", "live"):
                raise ValueError(
                    f"{where}: {', '.join(ga_only)}: only in the GA dialect "
                    f"(REALTIME_SCHEMA=audio or auto), not with REALTIME_SCHEMA="
                    f"{self.realtime_schema}"
                )
            object.__setattr__(self, "_agent_cache", agent)
        return self

    @field_validator("post_call_webhook_url")
    @classmethod
    def _webhook(cls, value: str) -> str:
        parts = urlsplit(value)
        if value and (parts.scheme not in ("https", "http") or not parts.hostname):
            raise ValueError("must be an http(s):// URL with a host")
        return value

    @field_validator("realtime_prices")
    @classmethod
    def _prices(cls, value: str) -> str:
        try:
            load_prices(value)
        except PriceTableError as exc:
            raise ValueError(str(exc)) from None
        return value

    @property
    def prices(self) -> dict[str, dict[str, float]]:
        """The price table (US dollars per million tokens, by model and kind)."""
        cached = self.__dict__.get("_prices_cache")
        if not isinstance(cached, dict):
            cached = load_prices(self.realtime_prices)
            object.__setattr__(self, "_prices_cache", cached)
        return cached

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

    def stream_token_key(self) -> bytes | None:
        """The key stream tokens are minted and checked with (``None``: no secret to derive it
        from). Tokens are required at ``start`` whenever signatures are checked."""
        for secret in (
            self.stream_token_secret,
            self.twilio_auth_token,
            self.twilio_shared_key_secret,
        ):
            if secret is not None and secret.get_secret_value():
                return derive_key(secret.get_secret_value())
        return None

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
            model=agent.model,
            reasoning_effort=agent.reasoning_effort,
            parallel_tool_calls=agent.parallel_tool_calls,
            truncation=agent.truncation,
            mcp_tools=tuple(server.declaration() for server in agent.mcp_servers),
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


def load_settings(**overrides: Any) -> Settings:
    """Read the settings from the environment (``overrides`` win); raise :class:`ConfigError`."""
    try:
        return Settings(**overrides)  # pydantic checks each value against its field
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
