"""The dual-stack lab: the NAT lab (pilotif_lab.nat) with IPv6 beside its IPv4.

    public namespace: sw0 198.18.0.1/24 and 3fff::1/64, registry on [::]:7946 (both)
      +-- router r0: wan0 198.18.0.11 (NAT) and 3fff::11 (routed), LAN 3fff:0:0:1::/64
      +-- router r1: wan0 198.18.0.12 (NAT) and 3fff::12 (routed), LAN 3fff:0:0:2::/64

IPv6 is not translated: each agent on a dual-stack LAN has a global address of its LAN's
/64, and its router is a stateful firewall as home routers are (nftables: what belongs to
a connection the LAN opened comes in, anything else from the WAN is dropped). The public
namespace routes each LAN's /64 to its router's WAN address, and each router reaches the
others only through it, as for IPv4. With `nat66` the LANs have ULAs (fd00:0:0:N::/64)
instead, which the router masquerades behind its WAN address (nftables, port-preserving
as a cone NAT): nothing outside reaches an agent's own IPv6 address, only the public
endpoint the registry sees.

The addresses are in 3fff::/20, the IPv6 documentation prefix of RFC 9637: never routed
on the internet (and nothing here routes out of the namespaces), yet Python 3.11's
`ipaddress` takes it for global (its table predates RFC 9637), as pilotif's candidate
check must take a real global address. 2001:db8::/32, the older documentation prefix, is
not global to `ipaddress`, so a node would refuse its peer's candidates there.
"""

import ipaddress
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from pilotif_lab.nat import REGISTRY, REGISTRY_PORT, NatKind, NatLab, Router, nat_lab
from pilotif_lab.netns import Namespace

REGISTRY_ADDRESS_V6: Final = "3fff::1"
REGISTRY_V6: Final = f"[{REGISTRY_ADDRESS_V6}]:{REGISTRY_PORT}"
REGISTRY_DUAL_STACK: Final = f"{REGISTRY},{REGISTRY_V6}"
"""`--registry` for a dual-stack agent: the registry over IPv4 and over IPv6."""
REGISTRY_NAME: Final = "registry.pflab.test"
"""The registry's name in every dual-stack agent's hosts file, with both addresses (as a
name with A and AAAA records); .test is reserved (RFC 2606)."""
REGISTRY_BY_NAME: Final = f"{REGISTRY_NAME}:{REGISTRY_PORT}"
PUBLIC_NETWORK_V6: Final = ipaddress.IPv6Network("3fff::/64")
LAN_NETWORKS_V6: Final = (
    ipaddress.IPv6Network("3fff:0:0:1::/64"),
    ipaddress.IPv6Network("3fff:0:0:2::/64"),
)
ULA_NETWORKS_V6: Final = (
    ipaddress.IPv6Network("fd00:0:0:1::/64"),
    ipaddress.IPv6Network("fd00:0:0:2::/64"),
)
"""The LANs behind NAT66."""
ROUTER_WAN_FIRST_HOST_V6: Final = 0x11
"""Router i's IPv6 WAN address is host ROUTER_WAN_FIRST_HOST_V6 + i of PUBLIC_NETWORK_V6."""
_LISTEN_BOTH: Final = f"[::]:{REGISTRY_PORT}"
_WAN: Final = "wan0"
_LAN_BRIDGE: Final = "lan0"
_AGENT_LINK: Final = "eth0"
_SWITCH: Final = "sw0"
_FORWARDING: Final = "net.ipv6.conf.all.forwarding=1"


def firewall_ruleset() -> str:
    """A stateful IPv6 firewall: the LAN's connections (and their ICMP errors) come back,
    nothing else from the WAN gets in."""
    return f"""
table ip6 pflab_fw6 {{
    chain forward {{
        type filter hook forward priority filter; policy accept;
        ct state established,related accept
        iifname "{_WAN}" drop
    }}
}}
"""


def nat66_ruleset() -> str:
    """Masquerade the LAN's IPv6 behind the WAN address (the source port kept when free)."""
    return f"""
table ip6 pflab_nat6 {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{_WAN}" masquerade
    }}
}}
"""


def _address(ns: Namespace, address: str, device: str) -> None:
    ns.run("ip", "-6", "address", "add", address, "dev", device, "nodad")


def router_wan_v6(index: int) -> str:
    """Router `index`'s IPv6 WAN address."""
    return str(PUBLIC_NETWORK_V6[ROUTER_WAN_FIRST_HOST_V6 + index])


def _lans(nat66: bool) -> tuple[ipaddress.IPv6Network, ...]:
    return ULA_NETWORKS_V6 if nat66 else LAN_NETWORKS_V6


def agent_v6(index: int, host: int, *, nat66: bool = False) -> str:
    """The IPv6 address of host `host` on router `index`'s LAN (a ULA with `nat66`)."""
    return str(_lans(nat66)[index][host])


def _add_router_v6(public: Namespace, router: Router, index: int, nat66: bool) -> None:
    """Router `index`'s IPv6: its WAN address (a /128 whose only neighbour is the public
    namespace), its firewall, and its LAN /64 routed to it (or masqueraded: `nat66`)."""
    ns, wan, lan = router.namespace, router_wan_v6(index), _lans(nat66)[index]
    ns.run("sysctl", "-q", "-w", _FORWARDING)
    _address(ns, f"{wan}/128", _WAN)
    ns.run("ip", "-6", "route", "add", REGISTRY_ADDRESS_V6, "dev", _WAN)
    ns.run("ip", "-6", "route", "add", "default", "via", REGISTRY_ADDRESS_V6, "src", wan)
    _address(ns, f"{lan[1]}/{lan.prefixlen}", _LAN_BRIDGE)
    ns.run("nft", "-f", "-", input_text=firewall_ruleset())
    if nat66:
        ns.run("nft", "-f", "-", input_text=nat66_ruleset())
    else:
        public.run("ip", "-6", "route", "add", str(lan), "via", wan)


def _add_agent_v6(ns: Namespace, index: int, host: int, nat66: bool) -> str:
    """The agent's IPv6 address and default route, and REGISTRY_NAME in its hosts file
    (`ip netns exec` mounts it over /etc/hosts; removed with the namespace's etc dir)."""
    lan = _lans(nat66)[index]
    address = agent_v6(index, host, nat66=nat66)
    registry_v4 = REGISTRY.rpartition(":")[0]
    (ns.etc_dir / "hosts").write_text(
        "127.0.0.1 localhost\n::1 localhost\n"
        f"{registry_v4} {REGISTRY_NAME}\n{REGISTRY_ADDRESS_V6} {REGISTRY_NAME}\n"
    )
    _address(ns, f"{address}/{lan.prefixlen}", _AGENT_LINK)
    ns.run("ip", "-6", "route", "add", "default", "via", str(lan[1]))
    return address


@contextmanager
def dual_stack_lab(
    nats: Sequence[NatKind],
    agents: Sequence[tuple[str, int]],
    workdir: Path,
    *,
    v4_only: Sequence[str] = (),
    v6_only: Sequence[str] = (),
    nat66: bool = False,
) -> Iterator[NatLab]:
    """The NAT lab (`nats`: each router's IPv4 NAT; `agents`: hostname, router index)
    with IPv6 on the public switch, every router and every agent but those in
    `v4_only` (behind NAT66 with `nat66`), and no IPv4 on the agents in `v6_only`; the
    registry listens on both families.
    Agents are not up yet (a dual-stack one joins with `registry=REGISTRY_DUAL_STACK`).
    Torn down as nat_lab's."""
    with nat_lab(nats, agents, workdir, registry_listen=_LISTEN_BOTH) as lab:
        lab.public.run("sysctl", "-q", "-w", _FORWARDING)
        _address(lab.public, f"{REGISTRY_ADDRESS_V6}/{PUBLIC_NETWORK_V6.prefixlen}", _SWITCH)
        for index, router in enumerate(lab.routers):
            _add_router_v6(lab.public, router, index, nat66)
        for hostname, agent in lab.agents.items():
            if hostname not in v4_only:
                index = lab.routers.index(agent.router)
                host = int(ipaddress.IPv4Address(agent.lan_address)) - int(agent.router.lan[0])
                _add_agent_v6(agent.namespace, index, host, nat66)
            if hostname in v6_only:
                agent.namespace.run("ip", "-4", "address", "flush", "dev", _AGENT_LINK)
        yield lab
