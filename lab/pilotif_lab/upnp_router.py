"""A lab router that maps ports for its LAN: miniupnpd (the Debian package, nftables
backend) answering NAT-PMP, PCP and UPnP IGD on the router's LAN side, with its own
config file, lease file and PID file in the lab's workdir; started with `-d` in the
router's namespace and stopped by PID.

miniupnpd refuses to forward ports when its external address is private or reserved,
as every lab address is (198.18.0.0/15). Its STUN test lifts that: when a STUN server
answers from another address and port too (RFC 5780's CHANGE-REQUEST) and all four
answers reach the router, the address is "unfiltered" and forwarding is on. So the lab
runs such a STUN server (pilotif_lab.stun_server) on the internet router, at
STUN_ADDRESS and STUN_ALTERNATE_ADDRESS, and the router's own input is left open.
"""

import subprocess
import sys
from pathlib import Path
from typing import Final

from pilotif_lab.netns import LabError, Namespace

STUN_ADDRESS: Final = "198.18.0.1"
STUN_ALTERNATE_ADDRESS: Final = "198.18.0.9"
STUN_PORT: Final = 3478
STUN_ALTERNATE_PORT: Final = 3479
MINIUPNPD: Final = "miniupnpd"
MINIUPNPD_CHAINS: Final = """
table inet filter {
    chain forward {
        type filter hook forward priority filter; policy accept;
        jump miniupnpd
    }
    chain miniupnpd {
    }
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        jump prerouting_miniupnpd
    }
    chain prerouting_miniupnpd {
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        jump postrouting_miniupnpd
    }
    chain postrouting_miniupnpd {
    }
}
"""
"""The table and chains miniupnpd adds its rules to (its defaults: table `filter` of
family inet), as Debian's nft_init.sh makes them."""
MAPPING_CHAIN: Final = ("inet", "filter", "prerouting_miniupnpd")
"""Where miniupnpd puts one DNAT rule per mapping."""
_READY_LINE: Final = "Listening for NAT-PMP/PCP traffic"
_FORWARDING_ON: Final = "Port forwarding is now enabled"


def start_stun_server(public: Namespace) -> "subprocess.Popen[bytes]":
    """The STUN server on the internet router (its alternate address must be there)."""
    process = public.spawn(
        sys.executable,
        "-m",
        "pilotif_lab.stun_server",
        STUN_ADDRESS,
        STUN_ALTERNATE_ADDRESS,
        str(STUN_PORT),
        str(STUN_ALTERNATE_PORT),
        pipes=True,
    )
    assert process.stdout is not None
    if process.stdout.readline().strip() != b"ready":
        public.stop(process)
        raise LabError("the lab's STUN server did not start")
    return process


def miniupnpd_config(wan: str, lan: str, lan_network: str, workdir: Path) -> str:
    """miniupnpd's configuration: NAT-PMP (and PCP) and UPnP on `lan`, mappings for the
    LAN's own addresses only (secure mode), the external address tested by STUN."""
    return "\n".join(
        [
            f"ext_ifname={wan}",
            f"listening_ip={lan}",
            "enable_natpmp=yes",
            "enable_upnp=yes",
            "secure_mode=yes",
            "system_uptime=yes",
            "ext_perform_stun=yes",
            f"ext_stun_host={STUN_ADDRESS}",
            f"ext_stun_port={STUN_PORT}",
            f"lease_file={workdir / 'upnp.leases'}",
            "uuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d07b",
            f"allow 1024-65535 {lan_network} 1024-65535",
            "deny 0-65535 0.0.0.0/0 0-65535",
            "",
        ]
    )


def start_miniupnpd(
    router: Namespace, config: str, workdir: Path
) -> tuple["subprocess.Popen[bytes]", Path]:
    """miniupnpd in the router's namespace (its chains made first); the process and its
    log. The caller waits for `forwarding_on` before relying on it."""
    workdir.mkdir(parents=True, exist_ok=True)
    router.run("nft", "-f", "-", input_text=MINIUPNPD_CHAINS)
    config_path = workdir / "miniupnpd.conf"
    config_path.write_text(config)
    log_path = workdir / "miniupnpd.log"
    process = router.spawn(
        MINIUPNPD,
        "-d",
        "-f",
        str(config_path),
        "-P",
        str(workdir / "miniupnpd.pid"),
        log_path=log_path,
    )
    return process, log_path


def forwarding_on(log_path: Path) -> bool:
    """Whether miniupnpd says it listens and forwards ports (its STUN test passed)."""
    text = log_path.read_text() if log_path.exists() else ""
    return _READY_LINE in text and _FORWARDING_ON in text


def mappings(router: Namespace) -> list[str]:
    """The port forwards miniupnpd holds now (its DNAT rules, as nft lists them)."""
    listing = router.run("nft", "list", "chain", *MAPPING_CHAIN).stdout
    return [line.strip() for line in listing.splitlines() if " dnat " in line]
