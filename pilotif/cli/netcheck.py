"""`pilotif netcheck [--json]`: what the network under this host lets a node do (as
`tailscale netcheck`): UDP over IPv4 and IPv6, the public endpoint, whether the NAT maps
by destination, port mapping, hairpinning, each relay's round trip, the MTU towards the
registry, the proxy and the transport a node would use. No daemon and no root needed:
the registry and relays come from `--registry`/`--relay`; else the registry from
PILOTIF_REGISTRY (the deployed node's) or the running node, with the node's relays (the
running node's, or those its registry named last, kept in node.json)."""

import asyncio
import logging
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from pilotif.cli.common import (
    DAEMON_ERRORS,
    PROXY_ENV,
    CliError,
    echo_result,
    host_port_option,
    json_option,
    json_output,
    proxy_of,
    secret_option,
    state_dir_option,
)
from pilotif.daemon.api import ControlError, request
from pilotif.daemon.netcheck import NetcheckOptions, NetcheckReport, run_netcheck
from pilotif.net.hostport import format_endpoint, parse_host_port
from pilotif.net.udp import UnderlayError
from pilotif.node.cache import NodeCache
from pilotif.node.netcheck import DEFAULT_TIMEOUT_S, ServerKind, ServerResult
from pilotif.util.files import StateFileError
from pilotif.util.paths import StatePaths

REGISTRY_ENV = "PILOTIF_REGISTRY"
"""The registry as the deployed node has it (deploy/systemd/pilotif.service, the docker
entrypoint)."""
_NO_NODE_HINT = (
    f"give --registry HOST:PORT (env {REGISTRY_ENV}) and --relay HOST:PORT for each relay"
)


def _yes_no(value: bool | None, unknown: str) -> str:
    return unknown if value is None else "yes" if value else "no"


def _rtt(result: ServerResult) -> str:
    return f"{result.rtt_ms} ms" if result.rtt_ms is not None else "no answer"


def _server_json(result: ServerResult) -> dict[str, Any]:
    seen = result.seen_from
    return {
        "endpoint": format_endpoint(result.server.endpoint),
        "rtt_ms": result.rtt_ms,
        "public_endpoint": format_endpoint(seen) if seen else None,
    }


def report_json(report: NetcheckReport) -> dict[str, Any]:
    """The report as `--json` prints it (README's CLI table names the keys)."""
    udp = report.udp
    nearest = udp.nearest_relay
    mapping = report.port_mapping
    return {
        "udp_v4": udp.udp_v4,
        "udp_v6": udp.udp_v6,
        "ipv6_route": report.ipv6_route,
        "public_v4": [format_endpoint(e) for e in udp.public_v4],
        "public_v6": [format_endpoint(e) for e in udp.public_v6],
        "mapping_varies_by_destination": udp.mapping_varies,
        "hairpinning": udp.hairpinning,
        "port_mapping": (
            {"protocol": mapping.protocol, "external": format_endpoint(mapping.external)}
            if mapping
            else None
        ),
        "port_mapping_checked": report.port_mapping_checked,
        "mtu_to_registry": udp.mtu,
        "registry": [_server_json(r) for r in udp.servers if r.server.kind is ServerKind.REGISTRY],
        "relays": [_server_json(r) for r in udp.servers if r.server.kind is ServerKind.RELAY],
        "nearest_relay": format_endpoint(nearest.server.endpoint) if nearest else None,
        "proxy": str(report.proxy) if report.proxy else None,
        "transport": report.transport,
        "stream": (
            {"works": report.stream.works, "rtt_ms": report.stream.rtt_ms}
            if report.stream
            else None
        ),
        "ignored": report.ignored,
    }


def report_text(report: NetcheckReport) -> str:
    """The report for people."""
    udp = report.udp
    has_v6 = udp.udp_v6 is not None
    lines = ["Report:", f"  * UDP over IPv4: {_yes_no(udp.udp_v4, '')}"]
    if not has_v6:
        lines.append("  * IPv6: no IPv6 address for the registry or any relay")
    else:
        why = ""
        if not udp.udp_v6:
            routed = report.ipv6_route
            why = " (nothing answered)" if routed else " (no IPv6 route on this host)"
        lines.append(f"  * UDP over IPv6: {_yes_no(udp.udp_v6, '')}{why}")
    public = [format_endpoint(e) for e in (*udp.public_v4, *udp.public_v6)]
    lines.append(f"  * public endpoint: {', '.join(public) or 'unknown (no answer)'}")
    varies = _yes_no(udp.mapping_varies, "unknown (fewer than two servers answered)")
    if udp.mapping_varies:
        varies += " (a symmetric NAT: direct paths need a port mapping or a cone NAT peer)"
    lines.append(f"  * mapping varies by destination: {varies}")
    lines.append(f"  * hairpinning: {_yes_no(udp.hairpinning, 'unknown')}")
    mapping = report.port_mapping
    if not report.port_mapping_checked:
        offered = "not checked"
    elif mapping is None:
        offered = "none (no PCP, NAT-PMP or UPnP IGD answer from the gateway)"
    else:
        offered = f"{mapping.protocol} (mapped {format_endpoint(mapping.external)}, deleted)"
    lines.append(f"  * port mapping: {offered}")
    mtu = f"{udp.mtu} bytes" if udp.mtu else "unknown (no padded probe was answered)"
    lines.append(f"  * MTU towards the registry: {mtu}")
    lines.append(f"  * proxy: {report.proxy or 'none'}")
    if report.transport == "udp":
        lines.append("  * transport: udp")
    else:
        via = f" through {report.proxy}" if report.proxy else ""
        lines.append(f"  * transport: tcp (UDP gets no answer: the stream{via} carries)")
    if report.stream is not None:
        stream = f"works ({report.stream.rtt_ms} ms)" if report.stream.works else "no answer"
        lines.append(f"  * stream (TCP) to the registry: {stream}")
    for result in udp.servers:
        if result.server.kind is ServerKind.REGISTRY:
            lines.append(f"  * registry {format_endpoint(result.server.endpoint)}: {_rtt(result)}")
    relays = [r for r in udp.servers if r.server.kind is ServerKind.RELAY]
    if relays:
        nearest = udp.nearest_relay
        where = format_endpoint(nearest.server.endpoint) if nearest else "unknown (no answer)"
        lines.append(f"  * nearest relay: {where}")
        lines.append("  * relay latency:")
        answered = sorted(relays, key=lambda r: (r.rtt_ms is None, r.rtt_ms or 0.0))
        lines += [f"      - {format_endpoint(r.server.endpoint)}: {_rtt(r)}" for r in answered]
    return "\n".join(lines)


Addresses = tuple[tuple[str, int], ...]


def _from_node(state_dir: Path) -> tuple[Addresses, Addresses]:
    """The registry's addresses and the relays the running node uses."""
    try:
        status = request(StatePaths(state_dir.absolute()).control_socket, "status")["status"]
    except ControlError as error:
        message = f"no registry to check: {_NO_NODE_HINT}, or run it where the node runs"
        raise CliError(f"{message} ({error})", error.code, _NO_NODE_HINT) from None
    node = status.get("node")
    if not node:
        raise CliError(
            "the running node has no registry (a static config)", "bad_input", _NO_NODE_HINT
        )
    registries = tuple(
        parse_host_port(e) for e in node.get("registry_replicas") or [node["registry"]]
    )
    relays = tuple(parse_host_port(r["endpoint"]) for r in node.get("relays", []))
    return registries, relays


def _node_relays(state_dir: Path) -> Addresses:
    """The relays of the node of `state_dir`: the running node's, else those its registry
    named last (node.json; none if it cannot be read)."""
    try:
        return _from_node(state_dir)[1]
    except CliError:
        pass
    try:
        snapshot = NodeCache(state_dir).load()
    except (StateFileError, OSError):
        return ()
    return tuple(relay.endpoint for relay in snapshot.relays) if snapshot else ()


def _relay_option(text: str) -> tuple[str, int]:
    """`--relay` as HOST:PORT or KEY@HOST:PORT (the key is not needed to probe)."""
    return host_port_option("--relay", text.rpartition("@")[2])


@click.command()
@click.option(
    "--registry",
    envvar=REGISTRY_ENV,
    help="The registry at HOST:PORT[,HOST:PORT...] (default: the running node's);"
    f" env {REGISTRY_ENV}.",
)
@click.option(
    "--relay",
    "relays",
    multiple=True,
    help="A relay at HOST:PORT or KEY@HOST:PORT (repeat; default without --registry: the"
    " node's, running or as its registry named them last).",
)
@click.option(
    "--proxy",
    envvar=PROXY_ENV,
    callback=secret_option,
    help="The HTTP proxy the stream would use, http://[USER:PASSWORD@]HOST:PORT;"
    f" default HTTPS_PROXY; env {PROXY_ENV}.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(0.5, 60.0),
    default=DEFAULT_TIMEOUT_S,
    show_default=True,
    help="Seconds the whole check may take.",
)
@click.option("--no-port-mapping", is_flag=True, help="Do not ask the gateway for a mapping.")
@json_option
@state_dir_option
@json_output(
    '{"udp_v4", "udp_v6": bool | null, "ipv6_route": bool | null, '
    '"public_v4": ["ip:port"], "public_v6", '
    '"mapping_varies_by_destination": bool | null, "hairpinning": bool | null, '
    '"port_mapping": {"protocol", "external"} | null, "port_mapping_checked", '
    '"mtu_to_registry": int | null, "registry": [{"endpoint", "rtt_ms", "public_endpoint"}], '
    '"relays": [...], "nearest_relay", "proxy", "transport": "udp" | "tcp", '
    '"stream": {"works", "rtt_ms"} | null, "ignored": {reason: count}}',
    DAEMON_ERRORS,
)
def netcheck(
    registry: str | None,
    relays: tuple[str, ...],
    proxy: str | None,
    timeout_s: float,
    no_port_mapping: bool,
    as_json: bool,
    state_dir: Path,
) -> None:
    """Check what the network here lets a node do: UDP, NAT, port mapping, relays, MTU."""
    given_relays = tuple(_relay_option(r) for r in relays)
    if registry is not None:
        registries = tuple(
            host_port_option("--registry", part.strip())
            for part in registry.split(",")
            if part.strip()
        )
        # PILOTIF_REGISTRY is the node's own registry: its relays go with it.
        from_env = click.get_current_context().get_parameter_source("registry") is (
            ParameterSource.ENVIRONMENT
        )
        relay_addresses = given_relays or (_node_relays(state_dir) if from_env else ())
    else:
        registries, from_node = _from_node(state_dir)
        relay_addresses = given_relays or from_node
    if not registries:
        raise CliError("--registry needs HOST:PORT[,HOST:PORT...]", "bad_input")
    options = NetcheckOptions(
        registries,
        relay_addresses,
        proxy_of(proxy),
        timeout_s,
        port_mapping=not no_port_mapping,
    )
    # A stream that does not open is part of the report, not a warning on stderr.
    logging.getLogger("pilotif").setLevel(logging.ERROR)
    try:
        report = asyncio.run(run_netcheck(options))
    except UnderlayError as error:
        raise CliError(str(error), "bad_input") from None
    echo_result(as_json, report_json(report), report_text(report))
