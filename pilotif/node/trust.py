"""What a node keeps about trust in its state dir: the registry's pinned key, the key
pinned for each trusted peer's hostname, the keys this node consented to (asked for
trust, approved, or auto-approved), and its trust requests and answers that the
registry has not confirmed yet (the outbox, sent when the registry answers again). The
node adds a peer only with its consent, whatever the registry says.

`TrustRecord` is the in-memory state the node core works on; `TrustFiles` reads and
writes it (atomically, mode 0600, never through a symlink). A file that cannot be read
is a `StateFileError` naming the file and what to do.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pilotif.util.files import StateFileError, read_state_file, write_private_file
from pilotif.wg.keys import InvalidKeyError, decode_key, encode_key

REGISTRY_PIN_FILE: Final = "registry.pub"
PEERS_FILE: Final = "peers.json"


@dataclass
class TrustRecord:
    """The node's trust state; see the module docstring."""

    registry_key: bytes | None = None
    pins: dict[str, bytes] = field(default_factory=dict)
    """hostname -> the key first trusted under that name."""
    consented: set[bytes] = field(default_factory=set)
    """Keys this node asked for trust, approved, or approved by its policy."""
    outbox: dict[bytes, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    """peer key -> the latest trust request or answer about it (op, fields) that the
    registry has not confirmed."""

    def pin_peer(self, hostname: str, key: bytes) -> None:
        """Pin `key` for `hostname`, forgetting any older name of that key."""
        self.pins = {name: k for name, k in self.pins.items() if k != key}
        self.pins[hostname] = key

    def forget(self, key: bytes) -> None:
        """Drop the pin and the consent of a key (after untrust, revoke or reject)."""
        self.pins = {name: k for name, k in self.pins.items() if k != key}
        self.consented.discard(key)


class TrustFiles:
    """`registry.pub` and `peers.json` in a state dir."""

    def __init__(self, state_dir: Path) -> None:
        self.registry_pin_path = state_dir / REGISTRY_PIN_FILE
        self.peers_path = state_dir / PEERS_FILE

    def load(self) -> TrustRecord:
        """The record kept in the state dir (empty where files do not exist yet)."""
        record = TrustRecord()
        text = read_state_file(self.registry_pin_path)
        if text is not None:
            try:
                record.registry_key = decode_key(text)
            except InvalidKeyError:
                raise StateFileError(
                    f"{self.registry_pin_path} does not hold a registry key; delete it to pin "
                    "the registry's key again on first contact, or pass --registry-key"
                ) from None
        text = read_state_file(self.peers_path)
        if text is not None:
            self._load_peers(text, record)
        return record

    def _load_peers(self, text: str, record: TrustRecord) -> None:
        problem = (
            f"{self.peers_path} is not a pilotif peers file; move it away and run "
            "`pilotif up` again (trusted peers are fetched again from the registry, "
            "but each must be approved or asked for again)"
        )
        try:
            loaded = json.loads(text)
            if not isinstance(loaded, dict):
                raise StateFileError(problem)
            if "pins" not in loaded:
                # The first format: hostname -> key of peers that were trusted.
                record.pins = {str(k): decode_key(str(v)) for k, v in loaded.items()}
                record.consented = set(record.pins.values())
                return
            pins, consented = loaded["pins"], loaded.get("consented", [])
            outbox = loaded.get("outbox", {})
            if not (
                isinstance(pins, dict) and isinstance(consented, list) and isinstance(outbox, dict)
            ):
                raise StateFileError(problem)
            record.pins = {str(k): decode_key(str(v)) for k, v in pins.items()}
            record.consented = {decode_key(str(k)) for k in consented}
            record.outbox = {
                decode_key(str(k)): _outbox_entry(v, problem) for k, v in outbox.items()
            }
        except (ValueError, InvalidKeyError):
            raise StateFileError(problem) from None

    def save(self, record: TrustRecord) -> None:
        """Write the record (each file atomically)."""
        if record.registry_key is not None:
            write_private_file(self.registry_pin_path, encode_key(record.registry_key) + "\n")
        document = {
            "pins": {name: encode_key(key) for name, key in sorted(record.pins.items())},
            "consented": sorted(encode_key(key) for key in record.consented),
            "outbox": {
                encode_key(key): {"op": op, "fields": fields}
                for key, (op, fields) in record.outbox.items()
            },
        }
        write_private_file(self.peers_path, json.dumps(document, indent=2) + "\n")


def _outbox_entry(item: object, problem: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(item, dict):
        raise StateFileError(problem)
    op, fields = item.get("op"), item.get("fields")
    if not isinstance(op, str) or not isinstance(fields, dict):
        raise StateFileError(problem)
    return op, fields
