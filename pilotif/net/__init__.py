"""The network under the overlay: UDP sockets for IPv4 and IPv6 (udp.py), many datagrams per
system call with GSO and GRO (udp_batch.py), the relay datagram's framing (relay_frame.py),
the transports an endpoint is reached by (transport.py), and the Bind that sends to any
endpoint over its transport (bind.py). HOST:PORT parsing and formatting live here too."""
