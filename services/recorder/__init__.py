"""The recorder: one stereo WAV per call (the caller left, what the caller heard right)."""
