"""Keys a node pins on first use: the registry's key, and each trusted peer's key by
hostname. Both are kept in the state directory, written atomically with mode 0600."""

import json
from pathlib import Path

from pilotif.identity import write_private_file
from pilotif.keys import decode_key, encode_key


class PinStore:
    """The pinned registry key and hostname -> key pins of trusted peers."""

    def __init__(self, state_dir: Path) -> None:
        self._registry_path = state_dir / "registry.pub"
        self._peers_path = state_dir / "peers.json"
        self._peers: dict[str, str] = {}
        if self._peers_path.exists():
            loaded = json.loads(self._peers_path.read_text())
            if isinstance(loaded, dict):
                self._peers = {str(k): str(v) for k, v in loaded.items()}

    @property
    def registry_pin_path(self) -> Path:
        """Where the registry's key is pinned; deleting it resets the pin."""
        return self._registry_path

    def registry_key(self) -> bytes | None:
        """The pinned registry key, if any."""
        if not self._registry_path.exists():
            return None
        return decode_key(self._registry_path.read_text())

    def pin_registry(self, key: bytes) -> None:
        """Pin the registry's key."""
        write_private_file(self._registry_path, encode_key(key) + "\n")

    def peer_key(self, hostname: str) -> bytes | None:
        """The key pinned for a hostname, if any."""
        text = self._peers.get(hostname)
        return decode_key(text) if text else None

    def pin_peer(self, hostname: str, key: bytes) -> None:
        """Pin `key` for `hostname` (and forget any older name of that key)."""
        encoded = encode_key(key)
        self._peers = {name: k for name, k in self._peers.items() if k != encoded}
        self._peers[hostname] = encoded
        write_private_file(self._peers_path, json.dumps(self._peers, indent=2) + "\n")

    def unpin_peer(self, key: bytes) -> None:
        """Forget the pin of a key (after `untrust`)."""
        encoded = encode_key(key)
        remaining = {name: k for name, k in self._peers.items() if k != encoded}
        if remaining != self._peers:
            self._peers = remaining
            write_private_file(self._peers_path, json.dumps(self._peers, indent=2) + "\n")
