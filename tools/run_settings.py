"""The dialect report's own variables for its tools (``make smoke``, ``make probe``): how many
runs, how much audio, how long to wait. They are the tools', not the services': the services
have their own (``REALTIME_OPEN_TIMEOUT_MS``)."""

from __future__ import annotations

import sys

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.runtime.settings import EXIT_CONFIG_ERROR, describe_error


class RunSettings(BaseSettings):
    """``RUNS``, ``AUDIO_MS`` and ``TIMEOUT_MS``, named and defaulted as the report has them."""

    model_config = SettingsConfigDict(
        env_prefix="", case_sensitive=False, extra="ignore", use_attribute_docstrings=True
    )

    runs: int = Field(10, ge=1, le=10_000)
    """Consecutive runs that must each return audio."""
    audio_ms: int = Field(600, ge=100, le=60_000)
    """Caller audio sent in each run, in milliseconds."""
    timeout_ms: int = Field(8000, ge=100, le=600_000)
    """How long each run may take, in milliseconds."""


def run_settings_or_exit(tool: str) -> RunSettings:
    try:
        return RunSettings()  # type: ignore[call-arg]  # read from the environment
    except ValidationError as exc:
        print(f"{tool}: configuration error: {describe_error(exc)}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG_ERROR) from None
