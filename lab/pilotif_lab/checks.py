"""What a person would check across a tunnel: ping, and a TCP transfer whose hash must match."""

import json
import re
import subprocess
import sys
from dataclasses import dataclass

from pilotif_lab.netns import LabError, Namespace

TRANSFER_PORT = 5201
TRANSFER_TIMEOUT_S = 120.0
PING_INTERVAL_S = 0.2
PING_REPLY_TIMEOUT_S = 3
_PING_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) received")
_PING_RTT = re.compile(r"= [\d.]+/([\d.]+)/")


@dataclass(frozen=True)
class PingResult:
    """The summary line of one `ping` run."""

    transmitted: int
    received: int
    average_rtt_ms: float | None

    @property
    def all_answered(self) -> bool:
        """Every echo request got its reply."""
        return self.transmitted > 0 and self.received == self.transmitted


def ping(namespace: Namespace, address: str, count: int = 3) -> PingResult:
    """Ping `address` (v4 or v6) from inside the namespace."""
    result = namespace.run(
        "ping",
        "-n",
        "-c",
        str(count),
        "-i",
        str(PING_INTERVAL_S),
        "-W",
        str(PING_REPLY_TIMEOUT_S),
        address,
        check=False,
    )
    summary = _PING_SUMMARY.search(result.stdout)
    if summary is None:
        raise LabError(f"ping {address} printed no summary: {result.stdout} {result.stderr}")
    rtt = _PING_RTT.search(result.stdout)
    return PingResult(
        transmitted=int(summary.group(1)),
        received=int(summary.group(2)),
        average_rtt_ms=float(rtt.group(1)) if rtt else None,
    )


@dataclass(frozen=True)
class TransferResult:
    """What the sender sent and what the receiver got."""

    sent_bytes: int
    sent_sha256: str
    received_bytes: int
    received_sha256: str
    seconds: float
    received_text: str | None = None

    @property
    def intact(self) -> bool:
        """The receiver got exactly the bytes that were sent."""
        return self.sent_bytes == self.received_bytes and self.sent_sha256 == self.received_sha256

    @property
    def megabits_per_s(self) -> float:
        """The sender's view of the rate."""
        return self.sent_bytes * 8 / 1e6 / self.seconds if self.seconds else 0.0


def _last_json(process: "subprocess.Popen[bytes]", role: str) -> dict[str, object]:
    try:
        stdout, stderr = process.communicate(timeout=TRANSFER_TIMEOUT_S)
    except subprocess.TimeoutExpired as error:
        raise LabError(
            f"the transfer {role} did not finish in {TRANSFER_TIMEOUT_S:.0f} s"
        ) from error
    lines = stdout.decode().strip().splitlines()
    if process.returncode != 0 or not lines:
        raise LabError(f"the transfer {role} exited {process.returncode}: {stderr.decode()}")
    parsed: dict[str, object] = json.loads(lines[-1])
    return parsed


class RunningTransfer:
    """A transfer under way in the background; `wait` for its result."""

    def __init__(
        self,
        sender: Namespace,
        receiver: Namespace,
        client: "subprocess.Popen[bytes]",
        server: "subprocess.Popen[bytes]",
    ) -> None:
        self._sender = sender
        self._receiver = receiver
        self._client = client
        self._server = server

    def wait(self) -> TransferResult:
        """Both ends' reports, once the transfer has finished."""
        try:
            sent = _last_json(self._client, "sender")
            received = _last_json(self._server, "receiver")
        finally:
            self._sender.stop(self._client)
            self._receiver.stop(self._server)
        text = received.get("text")
        return TransferResult(
            sent_bytes=int(str(sent["bytes"])),
            sent_sha256=str(sent["sha256"]),
            received_bytes=int(str(received["bytes"])),
            received_sha256=str(received["sha256"]),
            seconds=float(str(sent["seconds"])),
            received_text=None if text is None else str(text),
        )


def _transfer_program(*args: str) -> list[str]:
    return [sys.executable, "-m", "pilotif_lab.transfer", *args]


def start_receiver(
    namespace: Namespace,
    bind: str,
    port: int = TRANSFER_PORT,
    *,
    show_text: bool = False,
    reply: str | None = None,
) -> "subprocess.Popen[bytes]":
    """A receiver listening on bind:port in `namespace` (accepts one connection).

    Once its connection ends it prints one JSON line (bytes, sha256, and text with
    `show_text`) after answering `reply`; stop it with `namespace.stop`.
    """
    serve_args = ["serve", "--bind", bind, "--port", str(port)]
    if show_text:
        serve_args.append("--show-text")
    if reply is not None:
        serve_args += ["--reply", reply]
    server = namespace.spawn(*_transfer_program(*serve_args), pipes=True)
    assert server.stdout is not None
    if not server.stdout.readline():
        namespace.stop(server)
        raise LabError(f"the transfer receiver could not listen on {bind}:{port}")
    return server


def receiver_report(process: "subprocess.Popen[bytes]") -> dict[str, object]:
    """The JSON line a receiver from `start_receiver` printed once its connection ended."""
    return _last_json(process, "receiver")


def start_transfer(
    sender: Namespace,
    receiver: Namespace,
    address: str,
    size_bytes: int = 0,
    *,
    message: str | None = None,
    min_seconds: float = 0.0,
    port: int = TRANSFER_PORT,
    bind: str | None = None,
) -> RunningTransfer:
    """Start a receiver on address:port in `receiver` and a sender to it in `sender`.

    `address` may be a name the sender resolves; the receiver then listens on `bind`.
    """
    server = start_receiver(receiver, bind or address, port, show_text=message is not None)
    send_args = ["send", "--host", address, "--port", str(port), "--bytes", str(size_bytes)]
    send_args += ["--min-seconds", str(min_seconds)]
    if message is not None:
        send_args += ["--message", message]
    client = sender.spawn(*_transfer_program(*send_args), pipes=True)
    return RunningTransfer(sender, receiver, client, server)


def tcp_transfer(
    sender: Namespace, receiver: Namespace, address: str, size_bytes: int
) -> TransferResult:
    """Send `size_bytes` random bytes over TCP to address and wait for both reports."""
    return start_transfer(sender, receiver, address, size_bytes).wait()
