"""Agent services: what a node serves its trusted peers on well-known TCP ports of its own
overlay addresses, in a wire format any language speaks with a plain socket
(docs/AGENTS.md). `wire` is the framing, `inbox` the messages kept on disk, `server` the
listeners, `limits` what one peer may use of them, `local_owner` who on this host made a
connection, and `client` what the daemon uses to reach a peer's services."""
