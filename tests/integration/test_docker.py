"""The docker sidecar, for real: deploy/Dockerfile and deploy/compose.yaml on a private dockerd.

No image can be pulled here, so the base is Debian bookworm made with `debootstrap
--variant=minbase` (cached in PILOTIF_TEST_CACHE, default /var/cache/pilotif-test) and
`docker import`ed; the image is built on it with `--build-arg BASE=...`. The compose example
then runs as a user would run it: an app container with no capabilities, in the network of
its sidecar, reaches the other agent's app as `alpha.pilot:8080` over plain TCP; a recreated
sidecar comes back with its address and trust (its volume); SIGTERM stops a sidecar cleanly.
The userspace sidecar (gamma: no capability, the image's non-root user, no /dev/net/tun)
trusts alpha, a TUN node, and its app reaches alpha's app through its SOCKS5 port and its
HTTP proxy.

dockerd gets its own data root, exec root, socket and pid file in a temp dir, its default
bridge and address pool in 198.18.0.0/15, and neither iptables rules nor IP forwarding
(`--iptables=false --ip-forward=false`): the containers reach each other over the compose
bridge and nothing beyond it. The image build alone uses the host's network (for PyPI), and
the base gets the host's CA bundle so that pip inside the build trusts what pip outside does.
Everything made (containers, images, volumes, networks, dockerd and its containerd, bridges,
mounts, cgroups, the temp dir) is removed even when a step fails, and the teardown checks that none
of it is left and that ip_forward, the bridge sysctls and the nftables tables are as before.
"""

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pilotif_lab.netns import pid_alive, run_checked, stop_pid

from pilotif.dns.resolver import MARKER

pytestmark = [
    pytest.mark.integration,
    pytest.mark.docker,
    pytest.mark.skipif(os.geteuid() != 0, reason="runs its own dockerd: needs root"),
    pytest.mark.timeout(1200),
]

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
COMPOSE_FILE = REPO / "deploy" / "compose.yaml"
CACHE_DIR = Path(os.environ.get("PILOTIF_TEST_CACHE", "/var/cache/pilotif-test"))
BASE_TARBALL = CACHE_DIR / "debian-bookworm-minbase-python3.tar"
DEBIAN_SUITE = "bookworm"
BASE_PACKAGES = "python3,python3-venv,ca-certificates"
BASE_PRUNE = (
    "var/cache/apt/archives",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/locale",
    "usr/share/info",
)
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

DOCKERD = "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"  # Debian's client, matching its dockerd (not another on PATH)
COMPOSE = "/usr/bin/docker-compose"
DEBOOTSTRAP = "/usr/sbin/debootstrap"
NEEDED_TOOLS = (DOCKERD, DOCKER, COMPOSE, DEBOOTSTRAP)
DEFAULT_BRIDGE_ADDRESS = "198.18.200.1/24"
ADDRESS_POOL = "base=198.19.200.0/22,size=26"

RAW_BASE_IMAGE = "pilotif-test-debian:bookworm"
BASE_IMAGE = "pilotif-test-base:bookworm"
IMAGE = "pilotif:latest"  # the image name deploy/compose.yaml runs
PROJECT = "pilotiftest"
APP_PORT = 8080
OTHER_REGISTRY_PORT = 7000
SIDECARS = ("alpha", "beta", "gamma")
IMAGE_USER = "pilotif"
IMAGE_UID = 10001
SOCKS5_PORT = 1080
HTTP_PROXY_PORT = 3128

DEBOOTSTRAP_TIMEOUT_S = 900.0
BUILD_TIMEOUT_S = 600.0
DOCKERD_START_TIMEOUT_S = 60.0
DOCKERD_STOP_TIMEOUT_S = 30.0
COMPOSE_TIMEOUT_S = 180.0
HEALTHY_TIMEOUT_S = 120.0
EXCHANGE_TIMEOUT_S = 60.0
EXEC_TIMEOUT_S = 30.0
POLL_S = 1.0
STOP_GRACE_S = 10
LOG_TAIL_LINES = 30

_DOCKER_LINK = re.compile(r"^(docker0|br-[0-9a-f]{12}|veth[0-9a-f]{7})$")
_IPTABLES_TABLE_NAMES = {
    (family, name) for family in ("ip", "ip6") for name in ("filter", "nat", "mangle", "raw")
}
_HOST_SYSCTLS = (
    Path("/proc/sys/net/ipv4/ip_forward"),
    Path("/proc/sys/net/ipv6/conf/all/forwarding"),
    Path("/proc/sys/net/bridge/bridge-nf-call-iptables"),
    Path("/proc/sys/net/bridge/bridge-nf-call-ip6tables"),
)

# Runs in beta-app as its own user: what a program there gets from `alpha.pilot:8080`.
_PROBE = """
import json, socket, sys
with socket.create_connection(("alpha.pilot", PORT), timeout=5) as conn:
    conn.sendall(sys.argv[1].encode() + b"\\n")
    peer = conn.getpeername()[0]
    reply = conn.makefile().readline().strip()
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({"peer": peer, "reply": reply, "cap_bnd": int(status["CapBnd"], 16)}))
""".replace("PORT", str(APP_PORT))

# Runs in gamma-app: alpha.pilot:8080 through the sidecar's SOCKS5 port (the name resolved by
# the node, as `curl --socks5-hostname` asks), then through its HTTP proxy (CONNECT).
_PROXY_PROBE = (
    f"SOCKS5_PORT, HTTP_PROXY_PORT, APP_PORT = {SOCKS5_PORT}, {HTTP_PROXY_PORT}, {APP_PORT}\n"
    + """
import http.client, json, socket, struct, sys
line = sys.argv[1].encode() + b"\\n"
name = b"alpha.pilot"
with socket.create_connection(("127.0.0.1", SOCKS5_PORT), timeout=5) as conn:
    replies = conn.makefile("rb")
    conn.sendall(b"\\x05\\x01\\x00")
    assert replies.read(2) == b"\\x05\\x00", "no SOCKS5 without a login"
    conn.sendall(b"\\x05\\x01\\x00\\x03" + bytes([len(name)]) + name + struct.pack("!H", APP_PORT))
    _, code, _, kind = replies.read(4)
    assert code == 0, f"SOCKS5 reply {code}"
    replies.read({1: 4, 4: 16}[kind] + 2)
    conn.sendall(line)
    socks5 = replies.readline().decode().strip()
tunnel = http.client.HTTPConnection("127.0.0.1", HTTP_PROXY_PORT, timeout=5)
tunnel.set_tunnel("alpha.pilot", APP_PORT)
tunnel.connect()
tunnel.sock.sendall(line)
http_proxy = tunnel.sock.makefile().readline().strip()
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
cap_bnd = int(status["CapBnd"], 16)
print(json.dumps({"socks5": socks5, "http_proxy": http_proxy, "cap_bnd": cap_bnd}))
"""
)

# Runs in the userspace sidecar: its user, every process's effective capabilities, the TUN.
_SIDECAR_PROBE = """
import json, os, pathlib
effective = {}
for status in pathlib.Path("/proc").glob("[0-9]*/status"):
    try:
        fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
    except FileNotFoundError:  # it exited
        continue
    effective[f"{status.parent.name} {fields['Name'].strip()}"] = int(fields["CapEff"], 16)
print(json.dumps({"uid": os.getuid(), "cap_eff": effective,
                  "tun": os.path.exists("/dev/net/tun")}))
"""


@dataclass(frozen=True)
class _HostState:
    """What dockerd may change on the host, read before it starts."""

    links: frozenset[str]
    nft_tables: frozenset[str]
    sysctls: dict[Path, str]


def _host_state() -> _HostState:
    links = run_checked(["ip", "-o", "link", "show"]).stdout
    return _HostState(
        links=frozenset(re.findall(r"^\d+: ([^:@]+)", links, re.MULTILINE)),
        nft_tables=frozenset(_nft_tables()),
        sysctls={path: path.read_text().strip() for path in _HOST_SYSCTLS if path.exists()},
    )


def _nft_tables() -> list[str]:
    listing = run_checked(["nft", "list", "tables"], check=False).stdout
    return [line.removeprefix("table ").strip() for line in listing.splitlines() if line]


def _iptables_tables(tables: set[str] | frozenset[str]) -> list[str]:
    """The tables among `tables` that iptables-nft makes (dockerd's rules would be there)."""
    return sorted(t for t in tables if tuple(t.split(" ", 1)) in _IPTABLES_TABLE_NAMES)


def _mounts_under(root: Path) -> list[str]:
    """Mount points below `root`, deepest first."""
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    inside = [p for p in points if p == str(root) or p.startswith(f"{root}/")]
    return sorted(set(inside), key=len, reverse=True)


def _cgroups_named(name: str) -> list[Path]:
    """The cgroup `name` and everything below it, in every cgroup hierarchy, deepest first."""
    found: list[Path] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" - ")
        if fields[-1].split()[0] in {"cgroup", "cgroup2"}:
            top = Path(fields[0].split()[4]) / name
            if top.is_dir():
                found += [d for d in top.rglob("*") if d.is_dir()] + [top]
    return sorted(set(found), key=lambda d: len(d.parts), reverse=True)


def _pids_mentioning(text: str) -> list[int]:
    """Processes whose command line names `text` (our temp dir: ours and no one else's)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if text.encode() in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
    return [pid for pid in pids if pid != os.getpid() and pid_alive(pid)]


class _Dockerd:
    """A dockerd of our own under `root`, talked to through its private socket."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.log = root / "dockerd.log"
        self.host = f"unix://{root / 'docker.sock'}"
        self.cgroup = root.name  # the cgroup parent of its containers: ours alone
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start dockerd and wait until it answers; skip if it cannot run here at all."""
        command = [
            DOCKERD,
            f"--data-root={self.root / 'data'}",
            f"--exec-root={self.root / 'exec'}",
            f"--pidfile={self.root / 'dockerd.pid'}",
            f"--host={self.host}",
            f"--bip={DEFAULT_BRIDGE_ADDRESS}",
            f"--default-address-pool={ADDRESS_POOL}",
            "--iptables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            f"--cgroup-parent=/{self.cgroup}",
        ]
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + DOCKERD_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                pytest.skip(f"dockerd cannot run here: it exited\n{self.log_tail()}")
            if self.docker("version", check=False).returncode == 0:
                return
            time.sleep(POLL_S)
        pytest.skip(f"dockerd cannot run here: no answer in {DOCKERD_START_TIMEOUT_S:.0f} s")

    def log_tail(self) -> str:
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(lines[-LOG_TAIL_LINES:])

    def docker(
        self, *args: str, check: bool = True, timeout_s: float = EXEC_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        return run_checked([DOCKER, f"--host={self.host}", *args], check=check, timeout_s=timeout_s)

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [COMPOSE, f"--host={self.host}", "--no-ansi", "-p", PROJECT]
        return run_checked(
            [*command, "-f", str(COMPOSE_FILE), *args], check=check, timeout_s=COMPOSE_TIMEOUT_S
        )

    def stop(self) -> None:
        """Remove every container, image and volume, then stop dockerd and what it started."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self.compose("down", "--volumes", "--remove-orphans", "--rmi", "all", check=False)
            containers = self.docker("ps", "-aq", check=False).stdout.split()
            if containers:
                self.docker("rm", "-f", "-v", *containers, check=False)
            images = self.docker("images", "-aq", check=False).stdout.split()
            if images:
                self.docker("rmi", "-f", *sorted(set(images)), check=False)
            self.docker("volume", "prune", "-f", check=False)
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=DOCKERD_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=DOCKERD_STOP_TIMEOUT_S)
        for pid in _pids_mentioning(str(self.root)):
            stop_pid(pid)
        self._process = None


def _restore_host(before: _HostState, root: Path) -> None:
    """Undo what dockerd may leave behind: mounts, cgroups, bridges and veths, sysctls, nft
    tables."""
    for cgroup in _cgroups_named(root.name):
        with contextlib.suppress(OSError):
            cgroup.rmdir()
    for point in _mounts_under(root):
        if subprocess.run(["umount", point], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", point], check=False)
    for link in _host_state().links - before.links:
        if _DOCKER_LINK.match(link):
            subprocess.run(["ip", "link", "delete", link], check=False)
    for path, value in before.sysctls.items():
        if path.read_text().strip() != value:
            path.write_text(value)
    for table in _iptables_tables(set(_nft_tables()) - before.nft_tables):
        subprocess.run(["nft", "delete", "table", *table.split()], check=False)


def _leftovers(before: _HostState, root: Path) -> list[str]:
    """What is still there of what the test made, or changed on the host."""
    after = _host_state()
    left = [f"process {pid}" for pid in _pids_mentioning(str(root))]
    left += [f"mount {point}" for point in _mounts_under(root)]
    left += [f"cgroup {cgroup}" for cgroup in _cgroups_named(root.name)]
    left += [f"link {link}" for link in after.links - before.links if _DOCKER_LINK.match(link)]
    left += [
        f"nft table {table}" for table in _iptables_tables(after.nft_tables - before.nft_tables)
    ]
    left += [
        f"{path} is {after.sysctls.get(path)}, was {value}"
        for path, value in before.sysctls.items()
        if after.sysctls.get(path) != value
    ]
    if root.exists():
        left.append(f"directory {root}")
    return left


def _base_tarball() -> Path:
    """Debian minbase with python3 and venv as a tar of its root, made once and cached."""
    if BASE_TARBALL.exists():
        return BASE_TARBALL
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pilotif-debootstrap-") as work:
        rootfs = Path(work) / "rootfs"
        run_checked(
            [
                DEBOOTSTRAP,
                "--variant=minbase",
                f"--include={BASE_PACKAGES}",
                DEBIAN_SUITE,
                str(rootfs),
            ],
            timeout_s=DEBOOTSTRAP_TIMEOUT_S,
            output_path=Path(work) / "debootstrap.log",
        )
        for path in BASE_PRUNE:
            shutil.rmtree(rootfs / path, ignore_errors=True)
        partial = BASE_TARBALL.with_suffix(".partial")
        run_checked(["tar", "-C", str(rootfs), "-cf", str(partial), "."])
        partial.rename(BASE_TARBALL)
    return BASE_TARBALL


def _build_image(dockerd: _Dockerd) -> None:
    """The base (imported, plus the host's CA bundle for pip), then deploy/Dockerfile on it."""
    dockerd.docker("import", str(_base_tarball()), RAW_BASE_IMAGE, timeout_s=BUILD_TIMEOUT_S)
    trust = dockerd.root / "base-context"
    trust.mkdir()
    shutil.copy(HOST_CA_BUNDLE, trust / "ca-certificates.crt")
    (trust / "pip.conf").write_text(f"[global]\ncert = {HOST_CA_BUNDLE}\n")
    (trust / "Dockerfile").write_text(
        f"FROM {RAW_BASE_IMAGE}\n"
        f"COPY ca-certificates.crt {HOST_CA_BUNDLE}\n"
        "COPY pip.conf /etc/pip.conf\n"
    )
    dockerd.docker("build", "-q", "-t", BASE_IMAGE, str(trust), timeout_s=BUILD_TIMEOUT_S)
    dockerd.docker(
        "build",
        "--network=host",
        f"--build-arg=BASE={BASE_IMAGE}",
        "-f",
        str(DOCKERFILE),
        "-t",
        IMAGE,
        str(REPO),
        timeout_s=BUILD_TIMEOUT_S,
    )


@pytest.fixture(scope="module")
def dockerd() -> Iterator[_Dockerd]:
    """A private dockerd with the pilotif image built; all of it gone afterwards."""
    missing = [tool for tool in NEEDED_TOOLS if not Path(tool).exists()]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run scripts/install.sh (docker.io, ...)")
    before = _host_state()
    root = Path(tempfile.mkdtemp(prefix="pilotif-docker-"))
    daemon = _Dockerd(root)
    try:
        daemon.start()
        _build_image(daemon)
        yield daemon
    finally:
        daemon.stop()
        _restore_host(before, root)
        shutil.rmtree(root, ignore_errors=True)
    left = _leftovers(before, root)
    assert not left, f"the docker test left behind: {left}"


def _container(dockerd: _Dockerd, service: str) -> str:
    container_id = dockerd.compose("ps", "-q", service).stdout.strip()
    assert container_id, f"no container for {service}"
    return container_id


def _inspect(dockerd: _Dockerd, service: str) -> dict[str, Any]:
    details: list[dict[str, Any]] = json.loads(
        dockerd.docker("inspect", _container(dockerd, service)).stdout
    )
    return details[0]


def _logs(dockerd: _Dockerd, container: str) -> str:
    """The end of a container's output (the daemons log to stderr)."""
    result = dockerd.docker("logs", f"--tail={LOG_TAIL_LINES}", container)
    return result.stdout + result.stderr


def _state(dockerd: _Dockerd, container: str) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(
        dockerd.docker("inspect", "--format={{json .State}}", container).stdout
    )
    return state


def _wait_healthy(dockerd: _Dockerd, container: str) -> None:
    deadline = time.monotonic() + HEALTHY_TIMEOUT_S
    while (health := _state(dockerd, container).get("Health", {}).get("Status")) != "healthy":
        if time.monotonic() > deadline:
            pytest.fail(
                f"{container} is {health} after {HEALTHY_TIMEOUT_S:.0f} s\n"
                + _logs(dockerd, container)
            )
        time.sleep(POLL_S)


def _pilotif(dockerd: _Dockerd, service: str, *args: str) -> Any:
    """`pilotif ARGS --json` inside a sidecar, parsed."""
    result = dockerd.docker("exec", _container(dockerd, service), "pilotif", *args, "--json")
    return json.loads(result.stdout)


def _exchange(
    dockerd: _Dockerd, line: str, app: str = "beta-app", probe: str = _PROBE
) -> dict[str, Any]:
    """Have `app` run `probe`, which sends `line` to alpha.pilot:8080, until it answers; what
    it saw."""
    deadline = time.monotonic() + EXCHANGE_TIMEOUT_S
    while True:
        result = dockerd.docker(
            "exec", _container(dockerd, app), "python3", "-c", probe, line, check=False
        )
        if result.returncode == 0:
            seen: dict[str, Any] = json.loads(result.stdout)
            return seen
        if time.monotonic() > deadline:
            pytest.fail(
                f"{app} never reached alpha.pilot:{APP_PORT}: {result.stderr.strip()}\n"
                + "".join(_logs(dockerd, _container(dockerd, side)) for side in SIDECARS)
            )
        time.sleep(POLL_S)


@pytest.fixture(scope="module")
def agents(dockerd: _Dockerd) -> Iterator[_Dockerd]:
    """deploy/compose.yaml up: the registry and the two agents, sidecars healthy."""
    try:
        dockerd.compose("up", "-d", "--no-build")
        for service in ("registry", *SIDECARS):
            _wait_healthy(dockerd, _container(dockerd, service))
        yield dockerd
    finally:
        dockerd.compose("down", "--volumes", "--remove-orphans", check=False)


def test_node_without_settings_says_what_to_set(dockerd: _Dockerd) -> None:
    result = dockerd.docker("run", "--rm", IMAGE, check=False)
    assert result.returncode != 0
    assert "set PILOTIF_REGISTRY=HOST:PORT" in result.stderr


def test_registry_role_from_the_environment_runs_without_capabilities(dockerd: _Dockerd) -> None:
    """Also without --init: as PID 1 it still stops on SIGTERM (not killed after the grace)."""
    container = dockerd.docker(
        "run",
        "--detach",
        "--cap-drop=ALL",
        f"--health-interval={POLL_S}s",
        "--env=PILOTIF_ROLE=registry",
        f"--env=PILOTIF_LISTEN=0.0.0.0:{OTHER_REGISTRY_PORT}",
        IMAGE,
    ).stdout.strip()
    try:
        _wait_healthy(dockerd, container)
        log = _logs(dockerd, container)
        assert f"registry_started listen=0.0.0.0:{OTHER_REGISTRY_PORT}" in log
        dockerd.docker("stop", f"--time={STOP_GRACE_S}", container)
        assert _state(dockerd, container)["ExitCode"] == 0
    finally:
        dockerd.docker("rm", "--force", "--volumes", container)


def test_app_without_capabilities_reaches_the_other_app_by_name(agents: _Dockerd) -> None:
    token = secrets.token_hex(8)
    seen = _exchange(agents, f"probe {token}")
    alpha = _pilotif(agents, "alpha", "status")["node"]
    assert seen["reply"] == f"alpha-app got 'probe {token}'"
    assert seen["peer"] == alpha["ipv4"]
    assert seen["cap_bnd"] == 0
    beta_app = _inspect(agents, "beta-app")
    assert beta_app["HostConfig"]["NetworkMode"] == f"container:{_container(agents, 'beta')}"
    assert not beta_app["HostConfig"]["CapAdd"]
    assert not beta_app["HostConfig"]["Devices"]


def test_recreated_sidecar_keeps_its_address_and_trust(agents: _Dockerd) -> None:
    before = _pilotif(agents, "alpha", "status")
    old_container = _container(agents, "alpha")
    agents.compose("rm", "--stop", "--force", "alpha", "alpha-app")
    agents.compose("up", "-d", "--no-build")
    _wait_healthy(agents, _container(agents, "alpha"))
    after = _pilotif(agents, "alpha", "status")
    assert _container(agents, "alpha") != old_container
    assert after["node"]["ipv4"] == before["node"]["ipv4"]
    assert after["public_key"] == before["public_key"]
    assert "beta" in [peer["hostname"] for peer in _pilotif(agents, "alpha", "trust")]
    token = secrets.token_hex(8)
    assert _exchange(agents, f"again {token}")["reply"] == f"alpha-app got 'again {token}'"


def test_sigterm_stops_a_sidecar_and_restores_its_resolver(agents: _Dockerd) -> None:
    beta = _inspect(agents, "beta")
    resolv_conf = Path(beta["ResolvConfPath"])
    assert resolv_conf.read_text().startswith(MARKER)
    agents.docker("stop", beta["Id"])
    stopped = _inspect(agents, "beta")
    assert stopped["State"]["ExitCode"] == 0
    assert not resolv_conf.read_text().startswith(MARKER)
    assert "interface_down" in _logs(agents, beta["Id"])


def test_userspace_sidecar_without_privileges_takes_its_app_to_a_tun_node(
    agents: _Dockerd,
) -> None:
    """gamma: --cap-drop ALL, the image's user, no /dev/net/tun; its app reaches alpha's app
    through the SOCKS5 port (the name resolved by the node) and the HTTP proxy."""
    token = secrets.token_hex(8)
    seen = _exchange(agents, f"proxied {token}", app="gamma-app", probe=_PROXY_PROBE)
    assert seen["socks5"] == f"alpha-app got 'proxied {token}'"
    assert seen["http_proxy"] == f"alpha-app got 'proxied {token}'"
    assert seen["cap_bnd"] == 0
    gamma = _inspect(agents, "gamma")
    assert gamma["HostConfig"]["CapDrop"] == ["ALL"]
    assert not gamma["HostConfig"]["CapAdd"]
    assert not gamma["HostConfig"]["Devices"]
    assert gamma["Config"]["User"] == IMAGE_USER
    inside = json.loads(agents.docker("exec", gamma["Id"], "python3", "-c", _SIDECAR_PROBE).stdout)
    assert inside["uid"] == IMAGE_UID
    assert inside["tun"] is False
    assert inside["cap_eff"]["1 docker-init"] == 0  # --init: PID 1 runs pilotif
    assert any(process.endswith(" pilotif") for process in inside["cap_eff"])
    assert set(inside["cap_eff"].values()) == {0}, inside["cap_eff"]
    status = _pilotif(agents, "gamma", "status")  # as the image's user, as docker exec runs
    assert status["userspace"] is not None
    assert "alpha" in [peer["hostname"] for peer in _pilotif(agents, "gamma", "trust")]
    log = _logs(agents, gamma["Id"])
    assert "a userspace node" in log and "no /dev/net/tun" in log


def test_userspace_forced_off_without_a_tun_says_what_is_missing(dockerd: _Dockerd) -> None:
    result = dockerd.docker(
        "run",
        "--rm",
        "--cap-drop=ALL",
        f"--user={IMAGE_USER}",
        "--env=PILOTIF_USERSPACE=0",
        "--env=PILOTIF_REGISTRY=registry:7946",
        "--env=PILOTIF_HOSTNAME=delta",
        IMAGE,
        check=False,
    )
    assert result.returncode != 0
    assert f"not root (uid {IMAGE_UID}), no /dev/net/tun, no CAP_NET_ADMIN" in result.stderr
    assert "PILOTIF_USERSPACE=1" in result.stderr
