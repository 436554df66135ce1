"""`python -m services.twilio_edge`: settings are checked before anything heavy is imported."""

from shared.runtime.settings import Settings, settings_or_exit

settings = settings_or_exit("twilio_edge", checks=(Settings.unsigned_edge,))

from services.twilio_edge.service import main  # noqa: E402

main(settings)
