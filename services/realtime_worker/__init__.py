"""The realtime worker stage: one OpenAI Realtime session per call."""
