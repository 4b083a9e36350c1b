"""What the registry and the relays share: the sealed control wire format (`wire`), the
front every control message passes (`front`: the admission `gate` with cookies, proofs
and rate limits, a channel per sender, sealing), the `forwarder` of relay messages with
its owner's authorize rule, relay `tickets`, the relay list (`relay_info`), a node's
`identity`, the counters that rise across restarts (`counter_lease`), and the asyncio
`shell` both servers run in. The registry and the relay import this package, never
each other."""
