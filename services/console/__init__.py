"""The operators' console: live and recent calls in the browser, the calls API, outbound calls."""
