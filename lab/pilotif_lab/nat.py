"""The NAT lab: pilotif agents behind NAT routers on a small simulated internet, with a registry.

    public namespace ("the internet"): switch sw0 198.18.0.1/24, registry on 198.18.0.1:7946
      +-- router r0: wan0 198.18.0.11, NAT (cone or symmetric), LAN 198.19.1.0/24 (agents .2 ...)
      +-- router r1: wan0 198.18.0.12, NAT (cone or symmetric), LAN 198.19.2.0/24 (agents .2 ...)

The public namespace is also the internet's router: a router's WAN address is a /32 whose
only neighbour is 198.18.0.1, so a packet from one router to another crosses one hop that
decrements its TTL, as on the real internet (a punch opener sent with a low TTL leaves its
own router and dies there, before the far router).

Every router masquerades its LAN behind its WAN address with nftables and, like a home router,
drops unsolicited inbound connections; a cone NAT keeps a LAN socket's port for every
destination (endpoint-independent mapping), a symmetric NAT picks a random port for each.
Nothing routes to the LANs from the public side, and no namespace routes to the real network.
Each namespace has its own resolv.conf, so a daemon editing its resolver never touches the
machine's. Agents are driven only through the `pilotif` command line.
"""

import dataclasses
import ipaddress
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from pilotif.control.identity import load_or_create_key
from pilotif.relay.server import RELAY_KEY_FILE
from pilotif.wg.crypto import public_key
from pilotif.wg.keys import encode_key
from pilotif_lab.netns import (
    LabError,
    Namespace,
    namespace,
    new_run_id,
    pid_alive,
    remove_stale_namespaces,
    run_checked,
    stop_pid,
)
from pilotif_lab.pilotif_node import UP_TIMEOUT_S, pilotif_executable
from pilotif_lab.unprivileged import as_nobody
from pilotif_lab.upnp_router import (
    STUN_ALTERNATE_ADDRESS,
    forwarding_on,
    miniupnpd_config,
    start_miniupnpd,
    start_stun_server,
)

PUBLIC_NETWORK = ipaddress.IPv4Network("198.18.0.0/24")
REGISTRY_ADDRESS = "198.18.0.1"
REGISTRY_PORT = 7946
REGISTRY = f"{REGISTRY_ADDRESS}:{REGISTRY_PORT}"
RELAY_PORT = 7947
LAN_NETWORKS = (ipaddress.IPv4Network("198.19.1.0/24"), ipaddress.IPv4Network("198.19.2.0/24"))
CARRIER_NETWORKS = (
    ipaddress.IPv4Network("198.18.64.0/24"),
    ipaddress.IPv4Network("198.18.65.0/24"),
)
"""Between a carrier-grade NAT (.1) and the home router behind it (.2), per router."""
ROUTER_WAN_FIRST_HOST = 11
"""Router i's WAN address is host ROUTER_WAN_FIRST_HOST + i of PUBLIC_NETWORK."""
ROUTER_WAN_RENUMBERED_FIRST_HOST = 31
"""Router i's WAN address after `NatLab.renumber_router(i)`."""
INTERNET_FIRST_HOST = 100
"""Internet host i (no NAT, e.g. an attacker) is host INTERNET_FIRST_HOST + i."""
LAN_ROUTER_HOST = 1
LAN_FIRST_AGENT_HOST = 2
RESOLV_CONF = f"# pilotif NAT lab: nothing answers here\nnameserver {REGISTRY_ADDRESS}\n"
REGISTRY_START_TIMEOUT_S = 10.0
MINIUPNPD_START_TIMEOUT_S = 20.0
"""miniupnpd's STUN test waits up to 3 s for each of its tries."""
POLL_INTERVAL_S = 0.2
PATH_TIMEOUT_S = 5.0
"""How long a trusted pair may take to settle on its path (and on trust itself)."""
_SWITCH = "sw0"
_INTERNET_ROUTER_SYSCTLS = (
    "net.ipv4.ip_forward=1",
    "net.ipv4.conf.all.send_redirects=0",
    "net.ipv4.conf.default.send_redirects=0",
)
"""The public namespace forwards between routers, and tells none of them to go direct."""
_WAN = "wan0"
_LAN_BRIDGE = "lan0"
_AGENT_LINK = "eth0"
_CARRIER_LINK = "cgn0"
_REGISTRY_DIR = "registry"
_REGISTRY_LOG = "registry.log"
_PID_FILE = "pilotif.pid"
_LOG_FILE = "pilotif.log"

T = TypeVar("T")


class NatKind(StrEnum):
    """How a router maps a LAN socket to its WAN address."""

    CONE = "cone"
    """Endpoint-independent mapping: one public port per LAN socket (`masquerade`)."""
    SYMMETRIC = "symmetric"
    """A random public port per destination (`masquerade random,fully-random`)."""
    CONE_ACCEPTING = "cone-accepting"
    """Cone mapping on a router without an input firewall: it takes a packet for itself
    when no mapping matches, and conntrack then holds that tuple, so a LAN socket that
    sends to the same peer later gets another public port (the collision that kept
    first hole punches failing, issue 9)."""


_MASQUERADE = {
    NatKind.CONE: "masquerade",
    NatKind.SYMMETRIC: "masquerade random,fully-random",
    NatKind.CONE_ACCEPTING: "masquerade",
}


def _router_ruleset(kind: NatKind, inside: ipaddress.IPv4Network) -> str:
    """NAT out of wan0 what comes from `inside` (the LAN; the router's own sockets keep
    their ports); drop connections that start on the WAN side (to the LAN, unless a port
    forward (DNAT) lets them in, and to the router itself unless it is CONE_ACCEPTING,
    which counts them instead)."""
    verdict = "counter" if kind is NatKind.CONE_ACCEPTING else "drop"
    input_chain = f"""
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "{_WAN}" ct state new {verdict}
    }}"""
    return f"""
table ip pflab_nat {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {inside} oifname "{_WAN}" {_MASQUERADE[kind]}
    }}{input_chain}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        ct status dnat accept
        iifname "{_WAN}" ct state new drop
    }}
}}
"""


def poll_until(
    probe: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = POLL_INTERVAL_S
) -> T:
    """Call `probe` until it returns something other than None; LabError after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise LabError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(interval_s)


@dataclass(frozen=True)
class Router:
    """A NAT router: WAN address on the public switch, a LAN behind it."""

    namespace: Namespace
    kind: NatKind
    wan_address: str
    """The public address its LAN is seen from (the carrier's, behind a carrier)."""
    lan: ipaddress.IPv4Network
    carrier: Namespace | None = None
    """The carrier-grade NAT in front of it (double NAT), if any."""

    @property
    def lan_address(self) -> str:
        """The router's own LAN address, the agents' default gateway."""
        return str(self.lan[LAN_ROUTER_HOST])

    def packets_taken_for_itself(self) -> int:
        """New flows from the WAN that a CONE_ACCEPTING router took for itself."""
        listing = json.loads(
            self.namespace.run("nft", "-j", "list", "chain", "ip", "pflab_nat", "input").stdout
        )
        return sum(
            expression["counter"]["packets"]
            for item in listing["nftables"]
            if "rule" in item
            for expression in item["rule"]["expr"]
            if "counter" in expression
        )


@dataclass(frozen=True)
class InternetHost:
    """A host on the public switch itself, without NAT (a server, or an attacker)."""

    namespace: Namespace
    address: str


@dataclass
class Agent:
    """A host on a router's LAN running one pilotif node, driven by its command line."""

    hostname: str
    namespace: Namespace
    router: Router
    lan_address: str
    state_dir: Path
    _up_args: list[str] = field(default_factory=list)
    unprivileged: bool = False
    """Run pilotif as uid 65534 with no capabilities (pilotif_lab.unprivileged)."""

    def _command(self, *args: str) -> list[str]:
        command = [pilotif_executable(), *args, "--state-dir", str(self.state_dir)]
        return as_nobody(*command) if self.unprivileged else command

    @property
    def log_path(self) -> Path:
        """The daemon's log."""
        return self.state_dir / _LOG_FILE

    def pilotif(
        self, *args: str, check: bool = True, input_text: str | None = None
    ) -> "subprocess.CompletedProcess[str]":
        """`pilotif ARGS --state-dir DIR` in the agent's namespace."""
        return self.namespace.run(
            *self._command(*args),
            check=check,
            timeout_s=UP_TIMEOUT_S,
            input_text=input_text,
        )

    def json(self, *args: str) -> Any:
        """`pilotif ARGS --json`, parsed."""
        output = self.pilotif(*args, "--json").stdout
        try:
            return json.loads(output)
        except json.JSONDecodeError as error:
            raise LabError(f"`pilotif {' '.join(args)} --json` printed {output!r}") from error

    def up(
        self,
        *,
        tags: Sequence[str] = (),
        auto_approve: str | None = None,
        accept_dns: bool = True,
        listen_port: int | None = None,
        join_key: str | None = None,
        policy_file: Path | None = None,
        registry: str = REGISTRY,
        extra_args: Sequence[str] = (),
    ) -> None:
        """`pilotif up` joined to the lab's registry (or the replicas `registry` lists),
        with `extra_args` (e.g. --userspace); returns once the daemon is up."""
        args = ["--registry", registry, "--hostname", self.hostname, *extra_args]
        if join_key is not None:
            args += ["--join-key", join_key]
        if policy_file is not None:
            args += ["--policy", str(policy_file)]
        if tags:
            args += ["--tags", ",".join(tags)]
        if auto_approve is not None:
            args += ["--auto-approve", auto_approve]
        if listen_port is not None:
            args += ["--listen-port", str(listen_port)]
        args += ["--accept-dns", str(accept_dns).lower()]
        self._up_args = args
        self.restart()

    def restart(self) -> None:
        """`pilotif up` again with the arguments of the last `up` (same state dir)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        output = self.state_dir.parent / f"{self.hostname}-up.out"
        self.namespace.run(
            *self._command("up", *self._up_args),
            timeout_s=UP_TIMEOUT_S,
            output_path=output,
        )

    def move_to(self, host: int) -> None:
        """Take host number `host` of the router's LAN instead of the current address (a
        laptop joining another Wi-Fi behind the same router): the old address and its
        routes go, the new address and the default route come."""
        prefix = self.router.lan.prefixlen
        new_address = str(self.router.lan[host])
        self.namespace.run(
            "ip", "address", "del", f"{self.lan_address}/{prefix}", "dev", _AGENT_LINK
        )
        self.namespace.run("ip", "address", "add", f"{new_address}/{prefix}", "dev", _AGENT_LINK)
        self.namespace.run("ip", "route", "add", "default", "via", self.router.lan_address)
        self.lan_address = new_address

    def pid(self) -> int | None:
        """The daemon's PID from its PID file, if it wrote one."""
        try:
            return int((self.state_dir / _PID_FILE).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def down(self) -> None:
        """`pilotif down`, then stop the daemon by its PID if it is still there."""
        pid = self.pid()
        if pid is None:
            return
        self.pilotif("down", check=False)
        if pid is not None and pid_alive(pid):
            stop_pid(pid)

    def status(self) -> dict[str, Any]:
        """`pilotif status --json`."""
        parsed: dict[str, Any] = self.json("status")
        return parsed

    def peers(self) -> list[dict[str, Any]]:
        """`pilotif peers --json`."""
        parsed: list[dict[str, Any]] = self.json("peers")
        return parsed

    def peer(self, hostname: str) -> dict[str, Any] | None:
        """This agent's row for a trusted peer, or None."""
        return next((p for p in self.peers() if p["hostname"] == hostname), None)

    def wait_for_path(
        self, hostname: str, paths: Sequence[str], timeout_s: float = PATH_TIMEOUT_S
    ) -> dict[str, Any]:
        """The peer row once its path is one of `paths`; LabError (with the last row) if not."""
        last: list[dict[str, Any] | None] = [None]

        def settled() -> dict[str, Any] | None:
            last[0] = self.peer(hostname)
            return last[0] if last[0] is not None and last[0]["path"] in paths else None

        try:
            return poll_until(settled, timeout_s, f"{self.hostname}: path to {hostname}")
        except LabError as error:
            raise LabError(f"{error}; last peers row: {last[0]}") from None


def trust(asker: Agent, approver: Agent) -> None:
    """`asker` asks for trust, `approver` approves once the request has arrived, as two
    users would."""
    asker.pilotif("handshake", approver.hostname, "--message", "lab")
    poll_until(
        lambda: (
            True
            if any(
                entry["node"]["hostname"] == asker.hostname
                for entry in approver.json("pending").get("incoming", [])
            )
            else None
        ),
        PATH_TIMEOUT_S,
        f"{asker.hostname}'s request in {approver.hostname}'s pending",
    )
    approver.pilotif("approve", asker.hostname)


@dataclass
class NatLab:
    """The public switch with the registry, the routers and their agents."""

    public: Namespace
    routers: tuple[Router, ...]
    agents: dict[str, Agent]
    workdir: Path
    internet: dict[str, InternetHost] = field(default_factory=dict)
    registry_args: tuple[str, ...] = ()
    """Extra `pilotif registry` options (e.g. --require-join-key), kept across restarts."""
    registry_listen: str = REGISTRY
    """The registry's --listen (`[::]:7946` serves both families: pilotif_lab.dual_stack)."""
    _registry: "subprocess.Popen[bytes] | None" = None
    _replicas: dict[str, "subprocess.Popen[bytes]"] = field(default_factory=dict)
    _relays: dict[str, "subprocess.Popen[bytes]"] = field(default_factory=dict)
    _port_mapping: list[tuple[Namespace, "subprocess.Popen[bytes]"]] = field(default_factory=list)
    """miniupnpd on routers, and the STUN server they test with (start_port_mapping)."""

    def __getitem__(self, hostname: str) -> Agent:
        return self.agents[hostname]

    def bytes_to_router(self, index: int) -> int:
        """Bytes the public switch has sent towards router `index`'s WAN (its link)."""
        shown = json.loads(self.public.run("ip", "-j", "-s", "link", "show", f"r{index}").stdout)
        return int(shown[0]["stats64"]["tx"]["bytes"])

    def start_port_mapping(self, index: int) -> Path:
        """miniupnpd on router `index` (NAT-PMP, PCP and UPnP IGD for its LAN;
        pilotif_lab.upnp_router), with the STUN server it tests its address with; returns
        (its workdir) once it forwards ports."""
        router = self.routers[index]
        if not self._port_mapping:
            self._add_public_address(STUN_ALTERNATE_ADDRESS)
            self._port_mapping.append((self.public, start_stun_server(self.public)))
        # The STUN test's answers from the other address are new flows to the router.
        router.namespace.run("nft", "flush", "chain", "ip", "pflab_nat", "input")
        workdir = self.workdir / f"miniupnpd-r{index}"
        config = miniupnpd_config(_WAN, _LAN_BRIDGE, str(router.lan), workdir)
        process, log_path = start_miniupnpd(router.namespace, config, workdir)
        self._port_mapping.append((router.namespace, process))

        def forwarding() -> bool | None:
            if process.poll() is not None:
                raise LabError(f"miniupnpd exited {process.returncode}: {log_path.read_text()}")
            return True if forwarding_on(log_path) else None

        poll_until(forwarding, MINIUPNPD_START_TIMEOUT_S, f"miniupnpd forwarding on r{index}")
        return workdir

    def stop_port_mapping(self) -> None:
        """Stop miniupnpd and the STUN server by their PIDs."""
        while self._port_mapping:
            ns, process = self._port_mapping.pop()
            ns.stop(process)

    def renumber_router(self, index: int) -> str:
        """Give router `index` another WAN address, as an ISP does with a new lease: the
        old address goes (and the kernel drops the NAT mappings made with it), the new one
        and the default route come. The agents behind it see no change. Returns the new
        address."""
        router = self.routers[index]
        address = str(PUBLIC_NETWORK[ROUTER_WAN_RENUMBERED_FIRST_HOST + index])
        ns = router.carrier or router.namespace
        ns.run("ip", "address", "del", f"{router.wan_address}/32", "dev", _WAN)
        _wan_address(ns, address)
        renumbered = dataclasses.replace(router, wan_address=address)
        self.routers = tuple(renumbered if r is router else r for r in self.routers)
        return address

    @property
    def registry_state_dir(self) -> Path:
        """The registry's key and database."""
        return self.workdir / _REGISTRY_DIR

    @property
    def registry_log(self) -> Path:
        """Everything the registry printed, across restarts."""
        return self.workdir / _REGISTRY_LOG

    @property
    def registry_pid(self) -> int | None:
        """The running registry's PID."""
        return None if self._registry is None else self._registry.pid

    def start_registry(self) -> None:
        """Run `pilotif registry` on 198.18.0.1:7946; returns once it listens."""
        if self._registry is not None:
            raise LabError("the registry is already running")
        self._registry = self.public.spawn(
            pilotif_executable(),
            "registry",
            "--listen",
            self.registry_listen,
            "--state-dir",
            str(self.registry_state_dir),
            *self.registry_args,
            log_path=self.registry_log,
        )
        process = self._registry

        def listening() -> bool | None:
            if process.poll() is not None:
                raise LabError(f"the registry exited {process.returncode}: {self._log_tail()}")
            sockets = self.public.run("ss", "-Hnlu", "src", self.registry_listen).stdout
            return True if sockets.strip() else None

        what = "the registry listening on " + self.registry_listen
        poll_until(listening, REGISTRY_START_TIMEOUT_S, what)

    def admin(self, *args: str) -> Any:
        """`pilotif registry admin --state-dir DIR ARGS --json`, parsed (run on the lab's
        host: the registry's database is a file in the workdir)."""
        result = run_checked(
            [
                pilotif_executable(),
                "registry",
                "admin",
                "--state-dir",
                str(self.registry_state_dir),
                *args,
                "--json",
            ]
        )
        return json.loads(result.stdout)

    def stop_registry(self, *, keep_relays: bool = False) -> None:
        """Stop the registry by its PID (SIGTERM, then SIGKILL), and its replicas; its
        standalone relays too unless `keep_relays` (a registry outage)."""
        if self._registry is not None:
            self.public.stop(self._registry)
            self._registry = None
        for address in list(self._replicas):
            self.kill_replica(address)
        for address in list(self._relays) if not keep_relays else ():
            self.stop_relay(address)

    def _add_public_address(self, address: str) -> None:
        self.public.run(
            "ip", "address", "add", _with_prefix(address, PUBLIC_NETWORK), "dev", _SWITCH
        )

    def start_relay(self, address: str) -> None:
        """`pilotif relay` on `address` of the public switch, with the key `relay_spec`
        made for it, accepting the lab registry's tickets; returns once it listens."""
        self._add_public_address(address)
        listen = f"{address}:{RELAY_PORT}"
        process = self.public.spawn(
            pilotif_executable(),
            "relay",
            "--listen",
            listen,
            "--registry",
            REGISTRY,
            "--log-format",
            "json",
            "--state-dir",
            str(relay_state_dir(self.workdir, address)),
            log_path=relay_log(self.workdir, address),
        )
        self._relays[address] = process
        self._wait_listening(process, listen, "relay")

    def stop_relay(self, address: str, *, crash: bool = False) -> None:
        """Stop the relay on `address` by its PID: SIGTERM (it logs its counters), or
        SIGKILL with `crash`."""
        process = self._relays.pop(address)
        if crash:
            process.kill()
            process.wait()
        self.public.stop(process)

    def start_replica(self, address: str) -> str:
        """Another registry replica (same `registry_args`: a --database) on `address` of
        the public switch; its HOST:PORT once it listens."""
        self._add_public_address(address)
        listen = f"{address}:{REGISTRY_PORT}"
        process = self.public.spawn(
            pilotif_executable(),
            "registry",
            "--listen",
            listen,
            "--state-dir",
            str(self.workdir / f"replica-{address}"),
            *self.registry_args,
            log_path=self.workdir / f"replica-{address}.log",
        )
        self._replicas[address] = process
        self._wait_listening(process, listen, "replica")
        return listen

    def _wait_listening(self, process: "subprocess.Popen[bytes]", listen: str, what: str) -> None:
        """Return once `process` listens on UDP `listen`; LabError if it exits first."""

        def listening() -> bool | None:
            if process.poll() is not None:
                raise LabError(f"the {what} on {listen} exited {process.returncode}")
            return True if self.public.run("ss", "-Hnlu", "src", listen).stdout.strip() else None

        poll_until(listening, REGISTRY_START_TIMEOUT_S, f"the {what} listening on {listen}")

    def kill_replica(self, address: str) -> None:
        """Kill the replica on `address` (SIGKILL by its PID: a crash, nothing saved)."""
        process = self._replicas.pop(address)
        process.kill()
        process.wait()
        self.public.stop(process)

    def _log_tail(self) -> str:
        return self.registry_log.read_text()[-2000:] if self.registry_log.exists() else ""


def relay_state_dir(workdir: Path, address: str) -> Path:
    """Where the lab's relay on `address` keeps its key."""
    return workdir / f"relay-{address}"


def relay_log(workdir: Path, address: str) -> Path:
    """What the lab's relay on `address` logged (JSON lines)."""
    return workdir / f"relay-{address}.log"


def relay_spec(workdir: Path, address: str) -> str:
    """`KEY@ADDRESS:PORT` of the relay the lab will run on `address`, for the registry's
    `--relay` (its key is made now, in the state dir the relay will use)."""
    private = load_or_create_key(relay_state_dir(workdir, address) / RELAY_KEY_FILE)
    return f"{encode_key(public_key(private))}@{address}:{RELAY_PORT}"


def _veth(name_a: str, ns_a: Namespace, name_b: str, ns_b: Namespace) -> None:
    run_checked(
        [
            *("ip", "link", "add", name_a, "netns", ns_a.name, "type", "veth"),
            *("peer", "name", name_b, "netns", ns_b.name),
        ]
    )


def _bridge(ns: Namespace, name: str, address: str) -> None:
    ns.run("ip", "link", "add", name, "type", "bridge")
    ns.run("ip", "address", "add", address, "dev", name)
    ns.run("ip", "link", "set", name, "up")


def _attach(ns: Namespace, link: str, bridge: str) -> None:
    ns.run("ip", "link", "set", link, "master", bridge)
    ns.run("ip", "link", "set", link, "up")


def _with_prefix(address: str, network: ipaddress.IPv4Network) -> str:
    return f"{address}/{network.prefixlen}"


def _wan_address(ns: Namespace, address: str) -> None:
    """A router's WAN address, reached from the internet router 198.18.0.1 only (the
    routers are no neighbours of each other: see the module docstring)."""
    ns.run("ip", "address", "add", f"{address}/32", "dev", _WAN)
    ns.run("ip", "route", "replace", REGISTRY_ADDRESS, "dev", _WAN, "src", address)
    ns.run("ip", "route", "replace", "default", "via", REGISTRY_ADDRESS, "src", address)


def _build_router(
    public: Namespace,
    ns: Namespace,
    index: int,
    kind: NatKind,
    delay_ms: float,
    loss: float,
    carrier: Namespace | None = None,
    cable_log: Path | None = None,
) -> Router:
    """Router `index` on the switch, or behind a carrier-grade NAT (`carrier`, a cone NAT
    of its own) that holds the public address: double NAT. A delay cable's counters go
    to `cable_log` when it stops."""
    wan_address = str(PUBLIC_NETWORK[ROUTER_WAN_FIRST_HOST + index])
    uplink = carrier if carrier is not None else ns
    port = f"r{index}"
    if delay_ms or loss:
        # wan0 -- r{i}x ==cable== r{i}y -- r{i} on the switch.
        near, far = f"{port}x", f"{port}y"
        _veth(near, public, _WAN, uplink)
        _veth(far, public, port, public)
        # The cable copies frames as they are: those sent into it must be whole (no
        # segmentation offload) and carry their checksums (no checksum offload).
        offloads = ("tx", "off", "tso", "off", "gso", "off", "gro", "off")
        for link in (near, far, port):
            public.run("ip", "link", "set", link, "up")
            public.run("ethtool", "-K", link, *offloads)
        uplink.run("ethtool", "-K", _WAN, *offloads)
        cable = ("pilotif_lab.cable", near, far, str(delay_ms), str(loss))
        public.spawn(sys.executable, "-m", *cable, log_path=cable_log)
    else:
        _veth(port, public, _WAN, uplink)
    _attach(public, port, _SWITCH)
    uplink.run("ip", "link", "set", _WAN, "up")
    _wan_address(uplink, wan_address)
    if carrier is not None:
        inside = CARRIER_NETWORKS[index]
        _veth(_CARRIER_LINK, carrier, _WAN, ns)
        carrier.run(
            "ip", "address", "add", _with_prefix(str(inside[1]), inside), "dev", _CARRIER_LINK
        )
        carrier.run("ip", "link", "set", _CARRIER_LINK, "up")
        carrier.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        carrier.run("nft", "-f", "-", input_text=_router_ruleset(NatKind.CONE, inside))
        ns.run("ip", "address", "add", _with_prefix(str(inside[2]), inside), "dev", _WAN)
        ns.run("ip", "link", "set", _WAN, "up")
        ns.run("ip", "route", "add", "default", "via", str(inside[1]))
    router = Router(ns, kind, wan_address, LAN_NETWORKS[index], carrier)
    _bridge(ns, _LAN_BRIDGE, _with_prefix(router.lan_address, router.lan))
    ns.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    ns.run("nft", "-f", "-", input_text=_router_ruleset(kind, router.lan))
    return router


def _build_internet_host(public: Namespace, ns: Namespace, index: int) -> InternetHost:
    address = str(PUBLIC_NETWORK[INTERNET_FIRST_HOST + index])
    port = f"h{index}"
    _veth(port, public, _WAN, ns)
    _attach(public, port, _SWITCH)
    ns.run("ip", "address", "add", _with_prefix(address, PUBLIC_NETWORK), "dev", _WAN)
    ns.run("ip", "link", "set", _WAN, "up")
    return InternetHost(ns, address)


def _build_agent(hostname: str, ns: Namespace, router: Router, host: int, workdir: Path) -> Agent:
    port = f"p{host}"
    _veth(port, router.namespace, _AGENT_LINK, ns)
    _attach(router.namespace, port, _LAN_BRIDGE)
    address = str(router.lan[host])
    ns.run("ip", "address", "add", _with_prefix(address, router.lan), "dev", _AGENT_LINK)
    ns.run("ip", "link", "set", _AGENT_LINK, "up")
    ns.run("ip", "route", "add", "default", "via", router.lan_address)
    return Agent(hostname, ns, router, address, workdir / hostname)


@contextmanager
def nat_lab(
    nats: Sequence[NatKind],
    agents: Sequence[tuple[str, int]],
    workdir: Path | None = None,
    internet_hosts: Sequence[str] = (),
    wan_delay_ms: Sequence[float] = (),
    wan_loss: Sequence[float] = (),
    registry_args: Sequence[str] = (),
    carriers: Sequence[int] = (),
    registry_listen: str = REGISTRY,
) -> Iterator[NatLab]:
    """The lab with one router per entry of `nats` and agents (hostname, router index),
    and `internet_hosts` (names) on the public switch itself. `wan_delay_ms` and
    `wan_loss` (a share, 0 to 1) put a delay cable (pilotif_lab.cable) between router i
    and the switch, each way. `registry_args` go to `pilotif registry`, which listens on
    `registry_listen`.

    The registry runs (on a fresh state dir); agents are not up yet. Everything (daemons by
    PID, the registry, namespaces and their /etc/netns dirs) is torn down when the block
    ends, even on failure. Files go to `workdir`, or to a temporary directory removed after.
    """
    if len(nats) > len(LAN_NETWORKS):
        raise LabError(f"the NAT lab has room for {len(LAN_NETWORKS)} routers")
    remove_stale_namespaces()
    run_id = new_run_id()
    with ExitStack() as stack:
        if workdir is None:
            workdir = Path(tempfile.mkdtemp(prefix="pflab-nat-"))
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)

        def new_namespace(role: str) -> Namespace:
            return stack.enter_context(namespace(run_id, role, resolv_conf=RESOLV_CONF))

        public = new_namespace("pub")
        for setting in _INTERNET_ROUTER_SYSCTLS:
            public.run("sysctl", "-q", "-w", setting)
        _bridge(public, _SWITCH, _with_prefix(REGISTRY_ADDRESS, PUBLIC_NETWORK))
        delays = list(wan_delay_ms) + [0.0] * (len(nats) - len(wan_delay_ms))
        losses = list(wan_loss) + [0.0] * (len(nats) - len(wan_loss))
        routers = tuple(
            _build_router(
                public,
                new_namespace(f"r{index}"),
                index,
                kind,
                delays[index],
                losses[index],
                new_namespace(f"cg{index}") if index in carriers else None,
                workdir / f"cable-r{index}.log",
            )
            for index, kind in enumerate(nats)
        )
        hosts_used = [LAN_FIRST_AGENT_HOST] * len(routers)
        built: dict[str, Agent] = {}
        for hostname, index in agents:
            agent = _build_agent(
                hostname, new_namespace(hostname), routers[index], hosts_used[index], workdir
            )
            hosts_used[index] += 1
            built[hostname] = agent
            stack.callback(agent.down)
        internet = {
            name: _build_internet_host(public, new_namespace(name), index)
            for index, name in enumerate(internet_hosts)
        }
        lab = NatLab(
            public, routers, built, workdir, internet, tuple(registry_args), registry_listen
        )
        stack.callback(lab.stop_registry)
        stack.callback(lab.stop_port_mapping)
        lab.start_registry()
        yield lab


@contextmanager
def trusting_pair(
    nats: tuple[NatKind, NatKind], workdir: Path, paths: Sequence[str], timeout_s: float
) -> Iterator[NatLab]:
    """The lab with alpha behind router 0 and beta behind router 1, both up, trusting
    each other, and alpha's path to beta one of `paths` (within `timeout_s`)."""
    with nat_lab(nats, (("alpha", 0), ("beta", 1)), workdir) as lab:
        alpha, beta = lab["alpha"], lab["beta"]
        alpha.up()
        beta.up()
        trust(alpha, beta)
        alpha.wait_for_path("beta", paths, timeout_s)
        yield lab
