"""Network namespaces for the lab: create one, run commands and processes inside it, delete it.

A namespace's name carries the id of the process that made it (``pflab-<pid>-<token>-<role>``),
so a later run can tell a namespace left behind by a killed run (its owner is gone: removed at
start by `remove_stale_namespaces`) from one of a run that is still going (left alone).
Every process started in a namespace is stopped by its PID before the namespace is deleted.
A namespace may get its own resolv.conf in /etc/netns/NAME/ (which `ip netns exec` mounts over
/etc/resolv.conf), so a daemon that edits the resolver never touches the machine's own file;
that directory goes with the namespace.
"""

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

NAMESPACE_PREFIX = "pflab"
COMMAND_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
_POLL_INTERVAL_S = 0.05
_NETNS_DIR = Path("/var/run/netns")
NETNS_ETC_DIR = Path("/etc/netns")
_RUN_TOKEN_BYTES = 3
_ZOMBIE_STATE = "Z"


class LabError(RuntimeError):
    """A lab command failed; the message holds the command, its exit code and its output."""


def new_run_id() -> str:
    """A run id unique on this machine: the owner's PID and a random token."""
    return f"{os.getpid()}-{secrets.token_hex(_RUN_TOKEN_BYTES)}"


def run_checked(
    args: Sequence[str],
    *,
    check: bool = True,
    timeout_s: float = COMMAND_TIMEOUT_S,
    input_text: str | None = None,
    output_path: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output, and raise LabError saying what failed.

    With `output_path`, stdout and stderr go to that file instead of pipes (read back into
    the result), so a command that leaves a daemon behind holding them cannot block us.
    """
    try:
        if output_path is None:
            result = subprocess.run(
                list(args),
                capture_output=True,
                text=True,
                timeout=timeout_s,
                input=input_text,
                check=False,
            )
        else:
            with output_path.open("w") as output:
                result = subprocess.run(
                    list(args),
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    text=True,
                    timeout=timeout_s,
                    input=input_text,
                    check=False,
                )
            result.stdout = output_path.read_text()
            result.stderr = ""
    except subprocess.TimeoutExpired as error:
        raise LabError(f"`{' '.join(args)}` did not finish within {timeout_s:.0f} s") from error
    except FileNotFoundError as error:
        raise LabError(f"`{args[0]}` is not installed") from error
    if check and result.returncode != 0:
        raise LabError(
            f"`{' '.join(args)}` exited {result.returncode}\n"
            f"stdout: {result.stdout.strip()}\nstderr: {result.stderr.strip()}"
        )
    return result


def pid_alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie waiting for a parent that never reaps."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state != _ZOMBIE_STATE


def stop_pid(pid: int, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Terminate a process by PID, wait for it, and kill it if it outlives the timeout."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return
            time.sleep(_POLL_INTERVAL_S)
    raise LabError(f"process {pid} survived SIGKILL for {timeout_s:.0f} s")


def stop_process(process: "subprocess.Popen[bytes]", timeout_s: float = STOP_TIMEOUT_S) -> int:
    """Terminate a child process, wait for it, kill it after the timeout; its exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)
    return process.returncode


class Namespace:
    """A named network namespace and the processes this lab started inside it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._processes: list[subprocess.Popen[bytes]] = []

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    @property
    def etc_dir(self) -> Path:
        """/etc/netns/NAME: files `ip netns exec` mounts over those of /etc."""
        return NETNS_ETC_DIR / self.name

    def command(self, *args: str) -> list[str]:
        """The argument list that runs `args` inside this namespace."""
        return ["ip", "netns", "exec", self.name, *args]

    def run(
        self,
        *args: str,
        check: bool = True,
        timeout_s: float = COMMAND_TIMEOUT_S,
        input_text: str | None = None,
        output_path: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace and wait for it (LabError if it fails)."""
        return run_checked(
            self.command(*args),
            check=check,
            timeout_s=timeout_s,
            input_text=input_text,
            output_path=output_path,
        )

    def spawn(
        self,
        *args: str,
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        pipes: bool = False,
    ) -> "subprocess.Popen[bytes]":
        """Start a background process inside the namespace; it is stopped on `delete`.

        `ip netns exec` execs the command, so the PID returned is the command's own.
        Its stdout and stderr go to `log_path` (or are discarded), or to pipes when `pipes`.
        """
        environment = {**os.environ, **(env or {})}
        output: int = subprocess.DEVNULL
        log_file = None
        if pipes:
            output = subprocess.PIPE
        elif log_path is not None:
            log_file = log_path.open("ab")
            output = log_file.fileno()
        try:
            process = subprocess.Popen(
                self.command(*args),
                stdout=output,
                stderr=output,
                stdin=subprocess.DEVNULL,
                env=environment,
            )
        finally:
            if log_file is not None:
                log_file.close()
        self._processes.append(process)
        return process

    def stop(self, process: "subprocess.Popen[bytes]") -> int:
        """Stop a process started by `spawn`; its exit code."""
        code = stop_process(process)
        if process in self._processes:
            self._processes.remove(process)
        return code

    def pids(self) -> list[int]:
        """The PIDs of every process running inside the namespace."""
        result = run_checked(["ip", "netns", "pids", self.name], check=False)
        return [int(word) for word in result.stdout.split()]

    def delete(self) -> None:
        """Stop the processes started here (then any left inside), and delete the namespace."""
        for process in list(self._processes):
            self.stop(process)
        for pid in self.pids():
            stop_pid(pid)
        run_checked(["ip", "netns", "delete", self.name], check=False)
        shutil.rmtree(self.etc_dir, ignore_errors=True)


def _owner_pid(name: str) -> int | None:
    parts = name.split("-")
    if len(parts) < 2 or parts[0] != NAMESPACE_PREFIX or not parts[1].isdigit():
        return None
    return int(parts[1])


def remove_stale_namespaces() -> list[str]:
    """Delete the lab namespaces (and their /etc/netns dirs) whose owning process is gone."""
    names = {
        entry.name
        for directory in (_NETNS_DIR, NETNS_ETC_DIR)
        if directory.is_dir()
        for entry in directory.iterdir()
    }
    removed = []
    for name in sorted(names):
        owner = _owner_pid(name)
        if owner is None or pid_alive(owner):
            continue
        Namespace(name).delete()
        removed.append(name)
    return removed


@contextmanager
def namespace(run_id: str, role: str, *, resolv_conf: str | None = None) -> Iterator[Namespace]:
    """A new namespace with loopback up, deleted (with its processes) when the block ends.

    With `resolv_conf`, the namespace gets that text as its own /etc/resolv.conf, written
    before anything runs inside it.
    """
    created = Namespace(f"{NAMESPACE_PREFIX}-{run_id}-{role}")
    if resolv_conf is not None:
        created.etc_dir.mkdir(parents=True, exist_ok=True)
        (created.etc_dir / "resolv.conf").write_text(resolv_conf)
    try:
        run_checked(["ip", "netns", "add", created.name])
        created.run("ip", "link", "set", "lo", "up")
        yield created
    finally:
        created.delete()
