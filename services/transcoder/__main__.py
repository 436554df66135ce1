"""`python -m services.transcoder`: settings are checked before anything heavy is imported."""

from shared.runtime.settings import settings_or_exit

settings = settings_or_exit("transcoder")

from services.transcoder.service import main  # noqa: E402

main(settings)
