"""`pilotif ...`: the command line. Every error is one line that says what to do next."""

import contextlib
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from pilotif.cli.common import (
    DAEMON_ERRORS,
    DATABASE_ENV,
    PROXY_ENV,
    REGISTRY_ERRORS,
    CliError,
    database_option,
    echo_result,
    forget_secrets,
    host_port_option,
    json_option,
    json_output,
    node_request,
    proxy_of,
    secret_option,
    state_dir_option,
    terminal_safe,
)
from pilotif.cli.lazy import LazyGroup
from pilotif.cli.userspace import (
    PROXY_CREDENTIALS_ENV,
    require_tun,
    userspace_from,
    userspace_options,
)
from pilotif.daemon.api import ControlError, request, stream
from pilotif.net.fallback import TransportMode
from pilotif.util.duration import DurationError, parse_duration
from pilotif.util.files import StateFileError, append_private_file
from pilotif.util.logs import log_event, setup_logging
from pilotif.util.paths import STATE_DIR_ENV, StatePaths

READY_FD_ENV = "PILOTIF_READY_FD"
JOIN_KEY_ENV = "PILOTIF_JOIN_KEY"
WEBHOOK_ENV = "PILOTIF_WEBHOOK"
_SECRET_OPTIONS = {
    "--join-key": JOIN_KEY_ENV,
    "--webhook": WEBHOOK_ENV,
    "--proxy": PROXY_ENV,
    "--proxy-credentials": PROXY_CREDENTIALS_ENV,
}
"""`up`'s options that carry a secret: the daemon `up` starts gets them in its
environment, never on its command line."""
DEFAULT_INTERFACE = "pilot0"
STARTUP_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 10.0
_POLL_S = 0.05
PING_INTERVAL_S = 1.0
_INTERFACE_NAME = re.compile(r"^[a-zA-Z0-9_=+.-]{1,15}$")

F = TypeVar("F", bound=Callable[..., Any])

if TYPE_CHECKING:
    from pilotif.control.relay_info import RelayInfo
    from pilotif.daemon.wgquick import InterfaceConfig
    from pilotif.node.registration import NodeOptions
    from pilotif.userspace.node import UserspaceOptions


_LAZY_COMMANDS = {
    "allow": "pilotif.cli.policy:allow",
    "deny": "pilotif.cli.policy:deny",
    "policy": "pilotif.cli.policy:policy",
    "send": "pilotif.cli.services:send",
    "inbox": "pilotif.cli.services:inbox",
    "send-file": "pilotif.cli.services:send_file",
    "received": "pilotif.cli.services:received",
    "publish": "pilotif.cli.services:publish",
    "subscribe": "pilotif.cli.services:subscribe",
    "task": "pilotif.cli.task:task",
    "bench": "pilotif.cli.tcp:bench",
    "listen": "pilotif.cli.tcp:listen",
    "context": "pilotif.cli.context:context",
    "mcp": "pilotif.cli.mcp:mcp",
    "netcheck": "pilotif.cli.netcheck:netcheck",
}
"""The command groups of their own modules, imported only when one of them runs."""


@click.group(
    cls=LazyGroup,
    lazy=_LAZY_COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(package_name="pilotif")
def cli() -> None:
    """pilotif: a permanent virtual IP for every agent, over WireGuard."""


def _interface_name(name: str | None, config_path: Path) -> str:
    if name is None:
        stem = config_path.stem
        return stem if _INTERFACE_NAME.match(stem) else DEFAULT_INTERFACE
    if not _INTERFACE_NAME.match(name):
        raise CliError(
            f"invalid interface name {name!r}: use 1-15 letters, digits or _=+.-", "bad_input"
        )
    return name


def _daemon_running(paths: StatePaths) -> bool:
    try:
        request(paths.control_socket, "status")
    except ControlError:
        return False
    return True


@cli.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A wg-quick style file: [Interface] and [Peer] sections (static peers).",
)
@click.option(
    "--registry",
    help="Join the registry at HOST:PORT instead of a static config (replicas:"
    " HOST:PORT,HOST:PORT...; a name with several addresses counts as several).",
)
@click.option("--hostname", help="This node's name on the registry (a DNS label).")
@click.option("--tags", default="", help="Comma-separated tags for discovery.")
@click.option("--registry-key", help="The registry's public key (else pinned on first contact).")
@click.option(
    "--auto-approve",
    is_flag=False,
    flag_value="all",
    default=None,
    help="Approve trust requests by policy: alone for everyone, `network` for members of "
    "this node's network, or tag:NAME for nodes the registry's operator granted NAME.",
)
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A port policy file (see `pilotif policy`); reloaded on SIGHUP.",
)
@click.option(
    "--join-key",
    envvar=JOIN_KEY_ENV,
    callback=secret_option,
    help="A join key from the registry's operator, or file:PATH (a file holding it);"
    f" env {JOIN_KEY_ENV}.",
)
@click.option("--listen-port", type=click.IntRange(0, 65535), help="UDP port (registry mode).")
@click.option(
    "--transport",
    type=click.Choice([mode.value for mode in TransportMode]),
    default=TransportMode.AUTO.value,
    show_default=True,
    help="How to reach the registry and relays: UDP, a stream (TCP, looking like HTTPS),"
    " or auto: the stream when UDP gets no answer, back to UDP when it does.",
)
@click.option(
    "--proxy",
    envvar=PROXY_ENV,
    callback=secret_option,
    help="An HTTP proxy for the stream, http://[USER:PASSWORD@]HOST:PORT (CONNECT), or"
    f" file:PATH (a file holding it); default HTTPS_PROXY; env {PROXY_ENV}.",
)
@click.option(
    "--accept-dns",
    type=click.BOOL,
    default=True,
    show_default=True,
    help="Point the system resolver at pilotif for NAME.pilot (registry mode).",
)
@click.option(
    "--interface", help="Name of the TUN interface (default: from the config, or pilot0)."
)
@click.option("--foreground", is_flag=True, help="Stay in the foreground (systemd, docker).")
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.option("--metrics", help="Serve Prometheus metrics at http://HOST:PORT/metrics.")
@click.option(
    "--webhook",
    envvar=WEBHOOK_ENV,
    callback=secret_option,
    help="POST every event (see `pilotif events`) as JSON to this URL, or file:PATH (a file"
    f" holding it, when it carries a token); env {WEBHOOK_ENV}.",
)
@userspace_options
@state_dir_option
def up(
    config_path: Path | None,
    registry: str | None,
    hostname: str | None,
    tags: str,
    registry_key: str | None,
    auto_approve: str | None,
    policy_file: Path | None,
    join_key: str | None,
    listen_port: int | None,
    transport: str,
    proxy: str | None,
    accept_dns: bool,
    interface: str | None,
    foreground: bool,
    log_format: str,
    metrics: str | None,
    webhook: str | None,
    userspace: bool,
    socks5: str,
    http_proxy: str | None,
    forward: tuple[str, ...],
    expose: tuple[str, ...],
    expose_udp: tuple[str, ...],
    proxy_credentials: str | None,
    allow_remote_proxy: bool,
    state_dir: Path,
) -> None:
    """Bring the interface up; returns once it is up, the daemon runs on in the background."""
    from pilotif.daemon.wgquick import InterfaceConfig

    forget_secrets(*_SECRET_OPTIONS.values())
    local = None
    if userspace:
        local = userspace_from(
            socks5, http_proxy, forward, expose, proxy_credentials, allow_remote_proxy, expose_udp
        )
    else:
        require_tun()
    paths = StatePaths(state_dir.absolute())
    observe = _Observe(
        metrics=host_port_option("--metrics", metrics) if metrics is not None else None,
        webhook=_webhook_url(webhook) if webhook is not None else None,
    )
    node_options: NodeOptions | None = None
    if config_path is not None:
        config, name, node_options = _static_config(config_path, interface, registry)
    elif registry is None:
        raise CliError(_CONFIG_OR_REGISTRY, "bad_input")
    else:
        node_options = replace(
            _node_options(registry, hostname, tags, registry_key, auto_approve),
            accept_dns=accept_dns,
            join_key=_join_key(join_key) if join_key else None,
            transport=TransportMode(transport),
            proxy=proxy_of(proxy),
        )
        name = _interface_name(interface, Path(DEFAULT_INTERFACE))
        config = InterfaceConfig(
            private_key=b"", addresses=(), listen_port=listen_port, mtu=None, peers=()
        )
    policy = _policy_file(policy_file) if policy_file is not None else None
    if _daemon_running(paths):
        raise CliError(
            f"pilotif is already running with state dir {paths.root}; "
            "run `pilotif down` first or use another --state-dir",
            "already_running",
        )
    config = _prepare_state(paths, config, with_identity=node_options is not None)
    if foreground:
        _run_foreground(config, name, paths, log_format, node_options, observe, policy, local)
    else:
        secrets = {
            JOIN_KEY_ENV: join_key,
            WEBHOOK_ENV: webhook,
            PROXY_ENV: proxy,
            PROXY_CREDENTIALS_ENV: proxy_credentials,
        }
        _start_background(name, paths, {k: v for k, v in secrets.items() if v is not None})


def _prepare_state(
    paths: StatePaths, config: "InterfaceConfig", *, with_identity: bool
) -> "InterfaceConfig":
    """Create the state dir; a node's config gets its identity key from it (made on the
    first start)."""
    from pilotif.control.identity import load_or_create_key

    try:
        paths.create()
        if with_identity:
            return replace(config, private_key=load_or_create_key(paths.identity_key))
    except StateFileError as error:
        raise CliError(str(error), "bad_state") from None
    except OSError as error:
        raise CliError(f"cannot use state dir {paths.root}: {error.strerror}") from None
    return config


_CONFIG_OR_REGISTRY = (
    "give either --config FILE (static peers) or --registry HOST:PORT --hostname NAME"
)


def _static_config(
    config_path: Path, interface: str | None, registry: str | None
) -> "tuple[InterfaceConfig, str, None]":
    """`up --config FILE`: the interface it describes and its name (no node: a
    `--registry` beside it is refused)."""
    from pilotif.daemon.wgquick import ConfigError, load_config

    if registry is not None:
        raise CliError(_CONFIG_OR_REGISTRY, "bad_input")
    try:
        config = load_config(config_path)
    except ConfigError as error:
        raise CliError(str(error), "bad_config") from None
    return config, _interface_name(interface, config_path), None


@dataclass(frozen=True)
class _Observe:
    """`up --metrics` and `--webhook`."""

    metrics: tuple[str, int] | None
    webhook: str | None


def _webhook_url(url: str) -> str:
    from pilotif.observe import WebhookError, check_webhook_url

    try:
        return check_webhook_url(url)
    except WebhookError as error:
        raise CliError(f"--webhook: {error}", "bad_input") from None


def _policy_file(path: Path) -> Path:
    """The file, checked now: a bad line fails `up` with its file and line number."""
    from pilotif.node.policy import PolicyError, parse_policy

    try:
        parse_policy(path.read_text(), str(path))
    except PolicyError as error:
        raise CliError(str(error), "bad_policy") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CliError(f"--policy: cannot read {path}: {error}", "bad_input") from None
    return path.absolute()


def _join_key(text: str) -> str:
    from pilotif.registry.joinkey import parse_join_key

    if parse_join_key(text) is None:
        raise CliError(
            "--join-key: that is not a join key (they read pjk_...)",
            "bad_input",
            "copy the key `pilotif registry admin key create` printed",
        )
    return text.strip()


def _node_options(
    registry: str,
    hostname: str | None,
    tags: str,
    registry_key: str | None,
    auto_approve: str | None,
) -> "NodeOptions":
    from pilotif.control.identity import HostnameError, normalize_hostname
    from pilotif.node.consent import NETWORK_POLICY
    from pilotif.node.registration import NodeOptions
    from pilotif.wg.keys import InvalidKeyError, decode_key

    registries = [
        host_port_option("--registry", part.strip()) for part in registry.split(",") if part.strip()
    ]
    if not registries:
        raise CliError("--registry needs HOST:PORT[,HOST:PORT...]", "bad_input")
    if hostname is None:
        raise CliError("--registry needs --hostname NAME (this node's name)", "bad_input")
    try:
        name = normalize_hostname(hostname)
        key = decode_key(registry_key) if registry_key else None
    except HostnameError as error:
        raise CliError(str(error), "bad_input") from None
    except InvalidKeyError as error:
        raise CliError(f"--registry-key: {error}", "bad_input") from None
    if auto_approve not in (None, "all", NETWORK_POLICY) and not auto_approve.startswith("tag:"):
        raise CliError(
            "--auto-approve takes no value (everyone), `network` or tag:NAME", "bad_input"
        )
    return NodeOptions(
        registry=registries[0],
        registry_replicas=tuple(registries[1:]),
        hostname=name,
        tags=[t.strip() for t in tags.split(",") if t.strip()],
        registry_key=key,
        auto_approve=auto_approve,
    )


def _run_foreground(
    config: "InterfaceConfig",
    interface: str,
    paths: StatePaths,
    log_format: str,
    node_options: "NodeOptions | None",
    observe: _Observe,
    policy_file: Path | None,
    userspace: "UserspaceOptions | None",
) -> None:
    from pilotif.daemon.daemon import Daemon, StartupError

    setup_logging(as_json=log_format == "json")
    ready_fd = int(os.environ.pop(READY_FD_ENV)) if READY_FD_ENV in os.environ else None
    try:
        Daemon(
            config,
            interface,
            paths,
            node_options,
            metrics=observe.metrics,
            webhook=observe.webhook,
            policy_file=policy_file,
            userspace=userspace,
        ).run(ready_fd)
    except StartupError as error:
        log_event("startup_failed", error=str(error))
        if ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(ready_fd, f"error: {error}\n".encode())
        raise CliError(str(error), "startup_failed") from None


def _without_secrets(arguments: list[str]) -> list[str]:
    """The command line without the options that carry a secret (and their values)."""
    kept: list[str] = []
    skip_value = False
    for argument in arguments:
        if skip_value:
            skip_value = False
            continue
        name, equals, _ = argument.partition("=")
        if name in _SECRET_OPTIONS:
            skip_value = not equals
            continue
        kept.append(argument)
    return kept


def _start_background(interface: str, paths: StatePaths, secrets: dict[str, str]) -> None:
    """Run this same `up` command with --foreground as a detached daemon; `secrets` (env
    name -> value) reach it in its environment, never on its command line."""
    read_end, write_end = os.pipe()
    command = [sys.executable, "-m", "pilotif", *_without_secrets(sys.argv[1:]), "--foreground"]
    try:
        log = append_private_file(paths.log_file)
    except StateFileError as error:
        raise CliError(str(error), "bad_state") from None
    with log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            pass_fds=(write_end,),
            env={
                **os.environ,
                **secrets,
                READY_FD_ENV: str(write_end),
                STATE_DIR_ENV: str(paths.root),
            },
            start_new_session=True,
        )
    os.close(write_end)
    message = _read_readiness(read_end)
    if message == "ready":
        click.echo(f"pilotif is up on {interface} (pid {process.pid}); log: {paths.log_file}")
        return
    if process.poll() is None and not message:
        process.terminate()
    raise CliError(
        message.removeprefix("error: ") or f"the daemon did not start; see {paths.log_file}",
        "startup_failed",
    )


def _read_readiness(fd: int) -> str:
    """The daemon's first line on the readiness pipe ('' if it closed or timed out)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    data = b""
    os.set_blocking(fd, False)
    try:
        while b"\n" not in data and time.monotonic() < deadline:
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                time.sleep(_POLL_S)
                continue
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    return data.decode(errors="replace").strip()


def _process_alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a parent (or init) to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@cli.command()
@state_dir_option
def down(state_dir: Path) -> None:
    """Stop the daemon and remove its interface."""
    paths = StatePaths(state_dir.absolute())
    try:
        status = request(paths.control_socket, "status")["status"]
        request(paths.control_socket, "down")
    except ControlError as error:
        raise CliError.of(error) from None
    pid = int(status["pid"])
    deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S
    while time.monotonic() < deadline:
        if not _process_alive(pid):
            click.echo(f"pilotif is down ({status['interface']} removed)")
            return
        time.sleep(_POLL_S)
    raise CliError(f"the daemon (pid {pid}) did not stop in {SHUTDOWN_TIMEOUT_S:.0f} s")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@state_dir_option
@json_output(
    (
        '{"interface", "public_key", "listen_port", "addresses", "mtu", "pid", '
        '"peers": [{"public_key", "endpoint", "allowed_ips", "latest_handshake", "rx_bytes", '
        '"tx_bytes"}], "drops": {reason: count}, "node": {"hostname", "ipv4", '
        '"registry_online", "public_endpoint", ...}}'
    ),
    DAEMON_ERRORS,
)
def status(as_json: bool, state_dir: Path) -> None:
    """Show the interface, its peers and the drop counters."""
    paths = StatePaths(state_dir.absolute())
    try:
        state = request(paths.control_socket, "status")["status"]
    except ControlError as error:
        raise CliError.of(error) from None
    if as_json:
        click.echo(json.dumps(state, indent=2))
        return
    click.echo(_format_status(state))


def _registry_state(node: dict[str, Any]) -> str:
    if node["registry_online"]:
        replicas = node.get("registry_replicas") or []
        if node.get("registry_replica") and len(replicas) > 1:
            return f"online (replica {node['registry_replica']}, 1 of {len(replicas)})"
        return "online"
    if node.get("registry_key_refused"):
        return f"KEY REFUSED: {node['registry_key_refused']}"
    since = node.get("registry_unreachable_since")
    if since is None:
        return "UNREACHABLE"
    stamp = datetime.fromtimestamp(since).strftime("%H:%M:%S")
    return f"UNREACHABLE since {stamp} ({time.time() - since:.0f} s)"


def _transport_state(transport: dict[str, Any]) -> str:
    """What carries control and relayed datagrams, e.g. `tcp via proxy http://p:3128 (auto)`."""
    text = str(transport["carrier"])
    if transport["carrier"] != "udp" and transport.get("proxy"):
        text += f" {transport['proxy']}"
    return f"{text} ({transport['mode']})"


def _relay_state(relay: dict[str, Any]) -> str:
    """One standalone relay in `pilotif status`: where, how near, whether we use it."""
    text = str(relay["endpoint"])
    text += f" {relay['rtt_ms']} ms" if relay["rtt_ms"] is not None else " (not measured)"
    if not relay["alive"]:
        text += " NOT ANSWERING"
    return text + (" (home: relayed traffic goes here)" if relay["home"] else "")


def _public_endpoints(node: dict[str, Any]) -> str:
    """Where the registry sees us: one endpoint per IP family (docs/DUAL_STACK.md)."""
    return ", ".join(node.get("public_endpoints") or [str(node["public_endpoint"])])


def _format_status(state: dict[str, Any]) -> str:
    node = state.get("node")
    lines = []
    if node:
        lines += [
            terminal_safe(f"node: {node['hostname']} ({node['ipv4']}, {node['ipv6']})"),
            f"  registry: {node['registry']} " + _registry_state(node),
            f"  public endpoint: {_public_endpoints(node)}  nat: {node['nat']}",
        ]
        if mapping := node.get("port_mapping"):
            lines.append(
                f"  port mapping: {mapping['external']} by {mapping['protocol']}"
                f", renewed before its {mapping['lifetime_s']} s run out"
            )
        if state.get("transport"):
            lines.append(f"  transport: {_transport_state(state['transport'])}")
        lines += [f"  relay: {_relay_state(relay)}" for relay in node.get("relays", [])]
        for hostname, reason in node["refused_peers"].items():
            lines.append(terminal_safe(f"  REFUSED peer {hostname}: {reason}"))
        lines.append("")
    lines += [
        f"interface: {state['interface']}",
        f"  public key: {state['public_key']}",
        f"  listening port: {state['listen_port']}",
        f"  addresses: {', '.join(state['addresses'])}",
        f"  mtu: {state['mtu']}",
    ]
    for peer in state["peers"]:
        lines += ["", f"peer: {peer['public_key']}"]
        if peer["endpoint"]:
            via = f" ({peer['transport']})" if peer.get("transport") else ""
            lines.append(f"  endpoint: {peer['endpoint']}{via}")
        lines.append(f"  allowed ips: {', '.join(peer['allowed_ips']) or '(none)'}")
        if peer["latest_handshake"] is not None:
            ago = max(0, int(time.time() - peer["latest_handshake"]))
            lines.append(f"  latest handshake: {ago} seconds ago")
        lines.append(f"  transfer: {peer['rx_bytes']} B received, {peer['tx_bytes']} B sent")
        if peer["persistent_keepalive"]:
            lines.append(f"  persistent keepalive: every {peer['persistent_keepalive']} seconds")
    drops = {reason: count for reason, count in state["drops"].items() if count}
    lines += ["", "drops: " + (", ".join(f"{r}={c}" for r, c in drops.items()) or "none")]
    if state.get("offloads"):
        lines += _format_offloads(state["offloads"])
    return "\n".join(lines)


def _format_offloads(offloads: dict[str, Any]) -> list[str]:
    """What the kernel granted on the TUN and the UDP sockets, and what it refused."""
    tun = offloads.get("tun") or {}
    granted = []
    if tun.get("tso"):
        segments = offloads.get("tso_max_segments")
        granted.append("tso" + (f" (up to {segments} segments a read)" if segments else ""))
    if tun.get("uso"):
        granted.append("uso")
    if tun.get("coalesced_writes"):
        granted.append("coalesced writes")
    lines = ["offloads:", f"  tun: {', '.join(granted) or 'none'}"]
    lines += [f"  tun refused: {refusal}" for refusal in tun.get("refused", [])]
    for family, udp in (offloads.get("udp") or {}).items():
        if udp is None:
            continue
        on = [name for name in ("gso", "gro") if udp.get(name)]
        lines.append(f"  udp {family}: {', '.join(on) or 'none'}")
        if udp.get("gso_disabled"):
            lines.append(f"  udp {family} gso dropped: {udp['gso_disabled']}")
    return lines


def _node_line(node: dict[str, Any]) -> str:
    """One node: name, address, key, its own tags and those the operator granted."""
    tags = ",".join(node.get("tags", []))
    granted = ",".join(node.get("granted_tags", []))
    network = node.get("network_name")
    return terminal_safe(
        f"{node.get('hostname', '?'):24} {node.get('ipv4', '?'):15} {node.get('public_key', '')}"
        + (f"  tags={tags}" if tags else "")
        + (f"  granted={granted}" if granted else "")
        + (f"  network={network}" if network else "")
    )


@cli.command()
@click.argument("peer")
@click.option("--message", default="", help="A note for the other side.")
@json_option
@state_dir_option
@json_output(
    '{"peer", "state": "trusted" | "pending" | "queued"}',
    REGISTRY_ERRORS,
)
def handshake(peer: str, message: str, as_json: bool, state_dir: Path) -> None:
    """Ask PEER (hostname, virtual IP or key) for mutual trust."""
    from pilotif.node.consent import QUEUED

    reply = node_request(state_dir, "handshake", peer=peer, message=message)
    state = reply.get("state")
    if state == "trusted":
        text = f"{peer} is trusted"
    elif state == QUEUED:
        text = f"the registry does not answer: the request to {peer} is kept and sent when it does"
    else:
        text = f"trust requested from {peer}; it shows in their `pilotif pending`"
    echo_result(as_json, {"peer": peer, "state": state}, text)


@cli.command()
@json_option
@state_dir_option
@json_output(
    (
        '{"incoming": [{"node": NODE, "message"}], '
        '"outgoing": [NODE]} where NODE is {"hostname", "ipv4", "public_key", "tags", "online"}'
    ),
    REGISTRY_ERRORS,
)
def pending(as_json: bool, state_dir: Path) -> None:
    """Trust requests waiting for you, and yours waiting for others."""
    reply = node_request(state_dir, "pending")
    incoming, outgoing = reply.get("incoming", []), reply.get("outgoing", [])
    lines = ["incoming:"] + [
        terminal_safe(f"  {_node_line(item.get('node', {}))}  message={item.get('message', '')!r}")
        for item in incoming
    ]
    lines += ["outgoing:"] + [f"  {_node_line(node)}" for node in outgoing]
    echo_result(as_json, {"incoming": incoming, "outgoing": outgoing}, "\n".join(lines))


def _trust_decision(command: str, states: str, help_text: str) -> click.Command:
    """`pilotif approve|reject|untrust PEER`: send the decision, print the trust state
    (`states`, for --json) it leaves."""

    @click.argument("peer")
    @json_option
    @state_dir_option
    @json_output(f'{{"peer", "state": {states}}}', REGISTRY_ERRORS)
    def decide(peer: str, as_json: bool, state_dir: Path) -> None:
        from pilotif.node.consent import QUEUED

        reply = node_request(state_dir, command, peer=peer)
        state = reply.get("state")
        text = f"{peer}: {state}"
        if state == QUEUED:
            text += " (the registry does not answer: kept, and sent when it does)"
        echo_result(as_json, {"peer": peer, "state": state}, text)

    return cli.command(command, help=help_text)(decide)


approve = _trust_decision("approve", '"trusted" | "queued"', "Approve PEER's trust request.")
reject = _trust_decision("reject", '"none" | "queued"', "Reject PEER's trust request.")
untrust = _trust_decision(
    "untrust", '"none" | "queued"', "Revoke trust in PEER; the tunnel goes down on both sides."
)


@cli.command()
@json_option
@state_dir_option
@json_output(
    '[{"hostname", "ipv4", "ipv6", "public_key", "tags", "online"}]',
    REGISTRY_ERRORS,
)
def trust(as_json: bool, state_dir: Path) -> None:
    """The nodes you trust."""
    trusted = node_request(state_dir, "trust").get("trusted", [])
    echo_result(as_json, trusted, "\n".join(_node_line(n) for n in trusted) or "(nobody)")


@cli.command()
@json_option
@state_dir_option
@json_output(
    (
        '[{"hostname", "ipv4", "ipv6", "public_key", "tags", '
        '"path": "direct" | "relay" | "none", "path_state", "endpoint", "transport": "udp4" | '
        '"udp6" | "relay" | "tcp relay" | "tcp relay via proxy" | null, "mtu", "last_handshake", '
        '"rx_bytes", "tx_bytes", "policy_denied"}]'
    ),
    DAEMON_ERRORS,
)
def peers(as_json: bool, state_dir: Path) -> None:
    """Trusted peers with their path (direct, relay or none), its transport, endpoint, the
    largest packet it carries (path MTU, probed) and traffic."""
    rows = node_request(state_dir, "peers").get("peers", [])
    lines = [
        terminal_safe(
            f"{p['hostname']:24} {p['ipv4']:15} {p['path']:6} {p.get('transport') or '-':10} "
            f"{p['endpoint'] or '-':22} mtu={p.get('mtu', '-')} rx={p['rx_bytes']} "
            f"tx={p['tx_bytes']}"
        )
        for p in rows
    ]
    echo_result(as_json, rows, "\n".join(lines) or "(no trusted peers)")


@cli.command()
@click.argument("query")
@json_option
@state_dir_option
@json_output(
    (
        '[{"hostname", "ipv4", "ipv6", "public_key", "tags", "granted_tags"?, "network_name"?, '
        '"online"}]'
    ),
    REGISTRY_ERRORS,
)
def find(query: str, as_json: bool, state_dir: Path) -> None:
    """Look up registered nodes by NAME, virtual IP, key or tag:TAG."""
    nodes = node_request(state_dir, "find", query=query).get("nodes", [])
    echo_result(
        as_json, nodes, "\n".join(_node_line(n) for n in nodes) or f"nothing matches {query!r}"
    )


def _peer_address(state_dir: Path, peer: str) -> str:
    """The virtual IPv4 of PEER: an IP as given, else a trusted peer's address."""
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(peer))
    for row in node_request(state_dir, "peers").get("peers", []):
        name = peer.lower().removesuffix(".pilot")
        if peer == row["public_key"] or name == row["hostname"]:
            return str(row["ipv4"])
    raise CliError(
        f"{peer!r} is not a trusted peer; ask it with `pilotif handshake {peer}`",
        "peer_not_trusted",
    )


@cli.command()
@click.argument("peer")
@click.argument("port", type=click.IntRange(1, 65535))
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to connect.")
@state_dir_option
def connect(peer: str, port: int, timeout: float, state_dir: Path) -> None:
    """Pipe stdin to TCP PORT of PEER and the reply to stdout."""
    from pilotif.cli.overlay import overlay_dial

    address = _peer_address(state_dir, peer)
    dial = overlay_dial(state_dir)
    try:
        with dial(address, port, timeout) as conn:
            conn.settimeout(None)
            conn.sendall(sys.stdin.buffer.read())
            conn.shutdown(socket.SHUT_WR)
            while chunk := conn.recv(65536):
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
    except OSError as error:
        raise CliError(
            f"cannot connect to {peer} ({address}) port {port}: {error.strerror or error}; "
            "check `pilotif peers` and that something listens there",
            "connect_failed",
        ) from None


@cli.command()
@click.argument("peer")
@click.option("--count", "-c", default=4, show_default=True, type=click.IntRange(1, 1000))
@json_option
@state_dir_option
@json_output(
    '{"peer", "address", "replies": [{"seq", "rtt_ms" | null, "path"}]}',
    DAEMON_ERRORS,
)
def ping(peer: str, count: int, as_json: bool, state_dir: Path) -> None:
    """ICMP echo to PEER over the overlay: RTT and path of each reply."""
    from pilotif.cli.overlay import is_userspace, userspace_ping
    from pilotif.cli.ping import REPLY_TIMEOUT_S, ping_once

    address = _peer_address(state_dir, peer)
    userspace = is_userspace(state_dir)
    results = []
    for sequence in range(count):
        if userspace:
            rtt = userspace_ping(state_dir, address, REPLY_TIMEOUT_S)
        else:
            rtt = ping_once(address, sequence)
        path = next(
            (
                row["path"]
                for row in node_request(state_dir, "peers").get("peers", [])
                if row["ipv4"] == address
            ),
            "none",
        )
        results.append({"seq": sequence, "rtt_ms": rtt, "path": path})
        if not as_json:
            click.echo(
                f"reply from {address}: seq={sequence} time={rtt:.2f} ms via {path}"
                if rtt is not None
                else f"no reply from {address}: seq={sequence}"
            )
        time.sleep(PING_INTERVAL_S if sequence + 1 < count else 0)
    if as_json:
        click.echo(json.dumps({"peer": peer, "address": address, "replies": results}, indent=2))
    if all(r["rtt_ms"] is None for r in results):
        raise click.exceptions.Exit(1)


@cli.command()
@json_option
@state_dir_option
@json_output(
    'one JSON object a line: {"time", "event", ...fields}',
    DAEMON_ERRORS,
)
def events(as_json: bool, state_dir: Path) -> None:
    """Print events as they happen (peers up/down, paths, trust, registry) until Ctrl-C."""
    paths = StatePaths(state_dir.absolute())
    try:
        for event in stream(paths.control_socket, "events", on_open=_listening):
            click.echo(json.dumps(event) if as_json else _format_event(event))
    except ControlError as error:
        raise CliError.of(error) from None
    raise CliError("the daemon stopped", "not_running")


def _listening() -> None:
    click.echo("pilotif: listening for events (Ctrl-C to stop)", err=True)


def _format_event(event: dict[str, Any]) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(float(event.get("time", 0))))
    fields = " ".join(
        f"{key}={value}" for key, value in event.items() if key not in ("time", "event")
    )
    return terminal_safe(f"{stamp} {event.get('event')} {fields}".rstrip())


tcp_listen_option = click.option(
    "--tcp-listen",
    "tcp_listens",
    multiple=True,
    help="HOST:PORT where streams (TCP, for nodes without UDP) are accepted too, e.g."
    " 0.0.0.0:443; TCP on the --listen port always is. Repeat for several.",
)
"""`registry` and `relay`: more addresses for streams."""


@cli.group(cls=LazyGroup, lazy={"admin": "pilotif.cli.admin:admin"}, invoke_without_command=True)
@click.option(
    "--listen",
    default="[::]:7946",
    show_default=True,
    help="HOST:PORT (UDP and TCP); [::] is every address of IPv4 and IPv6.",
)
@tcp_listen_option
@click.option("--network", default="100.64.0.0/10", show_default=True, help="IPv4 overlay.")
@click.option(
    "--require-join-key", is_flag=True, help="Admit new nodes only with a join key (closed)."
)
@click.option(
    "--expire-after",
    default="30d",
    show_default=True,
    help="Free the name and address of a node not seen for this long.",
)
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.option("--metrics", help="Serve Prometheus metrics at http://HOST:PORT/metrics.")
@click.option(
    "--relay",
    "relays",
    multiple=True,
    help="A standalone relay nodes may use, as KEY@IP:PORT (`pilotif relay` logs it);"
    " repeat for several. Without any, the registry relays.",
)
@database_option
@state_dir_option
@click.pass_context
def registry(
    ctx: click.Context,
    listen: str,
    tcp_listens: tuple[str, ...],
    network: str,
    require_join_key: bool,
    expire_after: str,
    log_format: str,
    metrics: str | None,
    relays: tuple[str, ...],
    database: str | None,
    state_dir: Path,
) -> None:
    """Run the registry (rendezvous, trust, relay) in the foreground; no root needed.
    `pilotif registry admin --state-dir DIR ...` manages it."""
    if ctx.invoked_subcommand is not None:
        return
    from pilotif.registry import RegistryOptions, run_registry
    from pilotif.registry.database import DatabaseError

    forget_secrets(DATABASE_ENV)

    listen_at = host_port_option("--listen", listen)
    try:
        net = ipaddress.IPv4Network(network)
    except ValueError as error:
        raise CliError(f"--network: {error}", "bad_input") from None
    try:
        expire_after_s = parse_duration(expire_after)
    except DurationError as error:
        raise CliError(f"--expire-after: {error}", "bad_input") from None
    metrics_at = host_port_option("--metrics", metrics) if metrics is not None else None
    options = RegistryOptions(
        net,
        require_join_key,
        expire_after_s,
        database,
        _relays(relays),
        _tcp_listens(tcp_listens),
    )
    setup_logging(as_json=log_format == "json")
    try:
        run_registry(listen_at, state_dir.absolute(), options, log_format, metrics_at)
    except StateFileError as error:
        raise CliError(str(error), "bad_state") from None
    except DatabaseError as error:
        raise CliError(str(error), "no_database") from None
    except OSError as error:
        raise CliError(f"cannot listen on {listen}: {error.strerror or error}") from None


def _tcp_listens(texts: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    return tuple(host_port_option("--tcp-listen", text) for text in texts)


def _relays(texts: tuple[str, ...]) -> "tuple[RelayInfo, ...]":
    from pilotif.control.relay_info import MAX_RELAYS, RelaySpecError, parse_relay

    if len(texts) > MAX_RELAYS:
        raise CliError(f"--relay: at most {MAX_RELAYS} relays", "bad_input")
    try:
        return tuple(parse_relay(text) for text in texts)
    except RelaySpecError as error:
        raise CliError(f"--relay: {error}", "bad_input") from None


@cli.command()
@click.option(
    "--listen", default="0.0.0.0:7947", show_default=True, help="HOST:PORT (UDP and TCP)."
)
@tcp_listen_option
@click.option(
    "--registry",
    help="The registry whose tickets to accept, at HOST:PORT (its key is asked for on"
    " first start and pinned).",
)
@click.option("--registry-key", help="The registry's public key (instead of asking it).")
@click.option(
    "--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@state_dir_option
def relay(
    listen: str,
    tcp_listens: tuple[str, ...],
    registry: str | None,
    registry_key: str | None,
    log_format: str,
    state_dir: Path,
) -> None:
    """Run a standalone relay in the foreground (no database, no root): it carries
    WireGuard datagrams between nodes that the registry's tickets prove trust each other.
    Give its key to the registry with `pilotif registry --relay KEY@IP:PORT`."""
    from pilotif.relay.server import RelayOptions, RelayStartError, run_relay
    from pilotif.wg.keys import InvalidKeyError, decode_key

    listen_at = host_port_option("--listen", listen)
    registry_at = host_port_option("--registry", registry) if registry is not None else None
    try:
        key = decode_key(registry_key) if registry_key is not None else None
    except InvalidKeyError as error:
        raise CliError(f"--registry-key: {error}", "bad_input") from None
    if registry_at is None and key is None:
        raise CliError(
            "give --registry HOST:PORT (or --registry-key KEY): the relay accepts that"
            " registry's tickets",
            "bad_input",
        )
    setup_logging(as_json=log_format == "json")
    try:
        options = RelayOptions(registry_at, key, _tcp_listens(tcp_listens))
        run_relay(listen_at, state_dir.absolute(), options, log_format)
    except StateFileError as error:
        raise CliError(str(error), "bad_state") from None
    except RelayStartError as error:
        raise CliError(str(error), "no_registry") from None
    except OSError as error:
        raise CliError(f"cannot listen on {listen}: {error.strerror or error}") from None


@cli.command()
def genkey() -> None:
    """Print a new private key (base64), as `wg genkey` does."""
    from pilotif.wg.crypto import generate_private_key
    from pilotif.wg.keys import encode_key

    click.echo(encode_key(generate_private_key()))


@cli.command()
def pubkey() -> None:
    """Read a private key on stdin and print its public key, as `wg pubkey` does."""
    from pilotif.wg.crypto import public_key
    from pilotif.wg.keys import InvalidKeyError, decode_key, encode_key

    try:
        private = decode_key(sys.stdin.read())
    except InvalidKeyError as error:
        raise CliError(f"stdin: {error}", "bad_input") from None
    click.echo(encode_key(public_key(private)))


def main() -> None:
    """Entry point: run the CLI; print every error as one line."""
    as_json = "--json" in sys.argv[1:]
    try:
        code = cli.main(prog_name="pilotif", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as error:
        code_name = error.code if isinstance(error, CliError) else "bad_input"
        hint = error.hint if isinstance(error, CliError) else ""
        message = error.format_message()
        if isinstance(error, click.UsageError) and error.ctx is not None:
            hint = f"see `{error.ctx.command_path} --help`"
            message += f" ({hint})"
        if as_json:
            click.echo(json.dumps({"error": message, "code": code_name, "hint": hint}))
        click.echo(f"pilotif: error: {message}", err=True)
        sys.exit(error.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
