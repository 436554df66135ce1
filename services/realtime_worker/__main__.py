"""`python -m services.realtime_worker`: settings are checked before anything heavy is imported."""

from shared.runtime.settings import Settings, settings_or_exit

settings = settings_or_exit("realtime_worker", checks=(Settings.keyless_worker,))

from services.realtime_worker.service import main  # noqa: E402

main(settings)
