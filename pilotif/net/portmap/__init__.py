"""Port mapping: asking the gateway to forward a UDP port to this node, so that a peer
can reach it through a NAT that would otherwise pick a new port for each destination
(Tailscale's `net/portmapper`). The codecs are sans-IO: NAT-PMP (RFC 6886, natpmp.py),
PCP (RFC 6887, pcp.py) and UPnP IGD (SSDP and SOAP, upnp.py), with one error
(errors.py); the client that tries them in turn and keeps the mapping alive is
client.py."""
