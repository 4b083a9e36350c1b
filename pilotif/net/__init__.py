"""The network under the overlay: UDP sockets for IPv4 and IPv6 (udp.py), many datagrams per
system call with GSO and GRO (udp_batch.py), and the Bind that sends to any endpoint over
its transport, a UDP address or a relay (bind.py). HOST:PORT parsing lives here too."""
