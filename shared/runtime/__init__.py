"""The runtime every stage runs in: settings, Redis I/O, call claims, logs and metrics, and the
one service lifecycle. Unlike the pure cores beside this package, these modules do I/O."""
