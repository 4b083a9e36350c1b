"""`pilotif registry admin --state-dir DIR ...` (or `--database URL`): the registry
operator's commands.

They open the registry's database directly: on the registry's host as its owner (the
SQLite file is 0600), or its PostgreSQL database from wherever it is reachable. Networks,
join keys, nodes and the tags an operator grants. The registry may be running (SQLite
in WAL mode, or PostgreSQL, serves both); what changes here it reads at the next request
that needs it (a removed node, say, must join again at its next heartbeat).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from ipaddress import IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pilotif.cli.common import (
    ADMIN_ERRORS,
    CliError,
    database_option,
    echo_result,
    json_option,
    json_output,
    terminal_safe,
)
from pilotif.control.identity import HostnameError, normalize_hostname
from pilotif.util.duration import DurationError, parse_duration

if TYPE_CHECKING:
    from pilotif.registry.store import JoinKeyRecord, NodeRecord, Store

_ANY_NETWORK = IPv4Network("100.64.0.0/10")
"""The store needs an address range to allocate from; admin commands allocate none."""


@click.group()
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="The registry's state directory (where registry.db is).",
)
@database_option
@click.pass_context
def admin(ctx: click.Context, state_dir: Path | None, database: str | None) -> None:
    """Manage the registry's networks, join keys, nodes and tags (on its host, or
    wherever its PostgreSQL database is reachable)."""
    if (state_dir is None) == (database is None):
        raise CliError(
            "give the registry's --state-dir or its --database", "bad_input", _ADMIN_HINT
        )
    ctx.obj = database if database is not None else state_dir


_ADMIN_HINT = "pilotif registry admin --state-dir /var/lib/pilotif-registry network list"


@contextmanager
def _store(ctx: click.Context) -> Iterator[Store]:
    from pilotif.registry.database import DatabaseError
    from pilotif.registry.store import DB_FILE_NAME, Store, StoreError

    location: str | Path = ctx.obj
    if isinstance(location, Path):
        state_dir, location = location, location / DB_FILE_NAME
        if not location.is_file():
            raise CliError(
                f"no registry database at {location}",
                "no_registry",
                f"run `pilotif registry --state-dir {state_dir}` once, or pass its --state-dir",
            )
    try:
        store = Store(location, _ANY_NETWORK)
    except OSError as error:
        raise CliError(
            f"cannot open {location}: {error.strerror}",
            "no_access",
            "run it as the registry's user (root)",
        ) from None
    except DatabaseError as error:
        raise CliError(str(error), "no_database") from None
    try:
        yield store
    except StoreError as error:
        raise CliError(str(error), error.code) from None
    finally:
        store.close()


def _label(option: str, text: str) -> str:
    """A network name or tag: a DNS label, or a clear error."""
    try:
        return normalize_hostname(text)
    except HostnameError:
        raise CliError(
            f"{option}: {text!r} is not a DNS label", "bad_input", "use letters, digits and '-'"
        ) from None


# -- networks -----------------------------------------------------------------------


@admin.group()
def network() -> None:
    """Networks: groups of nodes that join with the same keys."""


@network.command("create")
@click.argument("name")
@click.option("--closed", is_flag=True, help="Hide its members from outsiders' `find`.")
@json_option
@click.pass_context
@json_output(
    '{"name", "closed", "created", "members"}',
    (*ADMIN_ERRORS, "network_exists"),
)
def network_create(ctx: click.Context, name: str, closed: bool, as_json: bool) -> None:
    """Create the network NAME."""
    label = _label("NAME", name)
    with _store(ctx) as store:
        created = store.create_network(label, closed=closed, now=time.time())
    echo_result(
        as_json, asdict(created), f"network {label} created" + (" (closed)" if closed else "")
    )


@network.command("list")
@json_option
@click.pass_context
@json_output(
    '[{"name", "closed", "created", "members"}]',
    ADMIN_ERRORS,
)
def network_list(ctx: click.Context, as_json: bool) -> None:
    """The networks and how many members each has."""
    with _store(ctx) as store:
        networks = store.networks()
    lines = [
        f"{n.name:24} {'closed' if n.closed else 'open':6} {n.members} members" for n in networks
    ]
    echo_result(as_json, [asdict(n) for n in networks], "\n".join(lines) or "(no networks)")


# -- join keys ------------------------------------------------------------------------


@admin.group()
def key() -> None:
    """Join keys: what a node passes as `up --join-key` to join."""


@key.command("create")
@click.option("--tags", default="", help="Comma-separated tags the key grants.")
@click.option("--network", "network_name", help="The network the key joins.")
@click.option("--reusable", is_flag=True, help="Admit any number of nodes (else one).")
@click.option("--expires", help="Stop admitting after this long (e.g. 1h, 7d).")
@json_option
@click.pass_context
@json_output(
    '{"key", "id", "network", "tags", "reusable", "expires", "uses", "revoked", "created"}',
    (*ADMIN_ERRORS, "unknown_network"),
)
def key_create(
    ctx: click.Context,
    tags: str,
    network_name: str | None,
    reusable: bool,
    expires: str | None,
    as_json: bool,
) -> None:
    """Create a join key and print it (shown once: the registry keeps only a digest)."""
    granted = tuple(
        dict.fromkeys(_label("--tags", t.strip()) for t in tags.split(",") if t.strip())
    )
    joins = _label("--network", network_name) if network_name is not None else None
    now = time.time()
    try:
        until = now + parse_duration(expires) if expires is not None else None
    except DurationError as error:
        raise CliError(f"--expires: {error}", "bad_input") from None
    with _store(ctx) as store:
        record, text = store.create_join_key(
            network=joins, tags=granted, reusable=reusable, expires=until, now=now
        )
    echo_result(as_json, {"key": text, **_key_fields(record)}, text)


def _key_fields(record: JoinKeyRecord) -> dict[str, Any]:
    return {**asdict(record), "tags": list(record.tags)}


@key.command("list")
@json_option
@click.pass_context
@json_output(
    '[{"id", "network", "tags", "reusable", "expires", "uses", "revoked", "created"}]',
    ADMIN_ERRORS,
)
def key_list(ctx: click.Context, as_json: bool) -> None:
    """Every join key (never its secret): id, network, tags, uses, state."""
    with _store(ctx) as store:
        keys = store.join_keys()
    now = time.time()
    echo_result(
        as_json,
        [_key_fields(k) for k in keys],
        "\n".join(_key_line(k, now) for k in keys) or "(no keys)",
    )


def _key_line(record: JoinKeyRecord, now: float) -> str:
    if record.revoked:
        state = "revoked"
    elif record.expires is not None and now >= record.expires:
        state = "expired"
    elif record.uses and not record.reusable:
        state = "used"
    else:
        state = "usable"
    kind = "reusable" if record.reusable else "one-off"
    return (
        f"{record.id}  {state:8} {kind:8} uses={record.uses}"
        f"  network={record.network or '-'}  tags={','.join(record.tags) or '-'}"
    )


@key.command("revoke")
@click.argument("key_id", metavar="ID")
@json_option
@click.pass_context
@json_output(
    '{"id", "revoked"}',
    (*ADMIN_ERRORS, "join_key_unknown"),
)
def key_revoke(ctx: click.Context, key_id: str, as_json: bool) -> None:
    """Revoke the key ID: it admits nobody more (nodes it admitted stay)."""
    with _store(ctx) as store:
        store.revoke_join_key(key_id.strip())
    echo_result(as_json, {"id": key_id, "revoked": True}, f"key {key_id} revoked")


# -- nodes and tags ---------------------------------------------------------------------


@admin.group()
def node() -> None:
    """Registered nodes."""


def _node_fields(record: NodeRecord) -> dict[str, Any]:
    return {
        "hostname": record.hostname,
        "ipv4": str(record.ipv4),
        "tags": list(record.tags),
        "granted_tags": list(record.granted_tags),
        "network": record.network,
        "last_seen": record.last_seen,
    }


@node.command("list")
@json_option
@click.pass_context
@json_output(
    '[NODE: {"hostname", "ipv4", "tags", "granted_tags", "network", "last_seen"}]',
    ADMIN_ERRORS,
)
def node_list(ctx: click.Context, as_json: bool) -> None:
    """Every node: name, address, network, tags (own and granted), last seen."""
    with _store(ctx) as store:
        nodes = store.nodes()
    lines = [
        terminal_safe(
            f"{n.hostname:24} {n.ipv4!s:15} network={n.network or '-'}"
            f"  tags={','.join(n.tags) or '-'}  granted={','.join(n.granted_tags) or '-'}"
        )
        for n in nodes
    ]
    echo_result(as_json, [_node_fields(n) for n in nodes], "\n".join(lines) or "(no nodes)")


@node.command("remove")
@click.argument("name")
@json_option
@click.pass_context
@json_output(
    "NODE",
    (*ADMIN_ERRORS, "unknown_peer"),
)
def node_remove(ctx: click.Context, name: str, as_json: bool) -> None:
    """Remove the node NAME: its name, address and trusts go."""
    with _store(ctx) as store:
        removed = store.remove_node(_label("NAME", name))
    echo_result(as_json, _node_fields(removed), f"node {removed.hostname} removed")


@node.command("rename")
@click.argument("name")
@click.argument("new_name")
@json_option
@click.pass_context
@json_output(
    "NODE",
    (*ADMIN_ERRORS, "unknown_peer", "name_taken"),
)
def node_rename(ctx: click.Context, name: str, new_name: str, as_json: bool) -> None:
    """Give the node NAME the name NEW_NAME."""
    with _store(ctx) as store:
        renamed = store.rename_node(_label("NAME", name), _label("NEW_NAME", new_name))
    echo_result(as_json, _node_fields(renamed), f"node {name} is now {renamed.hostname}")


@admin.group()
def tag() -> None:
    """Tags the operator grants (they count for --auto-approve tag:X)."""


def _tag_command(command: str, granted: bool, help_text: str) -> click.Command:
    """`registry admin tag grant|revoke NAME TAG`: show the node's granted tags after."""

    @click.argument("name")
    @click.argument("tag_name", metavar="TAG")
    @json_option
    @click.pass_context
    @json_output("NODE", (*ADMIN_ERRORS, "unknown_peer"))
    def set_tag(ctx: click.Context, name: str, tag_name: str, as_json: bool) -> None:
        label = _label("TAG", tag_name)
        with _store(ctx) as store:
            changed = store.set_granted_tag(_label("NAME", name), label, granted)
        text = f"{changed.hostname}: granted tags {','.join(changed.granted_tags) or '(none)'}"
        echo_result(as_json, _node_fields(changed), text)

    return tag.command(command, help=help_text)(set_tag)


tag_grant = _tag_command("grant", True, "Grant the node NAME the tag TAG.")
tag_revoke = _tag_command("revoke", False, "Take the tag TAG back from the node NAME.")
