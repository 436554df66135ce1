"""`python -m services.recorder`: settings are checked before anything heavy is imported."""

import sys

from shared.runtime.settings import EXIT_CONFIG_ERROR, settings_or_exit

settings = settings_or_exit("recorder")
if not settings.recordings_dir:
    print(
        "recorder: configuration error: RECORDINGS_DIR is not set (recording is off unless it "
        "names a folder)",
        file=sys.stderr,
    )
    raise SystemExit(EXIT_CONFIG_ERROR)

from services.recorder.service import main  # noqa: E402

main(settings)
