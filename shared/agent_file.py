"""What the gateway reads from the agent file (``AGENT_FILE``, TOML).

For now only ``voicemail_message``, the message an answering machine gets on an outbound call.
The full agent file (issue 16) replaces this module's one function with its loader.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from shared.settings import Settings


class AgentFileError(ValueError):
    """The agent file cannot be read or has a bad ``voicemail_message``."""


def voicemail_message(settings: Settings) -> str:
    """``voicemail_message`` from ``AGENT_FILE``, else ``VOICEMAIL_MESSAGE`` ("" when neither
    says one: the machine then gets a hang-up without a message). Raises AgentFileError."""
    if settings.agent_file:
        try:
            data = tomllib.loads(Path(settings.agent_file).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise AgentFileError(f"AGENT_FILE={settings.agent_file!r}: {exc}") from None
        message = data.get("voicemail_message")
        if message is not None:
            if not isinstance(message, str) or len(message) > 2000:
                raise AgentFileError("voicemail_message must be text of at most 2000 characters")
            return message
    return settings.voicemail_message
