"""`python -m services.console`: settings are checked before anything heavy is imported."""

from shared.runtime.settings import settings_or_exit

settings = settings_or_exit("console")

from services.console.service import main  # noqa: E402

main(settings)
