"""Who, on this host, holds the other end of a TCP connection from this host.

A connection to the node's own overlay address from the node's own address comes from a
program on this host: any local user could open it. The services take it as the node
itself only when the user who made the connecting socket is the daemon's own (root: the
same user the control socket admits). The kernel lists every TCP socket of this network
namespace with its owner's uid in /proc/self/net/tcp; only a connection still
ESTABLISHED counts (a socket its owner closed becomes a time-wait entry, listed as root's).
"""

import sys
from ipaddress import IPv4Address
from pathlib import Path
from typing import Final

TCP_TABLE: Final = Path("/proc/self/net/tcp")
_ESTABLISHED: Final = "01"
_LOCAL, _REMOTE, _STATE, _UID, _INODE = 1, 2, 3, 7, 9


def tcp_owner_uid(
    client: tuple[str, int], server: tuple[str, int], table: Path = TCP_TABLE
) -> int | None:
    """The uid that owns the local socket connected from `client` to `server` (IPv4), or
    None when no such established socket exists on this host."""
    wanted = (_hex_endpoint(*client), _hex_endpoint(*server))
    try:
        lines = table.read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) <= _INODE or (fields[_LOCAL], fields[_REMOTE]) != wanted:
            continue
        if fields[_STATE] != _ESTABLISHED or fields[_INODE] == "0":
            return None
        return int(fields[_UID])
    return None


def _hex_endpoint(address: str, port: int) -> str:
    """An IPv4 endpoint as the kernel prints it: the address as a 32-bit number in this
    host's byte order, then the port, both in hex (`0100007F:1F90`)."""
    number = int.from_bytes(IPv4Address(address).packed, sys.byteorder)
    return f"{number:08X}:{port:04X}"
