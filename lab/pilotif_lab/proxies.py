"""HTTP proxies for the lab (Debian's tinyproxy and squid): `http_proxy(kind, ...)` runs one
in a namespace with its own config file in a work dir, allowing CONNECT to the
registry's and relays' ports only (with Basic auth when given credentials), and stops it
by its PID when the block ends, even on failure."""

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Final

from pilotif_lab.netns import LabError, Namespace

PROXY_PORT: Final = 3128
START_TIMEOUT_S: Final = 30.0
SQUID_USER: Final = "proxy"
"""The user Debian's squid runs as."""
_POLL_S: Final = 0.1


class ProxyKind(StrEnum):
    """Which proxy program."""

    TINYPROXY = "tinyproxy"
    SQUID = "squid"


def _tinyproxy_config(address: str, ports: tuple[int, ...], auth: str | None, dir: Path) -> str:
    lines = [
        f"Port {PROXY_PORT}",
        f"Listen {address}",
        "Timeout 600",
        "MaxClients 100",
        f'LogFile "{dir / "tinyproxy.log"}"',
        "LogLevel Info",
        f'PidFile "{dir / "tinyproxy.pid"}"',
        *(f"ConnectPort {port}" for port in ports),
    ]
    if auth is not None:
        user, _, password = auth.partition(":")
        lines.append(f"BasicAuth {user} {password}")
    return "\n".join(lines) + "\n"


def _squid_config(address: str, ports: tuple[int, ...], dir: Path) -> str:
    return f"""
http_port {address}:{PROXY_PORT}
acl tunnel_ports port {" ".join(str(port) for port in ports)}
acl CONNECT method CONNECT
http_access deny CONNECT !tunnel_ports
http_access allow CONNECT
http_access deny all
cache deny all
pid_filename {dir / "squid.pid"}
access_log stdio:{dir / "access.log"}
cache_log {dir / "cache.log"}
coredump_dir {dir}
shutdown_lifetime 0 seconds
"""


@contextmanager
def http_proxy(
    kind: ProxyKind,
    ns: Namespace,
    address: str,
    ports: tuple[int, ...],
    workdir: Path,
    auth: str | None = None,
) -> Iterator[str]:
    """The proxy at address:PROXY_PORT in `ns`, allowing CONNECT to `ports` only (and
    asking Basic `auth` USER:PASSWORD, tinyproxy only); yields its HOST:PORT."""
    program = shutil.which(kind.value) or shutil.which(kind.value, path="/usr/sbin:/usr/bin")
    if program is None:
        raise LabError(f"{kind.value} is not installed (scripts/install.sh installs it)")
    directory = workdir / kind.value
    directory.mkdir(parents=True, exist_ok=True)
    if kind is ProxyKind.SQUID:
        # Squid runs as its own user (Debian's `proxy`), which may not enter the test's
        # private tmp dir: its files go to a dir of its own.
        directory = Path(tempfile.mkdtemp(prefix="pflab-squid-"))
        directory.chmod(0o755)
        shutil.chown(directory, SQUID_USER)
    config = directory / f"{kind.value}.conf"
    if kind is ProxyKind.TINYPROXY:
        config.write_text(_tinyproxy_config(address, ports, auth, directory))
        args = [program, "-d", "-c", str(config)]
    else:
        if auth is not None:
            raise LabError("the lab's squid takes no credentials")
        config.write_text(_squid_config(address, ports, directory))
        # A service name of its own: squid's shared memory segments are named by it.
        service = "".join(c for c in directory.name if c.isalnum())
        args = [program, "-N", "-n", service, "-f", str(config)]
    process = ns.spawn(*args, log_path=directory / "output.log")
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ns.run("ss", "-Hntl", "src", f"{address}:{PROXY_PORT}").stdout.strip():
            if process.poll() is not None or time.monotonic() > deadline:
                output = (directory / "output.log").read_text(errors="replace")[-2000:]
                raise LabError(f"{kind.value} did not listen on {address}: {output}")
            time.sleep(_POLL_S)
        yield f"{address}:{PROXY_PORT}"
    finally:
        ns.stop(process)
        if kind is ProxyKind.SQUID:
            shutil.copytree(directory, workdir / kind.value, dirs_exist_ok=True)
            shutil.rmtree(directory, ignore_errors=True)
