"""The registry as a service: `run_registry` runs a `RegistryCore` on a UDP socket with
asyncio, keeps its counter lease, serves its metrics, and stops on SIGTERM or SIGINT."""

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from typing import Final

from pilotif.control.counter_lease import CounterLease
from pilotif.control.identity import load_key, load_or_create_key
from pilotif.control.relay_info import RelayInfo
from pilotif.control.shell import CoreProtocol, Housekeeping, serve_until_stopped
from pilotif.control.wire import format_endpoint
from pilotif.observe.metrics import RegistryCollector, RegistrySample, start_metrics_server
from pilotif.registry.core import TRAFFIC_COUNTERS, RegistryCore
from pilotif.registry.database import DatabaseError, without_password
from pilotif.registry.recall import RECALL_EVERY_S
from pilotif.registry.register import DEFAULT_EXPIRE_AFTER_S
from pilotif.registry.replicas import ORPHAN_NOTICE_EVERY_S, PUSH_CHANNEL, REPLICA_ALIVE_S
from pilotif.registry.store import DB_FILE_NAME, Store
from pilotif.util.collector import FULL_COLLECTION_EVERY_S, collect_all, collect_oldest_on_schedule
from pilotif.util.logs import log_event, setup_logging
from pilotif.util.paths import StatePaths
from pilotif.wg.crypto import generate_private_key
from pilotif.wg.events import Endpoint
from pilotif.wg.keys import encode_key

REGISTRY_KEY_FILE: Final = "registry.key"
COUNTER_FILE: Final = "registry.counter"
EXPIRE_EVERY_S: Final = 60.0
WRITE_EVERY_S: Final = 0.1
"""How often heartbeats are written to the database (in one transaction), at most."""


def metrics_sample(core: RegistryCore) -> RegistrySample:
    """The registry's metrics, read from its core now."""
    counters = core.counters
    return RegistrySample(
        nodes_online=core.nodes_online(time.time()),
        requests=dict(core.requests),
        rejects=dict(core.rejects),
        relayed_packets=counters["relayed_packets"],
        relayed_bytes=counters["relayed_bytes"],
        dropped={k: v for k, v in counters.items() if k not in TRAFFIC_COUNTERS},
    )


async def _serve(
    core: RegistryCore,
    lease: CounterLease,
    listen: Endpoint,
    metrics: Endpoint | None,
    tcp_listens: tuple[Endpoint, ...],
) -> None:
    metrics_server = None
    if metrics is not None:
        collector = RegistryCollector(lambda: metrics_sample(core))
        metrics_server = await start_metrics_server(*metrics, collector)
        log_event("metrics_serving", listen=format_endpoint(metrics))
    collect_oldest_on_schedule()
    housekeeping: Housekeeping = [
        ("collect_cycles", FULL_COLLECTION_EVERY_S, collect_all),
        ("expire", EXPIRE_EVERY_S, lambda: core.expire(time.time())),
        ("write_heartbeats", WRITE_EVERY_S, core.store.flush),
        ("recall", RECALL_EVERY_S, lambda: core.recall(time.time())),
    ]
    pushes = None
    if core.replica is not None:
        pushes = _Pushes(core)
        housekeeping += [
            ("keep_replicas", REPLICA_ALIVE_S, lambda: core.keep_replicas(time.time())),
            ("listen_again", REPLICA_ALIVE_S, pushes.listen_again),
            ("tell_orphans", ORPHAN_NOTICE_EVERY_S, lambda: core.tell_orphans(time.time())),
        ]
    try:
        await serve_until_stopped(
            core,
            lease,
            listen,
            housekeeping,
            pushes.start if pushes is not None else None,
            tcp_listens,
        )
    finally:
        if metrics_server is not None:
            metrics_server.close()


class _Pushes:
    """What other replicas leave for this one in the database (a NOTIFY wakes it),
    handed to the core to send. If the notifications stop (the server restarted) it
    stops listening, once, rather than fail at every turn; `listen_again` starts again
    once the server is back."""

    def __init__(self, core: RegistryCore) -> None:
        self._core = core
        self._protocol: CoreProtocol | None = None
        self._fd: int | None = None

    def start(self, protocol: CoreProtocol) -> Callable[[], None]:
        """Listen from now on; how to stop."""
        self._protocol = protocol
        self._listen()
        return self._stop

    def listen_again(self) -> None:
        """Listen again if the notifications stopped (DatabaseError while the server is
        away: the housekeeping loop logs it once)."""
        if self._fd is None and self._protocol is not None:
            self._listen()
            log_event("replica_notifications_back")
            # What was left for us while nobody listened woke nobody.
            self._protocol.send(self._core.take_notes(time.time()))

    def _listen(self) -> None:
        fd = self._core.store.listen(PUSH_CHANNEL)
        assert fd is not None, "replicas run on PostgreSQL, which notifies"
        asyncio.get_running_loop().add_reader(fd, self._notified)
        self._fd = fd

    def _notified(self) -> None:
        assert self._protocol is not None
        try:
            self._protocol.send(self._core.handle_notifications(time.time()))
        except DatabaseError as error:
            self._stop()
            log_event("replica_notifications_lost", level=logging.ERROR, error=str(error))

    def _stop(self) -> None:
        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)
            self._fd = None


@dataclass(frozen=True)
class RegistryOptions:
    """How `pilotif registry` runs: its address range, whether it is closed, when it
    forgets nodes, and its database (None: SQLite in the state dir)."""

    network: IPv4Network
    require_join_key: bool = False
    expire_after_s: float = DEFAULT_EXPIRE_AFTER_S
    database: str | None = None
    relays: tuple[RelayInfo, ...] = ()
    """Standalone relays to name to nodes (none: this registry relays)."""
    tcp_listens: tuple[Endpoint, ...] = ()
    """Where streams are accepted besides TCP on the UDP listen address and port."""


def _replica_name(listen: Endpoint) -> str:
    """This process's name among the replicas: host, port and PID (one host may run
    several; a restarted replica is a new one)."""
    return f"{socket.gethostname()}:{listen[1]}:{os.getpid()}"


def _open_store(state_dir: Path, options: RegistryOptions) -> tuple[Store, bytes]:
    """The store and the registry's private key. With a PostgreSQL database the key is
    the database's; a `registry.key` in the state dir must then be the same key (it is
    stored there by the first replica that has one). DatabaseError or StateFileError,
    with nothing written, otherwise."""
    key_path = state_dir / REGISTRY_KEY_FILE
    if options.database is None:
        private_key = load_or_create_key(key_path)
        return Store(state_dir / DB_FILE_NAME, options.network), private_key
    local = load_key(key_path)
    store = Store(options.database, options.network)
    try:
        private_key = store.identity(local or generate_private_key(), time.time())
        if local is not None and local != private_key:
            raise DatabaseError(
                f"{key_path} holds another key than the database's registry identity:"
                " every replica must have the same key (move the file away to use the"
                " database's)"
            )
    except BaseException:
        store.close()
        raise
    return store, private_key


def run_registry(
    listen: tuple[str, int],
    state_dir: Path,
    options: RegistryOptions,
    log_format: str = "text",
    metrics: tuple[str, int] | None = None,
) -> None:
    """Run the registry in the foreground until SIGTERM or SIGINT.

    Its key is `state_dir/registry.key` (created on first run) and its database
    `state_dir/registry.db`; with `options.database` (a PostgreSQL URL) both are in that
    database instead (the first replica stores its key there, the others load it). The
    state dir holds the counter lease either way; nothing is written elsewhere. Logs go
    where setup_logging points (stderr), starting with the registry's public key. With
    `metrics` (HOST, PORT) it also serves Prometheus metrics at http://HOST:PORT/metrics.
    """
    setup_logging(as_json=log_format == "json")
    StatePaths(state_dir).create()
    store, private_key = _open_store(state_dir, options)
    lease = CounterLease(state_dir / COUNTER_FILE)
    core = RegistryCore(
        private_key,
        store,
        first_counter=lease.first,
        require_join_key=options.require_join_key,
        expire_after_s=options.expire_after_s,
        replica=_replica_name(listen) if options.database is not None else None,
        relays=options.relays,
    )
    log_event(
        "registry_started",
        listen=format_endpoint(listen),
        tcp_listen=",".join(format_endpoint(e) for e in options.tcp_listens),
        public_key=encode_key(core.public_key),
        network=str(options.network),
        closed=options.require_join_key,
        expire_after_s=options.expire_after_s,
        state_dir=str(state_dir),
        database=without_password(options.database) if options.database else DB_FILE_NAME,
        replica=core.replica or "",
        relays=",".join(f"{encode_key(r.key)}@{format_endpoint(r.endpoint)}" for r in core.relays),
        hint="nodes pin this key on first contact, or pass it as --registry-key",
    )
    try:
        asyncio.run(_serve(core, lease, listen, metrics, options.tcp_listens))
    finally:
        core.save()
        store.close()
        log_event("registry_stopped", **{k: v for k, v in sorted(core.counters.items())})
