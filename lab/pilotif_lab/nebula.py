"""Nebula (slackhq/nebula) as a reference overlay of the lab, for the benchmarks.

Each tunnel gets a certificate authority of its own (nebula-cert, in the workdir both
hosts share); each end signs a certificate for its overlay IPv4 address and runs
`nebula -config` in the foreground with the other end in its static host map, no
lighthouse, and a firewall that lets everything through. Nebula's own defaults stand
otherwise (one routine), as a user who installs it gets them.
"""

import json
import time
from pathlib import Path

from pilotif_lab.netns import LabError, run_checked
from pilotif_lab.node import ForegroundNode, PeerStats
from pilotif_lab.reference_peers import reference_binary

START_TIMEOUT_S = 5.0
_POLL_INTERVAL_S = 0.05
_CA_DIR = "nebula-ca"


class NebulaNode(ForegroundNode):
    """A nebula process and its interface in one namespace."""

    program = "nebula"

    def start(self) -> None:
        """Sign our certificate, write the config, start nebula and wait for its TUN."""
        self._workdir.mkdir(parents=True, exist_ok=True)
        ca = self._certificate_authority()
        address = next(a for a in self.config.addresses if ":" not in a)
        cert, key = (self._workdir / f"{self.interface}.{ext}" for ext in ("crt", "key"))
        for path in (cert, key):
            path.unlink(missing_ok=True)
        run_checked(
            [
                str(reference_binary("nebula-cert")),
                "sign",
                *("-ca-crt", str(ca / "ca.crt"), "-ca-key", str(ca / "ca.key")),
                *("-name", self.interface, "-ip", address),
                *("-out-crt", str(cert), "-out-key", str(key)),
            ]
        )
        config_path = self._workdir / f"nebula-{self.interface}.yml"
        config_path.write_text(json.dumps(self._nebula_config(ca, cert, key), indent=2))
        self._process = self._namespace.spawn(
            str(reference_binary("nebula")), "-config", str(config_path), log_path=self.log_path
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._interface_up():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"nebula {self.interface} did not start: {self._log_tail()}")
            time.sleep(_POLL_INTERVAL_S)

    def _certificate_authority(self) -> Path:
        """The CA both ends of the lab share (made by the first to start)."""
        ca = self._workdir.parent / _CA_DIR
        if not (ca / "ca.crt").exists():
            ca.mkdir(parents=True, exist_ok=True)
            run_checked(
                [
                    str(reference_binary("nebula-cert")),
                    "ca",
                    *("-name", "pilotif lab"),
                    *("-out-crt", str(ca / "ca.crt"), "-out-key", str(ca / "ca.key")),
                ]
            )
        return ca

    def _nebula_config(self, ca: Path, cert: Path, key: Path) -> dict[str, object]:
        """Nebula's YAML config (JSON is YAML): the peer in the static host map."""
        hosts: dict[str, list[str]] = {}
        for peer in self.config.peers:
            overlay = next(ip.split("/")[0] for ip in peer.allowed_ips if ":" not in ip)
            if peer.endpoint is not None:
                hosts[overlay] = [peer.endpoint]
        everything = [{"port": "any", "proto": "any", "host": "any"}]
        return {
            "pki": {"ca": str(ca / "ca.crt"), "cert": str(cert), "key": str(key)},
            "static_host_map": hosts,
            "lighthouse": {"am_lighthouse": False, "hosts": []},
            "listen": {"host": "0.0.0.0", "port": self.config.listen_port},
            "punchy": {"punch": False},
            "tun": {"dev": self.interface, "mtu": self.config.mtu},
            "logging": {"level": "error"},
            "firewall": {"outbound": everything, "inbound": everything},
        }

    def _interface_up(self) -> bool:
        shown = self._namespace.run(
            "ip", "-j", "address", "show", "dev", self.interface, check=False
        )
        if shown.returncode != 0 or not shown.stdout.strip():
            return False
        links = json.loads(shown.stdout)
        return bool(links) and any(a.get("family") == "inet" for a in links[0]["addr_info"])

    def _log_tail(self) -> str:
        return self.log_path.read_text()[-2000:] if self.log_path.exists() else ""

    def peers(self) -> list[PeerStats]:
        """Nebula has no `wg show`: the benchmarks need none."""
        return []
