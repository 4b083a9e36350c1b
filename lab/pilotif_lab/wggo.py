"""wireguard-go as the reference WireGuard peer of the lab (Debian's, or a newer build
given as `executable`).

It runs in the foreground (`wireguard-go -f`, so the lab owns its PID) inside a namespace
and is configured with `wg set` and `ip`. Its UAPI socket lives in the shared
/var/run/wireguard, so every instance on the machine needs its own interface name.
"""

import time
from pathlib import Path

from pilotif_lab.config import TunnelConfig
from pilotif_lab.netns import LabError, Namespace
from pilotif_lab.node import ForegroundNode, PeerStats

UAPI_DIR = Path("/var/run/wireguard")
START_TIMEOUT_S = 5.0
_POLL_INTERVAL_S = 0.05
_KEY_FILE_MODE = 0o600
_DUMP_PEER_FIELDS = 8
_NO_ENDPOINT = "(none)"


class WireguardGoNode(ForegroundNode):
    """A wireguard-go process and its interface in one namespace."""

    program = "wireguard-go"

    def __init__(
        self,
        namespace: Namespace,
        interface: str,
        config: TunnelConfig,
        workdir: Path,
        log_level: str = "error",
        executable: str = "wireguard-go",
    ) -> None:
        super().__init__(namespace, interface, config, workdir)
        self._log_level = log_level
        self._executable = executable

    def start(self) -> None:
        """Start wireguard-go, wait for its UAPI socket, set keys, peers and addresses."""
        self._workdir.mkdir(parents=True, exist_ok=True)
        socket_path = UAPI_DIR / f"{self.interface}.sock"
        if socket_path.exists():
            raise LabError(f"{socket_path} exists: another wireguard-go uses {self.interface}")
        self._process = self._namespace.spawn(
            self._executable,
            "-f",
            self.interface,
            log_path=self.log_path,
            env={"WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": self._log_level},
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not socket_path.exists():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise LabError(
                    f"wireguard-go {self.interface} did not start: {self.log_path.read_text()}"
                )
            time.sleep(_POLL_INTERVAL_S)
        self._namespace.run("wg", "set", self.interface, *self._wg_set_args())
        self._namespace.run("ip", "link", "set", self.interface, "mtu", str(self.config.mtu))
        for address in self.config.addresses:
            self._namespace.run("ip", "address", "add", address, "dev", self.interface)
        self._namespace.run("ip", "link", "set", self.interface, "up")

    def _key_file(self, name: str, key: str) -> str:
        path = self._workdir / f"{self.interface}-{name}.key"
        path.touch(mode=_KEY_FILE_MODE)
        path.write_text(key + "\n")
        return str(path)

    def _wg_set_args(self) -> list[str]:
        config = self.config
        args = [
            "private-key",
            self._key_file("private", config.private_key),
            "listen-port",
            str(config.listen_port),
        ]
        for number, peer in enumerate(config.peers):
            args += ["peer", peer.public_key]
            if peer.preshared_key is not None:
                args += ["preshared-key", self._key_file(f"psk{number}", peer.preshared_key)]
            args += ["allowed-ips", ",".join(peer.allowed_ips)]
            if peer.endpoint is not None:
                args += ["endpoint", peer.endpoint]
            if peer.persistent_keepalive_s is not None:
                args += ["persistent-keepalive", str(peer.persistent_keepalive_s)]
        return args

    def peers(self) -> list[PeerStats]:
        """Every peer as `wg show IFNAME dump` reports it."""
        dump = self._namespace.run("wg", "show", self.interface, "dump").stdout
        stats = []
        for line in dump.splitlines()[1:]:
            fields = line.split("\t")
            if len(fields) != _DUMP_PEER_FIELDS:
                raise LabError(f"unexpected `wg show dump` line: {line!r}")
            key, _psk, endpoint, _allowed, handshake, rx, tx, _keepalive = fields
            stats.append(
                PeerStats(
                    public_key=key,
                    endpoint=None if endpoint == _NO_ENDPOINT else endpoint,
                    latest_handshake=float(handshake) if int(handshake) else None,
                    rx_bytes=int(rx),
                    tx_bytes=int(tx),
                )
            )
        return stats
