"""The Twilio edge: Media Streams WebSocket in, Redis streams out, and the TwiML webhook."""
