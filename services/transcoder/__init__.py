"""The transcoder stage: caller audio PCMU 8 kHz -> PCM16 24 kHz, reply audio back to PCMU."""
