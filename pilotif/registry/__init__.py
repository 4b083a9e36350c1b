"""The rendezvous server: identities, names, addresses, trust, hole punching and relay.

`core` is its sans-IO logic (`RegistryCore`), in parts with one job each: `register`,
`trust` (trust and punching), `lookups`, `presence` (who is where), `routes` (relaying
by trust), `replicas`, with `directory` and `requests` what the handlers share. `store`
is its database (nodes; `store_trust`, `store_networks`, `store_replicas` the other
tables on `store_base`; `records` what it hands out), `database` and `schema` SQLite or
PostgreSQL under it, `joinkey` the join keys' text, and `server` the asyncio shell
(`run_registry`). The control wire is pilotif.control's, shared with the relays.
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
