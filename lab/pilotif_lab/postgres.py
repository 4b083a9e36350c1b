"""A throwaway PostgreSQL server for tests, benchmarks and the lab: a cluster in a
temporary directory, started from Debian's `postgresql` binaries and removed after.

It listens on a Unix socket in its directory (and on TCP only where `listen` says, e.g.
a lab namespace's address), trusts local connections, and runs without fsync: nothing
in it outlives the run. As root it runs as the `postgres` user (the server refuses
root). Only the process it started is stopped, by its PID.
"""

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

_BINARIES: Final = Path("/usr/lib/postgresql")
_SERVER_USER: Final = "postgres"
_START_TIMEOUT_S: Final = 30.0
_STOP_TIMEOUT_S: Final = 15.0
_SOCKET_POLL_S: Final = 0.05
DEFAULT_PORT: Final = 5432


class PostgresUnavailable(RuntimeError):
    """The server's binaries are not installed, or it did not start."""


def _bindir() -> Path:
    versions = sorted(
        (p for p in _BINARIES.glob("*/bin") if (p / "postgres").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not versions:
        raise PostgresUnavailable(
            "PostgreSQL is not installed (apt-get install postgresql; install.sh test does)"
        )
    return versions[-1]


class ThrowawayPostgres:
    """One running cluster; `url(name)` names a database in it."""

    def __init__(self, directory: Path, port: int, process: subprocess.Popen[bytes]) -> None:
        self.directory = directory
        self.port = port
        self.process = process

    def url(self, database: str = "postgres", host: str | None = None) -> str:
        """A URL for `database` over the Unix socket, or over TCP to `host`."""
        if host is not None:
            return f"postgresql://{_SERVER_USER}@{host}:{self.port}/{database}"
        return f"postgresql://{_SERVER_USER}@/{database}?host={self.directory}&port={self.port}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL with psql (autocommit) and return what it printed."""
        done = subprocess.run(
            [
                str(_bindir() / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
                self.url(database),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql: {done.stderr.strip()}")
        return done.stdout

    def create_database(self, name: str) -> str:
        """A new, empty database; its URL."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _as_server_user(command: Sequence[str]) -> list[str]:
    if os.geteuid() != 0:
        return list(command)
    # setpriv execs (runuser would stay the parent, and our PID would be its).
    return [
        "setpriv",
        f"--reuid={_SERVER_USER}",
        f"--regid={_SERVER_USER}",
        "--init-groups",
        "--",
        *command,
    ]


@contextlib.contextmanager
def throwaway_postgres(
    listen: Sequence[str] = (), port: int = DEFAULT_PORT, netns: str | None = None
) -> Iterator[ThrowawayPostgres]:
    """Start a cluster (TCP on the `listen` addresses, inside `netns` if given) and
    remove it afterwards, also when the body fails."""
    bindir = _bindir()
    directory = Path(tempfile.mkdtemp(prefix="pilotif-pg-"))
    try:
        if os.geteuid() == 0:
            user = pwd.getpwnam(_SERVER_USER)
            os.chown(directory, user.pw_uid, user.pw_gid)
        data = directory / "data"
        subprocess.run(
            _as_server_user(
                [
                    *(str(bindir / "initdb"), "-D", str(data), "-U", _SERVER_USER),
                    *("-A", "trust", "-E", "UTF8", "--no-sync"),
                ]
            ),
            capture_output=True,
            check=True,
        )
        server = [
            str(bindir / "postgres"),
            *("-D", str(data), "-k", str(directory), "-p", str(port)),
            *("-c", f"listen_addresses={','.join(listen)}"),
            *("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"),
            *("-c", "max_connections=200"),
        ]
        if listen:
            with (data / "pg_hba.conf").open("a") as hba:
                hba.write("host all all 198.18.0.0/15 trust\n")
        command = _as_server_user(server)
        if netns is not None:
            command = ["ip", "netns", "exec", netns, *command]
        log = (directory / "server.log").open("wb")
        process = subprocess.Popen(command, stdout=log, stderr=log)
        try:
            _wait_for_socket(directory / f".s.PGSQL.{port}", process, directory)
            yield ThrowawayPostgres(directory, port, process)
        finally:
            _stop(process)
            log.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _wait_for_socket(socket: Path, process: subprocess.Popen[bytes], directory: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not socket.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            log = (directory / "server.log").read_text(errors="replace")
            _stop(process)
            raise PostgresUnavailable(f"PostgreSQL did not start:\n{log[-2000:]}")
        time.sleep(_SOCKET_POLL_S)
    # The socket exists a moment before the server accepts connections.
    time.sleep(_SOCKET_POLL_S)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)  # "fast shutdown"
    try:
        process.wait(timeout=_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
