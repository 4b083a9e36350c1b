"""Point the machine's resolver at the node's DNS responder, and put it back afterwards.

Two ways, chosen by what the machine runs:

- systemd-resolved (its stub file exists, /etc/resolv.conf names 127.0.0.53, `resolvectl`
  is installed): the responder becomes the DNS server of the TUN link for the routing
  domain `~pilot` only; resolved keeps sending every other name where it did before, so
  the responder needs no upstreams. Restored with `resolvectl revert`.
- otherwise /etc/resolv.conf is edited IN PLACE (it may be a bind mount, as in docker or
  `ip netns exec`, so it is never renamed over): a marker line and `nameserver` first, the
  original lines after it, and the original text saved in STATE_DIR. glibc asks the
  nameservers in order, so the responder is asked everything and must forward the names
  that are not ours to `original_nameservers()`.
"""

import ipaddress
import os
import shutil
import subprocess
from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

import dns.reversename

from pilotif.dns.responder import DOMAIN
from pilotif.util.files import write_private_file

RESOLV_CONF = Path("/etc/resolv.conf")
RESOLVED_STUB = Path("/run/systemd/resolve/stub-resolv.conf")
RESOLVED_STUB_ADDRESS = "127.0.0.53"
SAVED_NAME = "resolv.conf.orig"
MARKER = "# pilotif: managed"
RESOLVECTL_TIMEOUT_S = 10.0
_MANAGED_LINES = 2  # the marker and our nameserver
_ROTATE = "rotate"  # would send half of the `.pilot` queries to other nameservers


class ResolverError(RuntimeError):
    """The resolver could not be pointed at the responder; the message says what to do."""


class ResolverConfig:
    """Points the machine's resolver at our responder (`apply`) and puts it back (`restore`)."""

    def __init__(
        self,
        state_dir: Path,
        resolv_conf: Path = RESOLV_CONF,
        *,
        resolved_stub: Path = RESOLVED_STUB,
        resolvectl: str | None = None,
    ) -> None:
        self._resolv_conf = resolv_conf
        self._saved = state_dir / SAVED_NAME
        self._resolved_stub = resolved_stub
        self._resolvectl = resolvectl or shutil.which("resolvectl")
        self._link: str | None = None
        self._nameserver: str | None = None

    def uses_resolved(self) -> bool:
        """Whether systemd-resolved answers for this machine (and `resolvectl` is here)."""
        return (
            self._resolvectl is not None
            and self._resolved_stub.exists()
            and RESOLVED_STUB_ADDRESS in _nameservers(self._read_or_empty())
        )

    def apply(
        self,
        interface: str,
        nameserver: str,
        overlays: Sequence[IPv4Network | IPv6Network] = (),
    ) -> None:
        """Send `.pilot` queries and the reverse lookups of the `overlays` (and, editing
        resolv.conf, all queries) to `nameserver`."""
        if self.uses_resolved():
            self._run_resolvectl("dns", interface, nameserver)
            zones = [f"~{reverse_zone(network)}" for network in overlays]
            self._run_resolvectl("domain", interface, f"~{DOMAIN}", *zones)
            self._link = interface
        else:
            current = self._read()
            if current.startswith(MARKER):
                self._restore_file(current)
                current = self._read()
            write_private_file(self._saved, current)
            self._write_in_place(_managed(current, nameserver, self._saved))
        self._nameserver = nameserver

    def restore(self) -> None:
        """Undo `apply`, or the edit of a run that crashed; doing it twice changes nothing."""
        if self._link is not None:
            self._run_resolvectl("revert", self._link)
            self._link = None
        current = self._read_or_empty()
        if current.startswith(MARKER):
            self._restore_file(current)
        else:
            self._saved.unlink(missing_ok=True)  # the file was replaced since: keep theirs

    def original_nameservers(self) -> list[str]:
        """The nameservers to forward other names to: none with systemd-resolved, else those of
        the original resolv.conf (the saved copy while it is managed), without our own."""
        if self.uses_resolved():
            return []
        current = self._read_or_empty()
        original = self._original(current) if current.startswith(MARKER) else current
        return [server for server in _nameservers(original) if server != self._nameserver]

    def _restore_file(self, managed: str) -> None:
        self._write_in_place(self._original(managed))
        self._saved.unlink(missing_ok=True)

    def _original(self, managed: str) -> str:
        """The saved original; without it (state lost), the managed text minus our lines."""
        try:
            return _read_exactly(self._saved)
        except FileNotFoundError:
            return "".join(managed.splitlines(keepends=True)[_MANAGED_LINES:])

    def _read(self) -> str:
        try:
            return _read_exactly(self._resolv_conf)
        except (OSError, UnicodeDecodeError) as error:
            raise ResolverError(
                f"cannot read {self._resolv_conf} ({error}); "
                "pilotif needs it to make HOSTNAME.pilot resolve"
            ) from error

    def _read_or_empty(self) -> str:
        try:
            return self._read()
        except ResolverError:
            return ""

    def _write_in_place(self, text: str) -> None:
        """Overwrite the file's content, keeping its inode (a bind mount stays valid)."""
        with self._resolv_conf.open("r+", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.truncate()
            handle.flush()
            os.fsync(handle.fileno())

    def _run_resolvectl(self, *args: str) -> None:
        assert self._resolvectl is not None
        command = [self._resolvectl, *args]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=RESOLVECTL_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise ResolverError(f"{' '.join(command)} failed: {error}") from error
        if done.returncode != 0:
            raise ResolverError(
                f"{' '.join(command)} failed: {done.stderr.strip()}; "
                "check that systemd-resolved is running (systemctl status systemd-resolved)"
            )


def _read_exactly(path: Path) -> str:
    """The text of `path` with its line endings untouched."""
    with path.open(encoding="utf-8", newline="") as handle:
        return handle.read()


def _managed(original: str, nameserver: str, saved: Path) -> str:
    """The resolv.conf that asks `nameserver` first: marker, our line, then the original
    lines, except that `options rotate` is dropped (it would spread queries over all)."""
    lines = [f"{MARKER}, original saved in {saved}\n", f"nameserver {nameserver}\n"]
    for line in original.splitlines(keepends=True):
        words = line.split()
        if words[:1] == ["options"] and _ROTATE in words:
            kept = [word for word in words if word != _ROTATE]
            if len(kept) > 1:
                lines.append(" ".join(kept) + "\n")
        else:
            lines.append(line)
    return "".join(lines)


def _nameservers(text: str) -> list[str]:
    """The nameserver addresses of a resolv.conf text, in order (invalid ones left out)."""
    servers = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver" and _is_address(words[1]):
            servers.append(words[1])
    return servers


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True


def reverse_zone(network: IPv4Network | IPv6Network) -> str:
    """The reverse DNS zone that holds every address of `network`: its whole octets (or
    nibbles, for IPv6), e.g. 100.64.0.0/10 -> 100.in-addr.arpa."""
    full = dns.reversename.from_address(str(network.network_address)).to_text(omit_final_dot=True)
    labels = full.split(".")
    unit_bits = 8 if network.version == 4 else 4
    kept = network.prefixlen // unit_bits
    host_labels = len(labels) - 2 - kept
    return ".".join(labels[host_labels:])
