"""What the registry and the relays share: the sealed control wire format, the admission
gate (cookies, proofs, rate limits), relay tickets and the counters that rise across
restarts. The registry and the relay import this package, never each other."""
