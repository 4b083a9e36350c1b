"""The rendezvous server: identities, names, addresses, trust, hole punching and relay.

`wire` is the codec both the registry and the node speak (docs/CONTROL_PROTOCOL.md),
`store` the registry's database, `joinkey` the join keys' text, `server` its logic
(`RegistryCore`) and `service` its UDP loop (`run_registry`).
"""

from pilotif.control.wire import ControlChannel, WireError
from pilotif.registry.core import RegistryCore
from pilotif.registry.server import RegistryOptions, run_registry
from pilotif.registry.store import (
    NameTaken,
    NetworkFull,
    NodeRecord,
    NoRequest,
    Store,
    StoreError,
    TrustOutcome,
    UnknownNode,
)

__all__ = [
    "ControlChannel",
    "NameTaken",
    "NetworkFull",
    "NoRequest",
    "NodeRecord",
    "RegistryCore",
    "RegistryOptions",
    "Store",
    "StoreError",
    "TrustOutcome",
    "UnknownNode",
    "WireError",
    "run_registry",
]
