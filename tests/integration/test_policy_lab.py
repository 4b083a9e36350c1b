"""Issue 11's port policy end to end: a peer allowed only 8080/tcp reaches a server there
and nothing on 22, while what the restricted node opens itself still works; the policy
reloads (CLI and SIGHUP) without dropping the tunnel, and bad input changes nothing.
Issue 22: a SYN behind an IPv6 Destination Options header is judged by its real port, and
a LAN neighbour cannot reach the overlay address around the tunnel."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pilotif_lab.checks import ping, start_receiver
from pilotif_lab.nat import NatKind, nat_lab, poll_until, trust
from pilotif_lab.netns import LabError, Namespace

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="builds network namespaces: needs root"),
]

CONNECT_TIMEOUT_S = 3.0
PATH_TIMEOUT_S = 15.0
_CONNECT = (
    "import socket, sys\n"
    "socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))\n"
)
_CONNECT_WITH_DESTINATION_OPTIONS = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)\n"
    "# Every segment, the SYN first, behind an 8-byte Destination Options header (PadN).\n"
    "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, bytes([0, 0, 1, 4, 0, 0, 0, 0]))\n"
    "s.settimeout(float(sys.argv[3]))\n"
    "s.connect((sys.argv[1], int(sys.argv[2])))\n"
)
_LISTEN = (
    "import socket, sys, time\n"
    "family = socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET\n"
    "servers = [socket.create_server((sys.argv[1], int(port)), family=family, backlog=16)\n"
    "           for port in sys.argv[2:]]\n"
    "print('ready', flush=True)\n"
    "time.sleep(600)\n"
)


def _connects(
    namespace: Namespace, address: str, port: int, *, destination_options: bool = False
) -> bool:
    """Whether a TCP connection to address:port opens from the namespace (its segments
    behind a Destination Options header with `destination_options`)."""
    program = _CONNECT_WITH_DESTINATION_OPTIONS if destination_options else _CONNECT
    result = namespace.run(
        sys.executable, "-c", program, address, str(port), str(CONNECT_TIMEOUT_S), check=False
    )
    return result.returncode == 0


def _listen(namespace: Namespace, address: str, *ports: int) -> "subprocess.Popen[bytes]":
    """Listeners on address:port for each port (the kernel completes handshakes)."""
    server = namespace.spawn(sys.executable, "-c", _LISTEN, address, *map(str, ports), pipes=True)
    assert server.stdout is not None
    if server.stdout.readline().strip() != b"ready":
        namespace.stop(server)
        raise LabError(f"could not listen on {address} {ports}")
    return server


def test_a_peer_allowed_only_8080_reaches_that_port_and_nothing_else(tmp_path: Path) -> None:
    policy = tmp_path / "alpha.policy"
    policy.write_text("default deny\nallow beta 8080/tcp\n")
    with nat_lab((NatKind.CONE, NatKind.CONE), (("alpha", 0), ("beta", 1)), tmp_path) as lab:
        alpha, beta = lab["alpha"], lab["beta"]
        alpha.up(policy_file=policy)
        beta.up()
        trust(beta, alpha)
        alpha.wait_for_path("beta", ("direct",), PATH_TIMEOUT_S)
        alpha_ip = alpha.status()["node"]["ipv4"]
        beta_ip = beta.status()["node"]["ipv4"]
        servers: list[tuple[Namespace, subprocess.Popen[bytes]]] = [
            (alpha.namespace, start_receiver(alpha.namespace, alpha_ip, port))
            for port in (8080, 22)
        ]
        servers.append((beta.namespace, start_receiver(beta.namespace, beta_ip, 9000)))
        try:
            assert _connects(beta.namespace, alpha_ip, 8080)
            assert not _connects(beta.namespace, alpha_ip, 22)
            assert not ping(beta.namespace, alpha_ip, 1).all_answered
            # What alpha opens itself, and the answers to its pings, come back.
            assert _connects(alpha.namespace, beta_ip, 9000)
            assert ping(alpha.namespace, beta_ip).all_answered
            shown = alpha.json("policy")
            assert shown["policy"] == {"default": "deny", "rules": ["allow beta 8080/tcp"]}
            assert shown["policy_denied"]["beta"] >= 2
            handshake = alpha.peer("beta")

            # The file changes and is read again: 22 opens, the tunnel stays.
            policy.write_text("default deny\nallow beta 8080/tcp\nallow beta 22/tcp\n")
            alpha.pilotif("policy", "reload")
            assert _connects(beta.namespace, alpha_ip, 22)
            # SIGHUP reads it too; the CLI's own rules are kept next to the file's.
            alpha.pilotif("allow", "network", "icmp")
            policy.write_text("default deny\nallow beta 8080/tcp\n")
            pid = alpha.pid()
            assert pid is not None
            os.kill(pid, signal.SIGHUP)
            poll_until(
                lambda: (
                    True
                    if alpha.json("policy")["policy"]["rules"]
                    == ["allow beta 8080/tcp", "allow network icmp"]
                    else None
                ),
                PATH_TIMEOUT_S,
                "alpha reading its policy file again on SIGHUP",
            )
            after = alpha.peer("beta")
            assert handshake is not None and after is not None
            # Same session (the time is shown on the wall clock, to within a read's jitter);
            # the pair may have moved to the relay meanwhile on a slow machine (issue 24).
            assert after["path"] in ("direct", "relay")
            assert after["last_handshake"] == pytest.approx(handshake["last_handshake"], abs=0.5)
            assert ping(alpha.namespace, beta_ip).all_answered

            # Bad input: one line, the policy in force unchanged.
            before = alpha.json("policy")["policy"]
            for args in (("allow", "nobody", "80/tcp"), ("allow", "beta", "99999/tcp")):
                with pytest.raises(LabError):
                    alpha.pilotif(*args)
            policy.write_text("default deny\nallow beta 8080\n")
            refused = alpha.pilotif("policy", "reload", check=False)
            assert refused.returncode != 0 and f"{policy}:2:" in refused.stderr
            assert alpha.json("policy")["policy"] == before
        finally:
            for namespace, server in servers:
                namespace.stop(server)


def test_a_syn_behind_a_destination_options_header_reaches_no_denied_port(
    tmp_path: Path,
) -> None:
    """`default allow` and `deny * 22/tcp`: a peer whose SYN carries a Destination Options
    header gets no SYN-ACK on 22 (a filter reading the next header as the protocol took
    it for "other" and let the default pass it), and the same header to 8080 connects."""
    policy = tmp_path / "alpha.policy"
    policy.write_text("default allow\ndeny * 22/tcp\n")
    with nat_lab((NatKind.CONE, NatKind.CONE), (("alpha", 0), ("beta", 1)), tmp_path) as lab:
        alpha, beta = lab["alpha"], lab["beta"]
        alpha.up(policy_file=policy)
        beta.up()
        trust(beta, alpha)
        alpha.wait_for_path("beta", ("direct", "relay"), PATH_TIMEOUT_S)
        alpha_ip = alpha.status()["node"]["ipv6"]
        server = _listen(alpha.namespace, alpha_ip, 22, 8080)
        try:
            assert _connects(beta.namespace, alpha_ip, 8080, destination_options=True)
            assert not _connects(beta.namespace, alpha_ip, 22, destination_options=True)
            assert not _connects(beta.namespace, alpha_ip, 22)
            assert alpha.json("policy")["policy_denied"]["beta"] >= 2
        finally:
            alpha.namespace.stop(server)


def test_a_lan_neighbour_gets_no_answer_from_the_overlay_address(tmp_path: Path) -> None:
    """Linux takes a packet for any of its addresses on any interface: alpha's router,
    a LAN neighbour, routes alpha's overlay address via alpha's LAN address and must get
    no answer from a service bound there, while beta reaches it through the tunnel."""
    with nat_lab((NatKind.CONE, NatKind.CONE), (("alpha", 0), ("beta", 1)), tmp_path) as lab:
        alpha, beta = lab["alpha"], lab["beta"]
        alpha.up()
        beta.up()
        trust(beta, alpha)
        alpha.wait_for_path("beta", ("direct", "relay"), PATH_TIMEOUT_S)
        alpha_ip = alpha.status()["node"]["ipv4"]
        neighbour = alpha.router.namespace
        neighbour.run("ip", "route", "add", f"{alpha_ip}/32", "via", alpha.lan_address)
        server = _listen(alpha.namespace, alpha_ip, 8080)
        try:
            assert _connects(beta.namespace, alpha_ip, 8080)
            assert not _connects(neighbour, alpha_ip, 8080)
            # The host's own programs still reach its overlay address.
            assert _connects(alpha.namespace, alpha_ip, 8080)
        finally:
            alpha.namespace.stop(server)
        alpha.down()
        # `down` takes the guard away with the TUN.
        tables = alpha.namespace.run("nft", "list", "tables").stdout
        assert "pilotif_" not in tables
