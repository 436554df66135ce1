"""`python -m services.tool_runner`: settings (and the agent file) are checked first."""

from shared.runtime.settings import settings_or_exit

settings = settings_or_exit("tool_runner")

from services.tool_runner.service import main  # noqa: E402

main(settings)
