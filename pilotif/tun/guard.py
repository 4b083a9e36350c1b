"""Keep the node's overlay addresses reachable through the TUN only: an nftables table of
pilotif's own that drops packets for those addresses arriving on any other interface.

Linux takes a packet addressed to any of its addresses on any interface (the weak host
model, which rp_filter does not change): without this, a LAN neighbour that routes the
overlay address via this host's underlay address reaches the services bound to it with
no WireGuard, no trust and no policy. The table, `inet pilotif_<TUN>`, has one chain at
prerouting (before connection tracking) that drops, and counts, such packets; the host's
own traffic to itself (`lo`) is left alone.

The table is written as one nftables transaction that creates it, removes it and writes
it again: installing is idempotent and replaces what a crashed run left. `nft` (the
nftables package) must be installed; without it the caller says so and carries on, as
Tailscale does without netfilter.
"""

import re
import shutil
import subprocess
from collections.abc import Sequence
from ipaddress import IPv4Interface, IPv6Interface
from typing import Final

NFT_COMMAND: Final = "nft"
NFT_TIMEOUT_S: Final = 10.0
TABLE_PREFIX: Final = "pilotif_"
CHAIN: Final = "overlay_only_via_tun"
_LOOPBACK: Final = "lo"
_SAFE_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,15}")
"""Interface names written into the nftables script as they are (others are refused)."""


class GuardError(Exception):
    """The table could not be written or removed; the message says what to do."""


def table_name(interface: str) -> str:
    """The nftables table (family inet) that guards `interface`'s addresses."""
    return TABLE_PREFIX + interface.replace("-", "_").replace(".", "_")


def guard_overlay_addresses(
    interface: str, addresses: Sequence[IPv4Interface | IPv6Interface]
) -> None:
    """Drop packets to `addresses` that arrive on an interface other than `interface`
    (or loopback); replaces the table of an earlier run. GuardError when it cannot."""
    table = table_name(_checked(interface))
    rules = []
    for family, version in (("ip", 4), ("ip6", 6)):
        mine = [str(address.ip) for address in addresses if address.version == version]
        if mine:
            rules.append(
                f'    iifname != {{ "{interface}", "{_LOOPBACK}" }} '
                f"{family} daddr {{ {', '.join(mine)} }} counter drop"
            )
    script = "\n".join(
        [
            *_removal(table),
            f"table inet {table} {{",
            f"  chain {CHAIN} {{",
            "    type filter hook prerouting priority raw; policy accept;",
            *rules,
            "  }",
            "}",
            "",
        ]
    )
    _nft(script, f"guard the addresses of {interface}")


def remove_guard(interface: str) -> None:
    """Remove the table of `interface` if there is one (without `nft` there is none).
    GuardError when it cannot."""
    if shutil.which(NFT_COMMAND) is None:
        return
    _nft("\n".join([*_removal(table_name(_checked(interface))), ""]), f"unguard {interface}")


def _removal(table: str) -> list[str]:
    # Declaring the table first makes deleting it succeed whether or not it was there.
    return [f"table inet {table}", f"delete table inet {table}"]


def _checked(interface: str) -> str:
    if not _SAFE_NAME.fullmatch(interface):
        raise GuardError(
            f"cannot guard {interface!r}: use an interface name of letters, digits, "
            f"'_', '.' and '-'"
        )
    return interface


def _nft(script: str, action: str) -> None:
    if shutil.which(NFT_COMMAND) is None:
        raise GuardError(
            f"cannot {action}: the `{NFT_COMMAND}` command is missing; install nftables "
            f"so that only the TUN reaches the overlay addresses"
        )
    try:
        done = subprocess.run(
            [NFT_COMMAND, "-f", "-"],
            input=script,
            capture_output=True,
            text=True,
            timeout=NFT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise GuardError(f"cannot {action}: {error}") from None
    if done.returncode != 0:
        reason = done.stderr.strip().splitlines()[0] if done.stderr.strip() else "failed"
        raise GuardError(f"cannot {action}: nft: {reason}; run as root (CAP_NET_ADMIN)")
