"""The network-namespace lab behind the integration tests, the demo (`scripts/demo.sh`,
`python3 -m pilotif_lab`) and the benchmarks. It is not part of pilotif's wheel: the
repository installs it as the `pilotif-lab` package (`lab/`).

Two hosts in their own namespaces joined by a veth pair, a tunnel between them run by
pilotif or by the reference wireguard-go, and the checks a person would make across it.
"""

from pilotif_lab.checks import PingResult, TransferResult, ping, start_transfer, tcp_transfer
from pilotif_lab.config import PeerConfig, TunnelConfig
from pilotif_lab.netns import LabError, Namespace
from pilotif_lab.node import PeerStats, TunnelNode
from pilotif_lab.pilotif_node import PilotifNode
from pilotif_lab.topology import LabHost, NodeKind, host_pair, make_node, tunnel, tunnel_configs
from pilotif_lab.wggo import WireguardGoNode

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
