"""Issue 11's port policy end to end: a peer allowed only 8080/tcp reaches a server there
and nothing on 22, while what the restricted node opens itself still works; the policy
reloads (CLI and SIGHUP) without dropping the tunnel, and bad input changes nothing."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pilotif.lab.checks import ping, start_receiver
from pilotif.lab.nat import NatKind, nat_lab, poll_until, trust
from pilotif.lab.netns import LabError, Namespace

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


def _connects(namespace: Namespace, address: str, port: int) -> bool:
    """Whether a TCP connection to address:port opens from the namespace."""
    result = namespace.run(
        sys.executable, "-c", _CONNECT, address, str(port), str(CONNECT_TIMEOUT_S), check=False
    )
    return result.returncode == 0


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
            # Same session (the time is shown on the wall clock, to within a read's jitter).
            assert after["path"] == "direct"
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
