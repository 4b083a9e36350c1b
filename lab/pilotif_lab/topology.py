"""The lab's world: two hosts, each in its own namespace, joined by a veth pair (the underlay),
and a tunnel between them run by pilotif or by wireguard-go on either side (the overlay).
"""

import itertools
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pilotif_lab.config import (
    PeerConfig,
    TunnelConfig,
    new_preshared_key,
    new_private_key,
    public_key_of,
)
from pilotif_lab.nebula import NebulaNode
from pilotif_lab.netns import Namespace, namespace, new_run_id, remove_stale_namespaces, run_checked
from pilotif_lab.node import TunnelNode
from pilotif_lab.pilotif_node import PilotifNode
from pilotif_lab.reference_peers import reference_binary
from pilotif_lab.wggo import WireguardGoNode

UNDERLAY_INTERFACE = "ul0"
UNDERLAY_PREFIX_LEN = 24
OVERLAY_V4_PREFIX_LEN = 24
OVERLAY_V6_PREFIX_LEN = 64
TUNNEL_MTU = 1420
LISTEN_PORT = 51820
_IPV4_HOST_PREFIX_LEN = 32
_IPV6_HOST_PREFIX_LEN = 128


@dataclass(frozen=True)
class HostAddresses:
    """A host's address on the underlay and its two overlay addresses."""

    underlay: str
    overlay_v4: str
    overlay_v6: str


HOST_A_ADDRESSES = HostAddresses("198.18.0.1", "100.64.0.1", "fd7a:115c:a1e0::1")
HOST_B_ADDRESSES = HostAddresses("198.18.0.2", "100.64.0.2", "fd7a:115c:a1e0::2")


class NodeKind(StrEnum):
    """Which implementation runs one end of the tunnel."""

    PILOTIF = "pilotif"
    WIREGUARD_GO = "wireguard-go"
    """Debian's (bookworm: 0.0.20220316, no offloads)."""
    WIREGUARD_GO_2023 = "wireguard-go-0.0.20231211"
    """The newer reference (TUN TSO/GRO, UDP GSO/GRO), from scripts/reference-peers.sh."""
    NEBULA = "nebula"
    """Nebula 1.9.3, from scripts/reference-peers.sh (IPv4 overlay only)."""


_interface_numbers = itertools.count()


@dataclass(frozen=True)
class LabHost:
    """One end of the underlay: a namespace, its addresses and a directory for its files."""

    role: str
    namespace: Namespace
    addresses: HostAddresses
    workdir: Path
    run_token: str

    def new_interface_name(self) -> str:
        """A tunnel interface name used by nothing else on the machine (<= 15 characters)."""
        return f"pf{self.run_token}{self.role}{next(_interface_numbers)}"


@contextmanager
def host_pair(workdir: Path | None = None) -> Iterator[tuple[LabHost, LabHost]]:
    """Two namespaces joined by a veth pair with 198.18.0.1/24 and 198.18.0.2/24.

    Stale lab namespaces of killed runs are removed first. Files go to `workdir`, or to a
    temporary directory removed at the end. Everything is torn down when the block ends.
    """
    remove_stale_namespaces()
    run_id = new_run_id()
    token = run_id.rsplit("-", 1)[1]
    with ExitStack() as stack:
        if workdir is None:
            workdir = Path(tempfile.mkdtemp(prefix="pflab-"))
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        ns_a = stack.enter_context(namespace(run_id, "a"))
        ns_b = stack.enter_context(namespace(run_id, "b"))
        run_checked(
            [
                "ip",
                "link",
                "add",
                UNDERLAY_INTERFACE,
                "netns",
                ns_a.name,
                "type",
                "veth",
                "peer",
                "name",
                UNDERLAY_INTERFACE,
                "netns",
                ns_b.name,
            ]
        )
        hosts = []
        for role, ns, addresses in (("a", ns_a, HOST_A_ADDRESSES), ("b", ns_b, HOST_B_ADDRESSES)):
            address = f"{addresses.underlay}/{UNDERLAY_PREFIX_LEN}"
            ns.run("ip", "address", "add", address, "dev", UNDERLAY_INTERFACE)
            ns.run("ip", "link", "set", UNDERLAY_INTERFACE, "up")
            host_dir = workdir / role
            host_dir.mkdir(parents=True, exist_ok=True)
            hosts.append(LabHost(role, ns, addresses, host_dir, token))
        yield hosts[0], hosts[1]


def tunnel_configs(
    a: LabHost,
    b: LabHost,
    *,
    preshared_key: bool,
    keepalive_s: int | None = None,
) -> tuple[TunnelConfig, TunnelConfig]:
    """Matching configs for both ends: each knows the other's key, endpoint and addresses."""
    keys = {a.role: new_private_key(), b.role: new_private_key()}
    psk = new_preshared_key() if preshared_key else None
    configs = []
    for me, other in ((a, b), (b, a)):
        peer = PeerConfig(
            public_key=public_key_of(keys[other.role]),
            allowed_ips=(
                f"{other.addresses.overlay_v4}/{_IPV4_HOST_PREFIX_LEN}",
                f"{other.addresses.overlay_v6}/{_IPV6_HOST_PREFIX_LEN}",
            ),
            endpoint=f"{other.addresses.underlay}:{LISTEN_PORT}",
            preshared_key=psk,
            persistent_keepalive_s=keepalive_s,
        )
        configs.append(
            TunnelConfig(
                private_key=keys[me.role],
                listen_port=LISTEN_PORT,
                addresses=(
                    f"{me.addresses.overlay_v4}/{OVERLAY_V4_PREFIX_LEN}",
                    f"{me.addresses.overlay_v6}/{OVERLAY_V6_PREFIX_LEN}",
                ),
                mtu=TUNNEL_MTU,
                peers=(peer,),
            )
        )
    return configs[0], configs[1]


def make_node(
    kind: NodeKind, host: LabHost, config: TunnelConfig, policy: str | None = None
) -> TunnelNode:
    """A node of that kind on `host`, with a fresh interface name; not started yet.
    `policy` is a port policy's text for a pilotif node."""
    interface = host.new_interface_name()
    if kind is NodeKind.PILOTIF:
        return PilotifNode(host.namespace, interface, config, host.workdir, policy)
    if kind is NodeKind.NEBULA:
        return NebulaNode(host.namespace, interface, config, host.workdir)
    if kind is NodeKind.WIREGUARD_GO_2023:
        newer = str(reference_binary("wireguard-go"))
        return WireguardGoNode(host.namespace, interface, config, host.workdir, executable=newer)
    return WireguardGoNode(host.namespace, interface, config, host.workdir)


@contextmanager
def tunnel(
    kinds: tuple[NodeKind, NodeKind],
    hosts: tuple[LabHost, LabHost],
    *,
    preshared_key: bool,
    keepalive_s: int | None = None,
    policy: str | None = None,
) -> Iterator[tuple[TunnelNode, TunnelNode]]:
    """Both ends of a tunnel started on the two hosts, stopped when the block ends
    (pilotif ends with the port policy `policy`, if given)."""
    configs = tunnel_configs(*hosts, preshared_key=preshared_key, keepalive_s=keepalive_s)
    with ExitStack() as stack:
        nodes = []
        for kind, host, config in zip(kinds, hosts, configs, strict=True):
            node = make_node(kind, host, config, policy)
            stack.callback(node.stop)
            node.start()
            nodes.append(node)
        yield nodes[0], nodes[1]
