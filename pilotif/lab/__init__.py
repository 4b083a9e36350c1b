"""The network-namespace lab behind the integration tests, `pilotif demo` and the benchmark.

Two hosts in their own namespaces joined by a veth pair, a tunnel between them run by
pilotif or by the reference wireguard-go, and the checks a person would make across it.
"""

from pilotif.lab.checks import PingResult, TransferResult, ping, start_transfer, tcp_transfer
from pilotif.lab.config import PeerConfig, TunnelConfig
from pilotif.lab.netns import LabError, Namespace
from pilotif.lab.node import PeerStats, TunnelNode
from pilotif.lab.pilotif_node import PilotifNode
from pilotif.lab.topology import LabHost, NodeKind, host_pair, make_node, tunnel, tunnel_configs
from pilotif.lab.wggo import WireguardGoNode

__all__ = [
    "LabError",
    "LabHost",
    "Namespace",
    "NodeKind",
    "PeerConfig",
    "PeerStats",
    "PilotifNode",
    "PingResult",
    "TransferResult",
    "TunnelConfig",
    "TunnelNode",
    "WireguardGoNode",
    "host_pair",
    "make_node",
    "ping",
    "start_transfer",
    "tcp_transfer",
    "tunnel",
    "tunnel_configs",
]
