"""The registry demo: two agents behind two NAT routers find each other by name and talk.

Builds the NAT lab (a registry on a small simulated internet, two home routers with cone
NATs, one agent behind each), brings pilotif up on both, has alpha ask beta for trust and
beta approve, resolves `beta.pilot` from alpha's namespace, sends the seed's JSON line to a
plain TCP server on beta with `pilotif connect`, shows `pilotif peers` on both sides with the
path they settled on, has beta leave a message in alpha's inbox (an agent service), and
tears everything down.
"""

import os

from pilotif_lab.checks import receiver_report, start_receiver
from pilotif_lab.demo import EXIT_FAILED, EXIT_NOT_ROOT, EXIT_OK
from pilotif_lab.nat import REGISTRY, Agent, NatKind, NatLab, nat_lab
from pilotif_lab.netns import LabError

DEMO_LINE = '{"action":"start_stream", "parameters":"real_time"}'
DEMO_REPLY = '{"status":"streaming"}'
DEMO_PORT = 1000
DEMO_MESSAGE = "stream started, results on port 1000"
_DIRECT = "direct"


def _step(text: str) -> None:
    print(text, flush=True)


def _shell(agent: Agent, command: str, output: str) -> None:
    _step(f"     {agent.hostname}$ {command}")
    for line in output.strip().splitlines():
        _step(f"       {line}")


def _demo(lab: NatLab) -> list[str]:
    """Run the steps; what went wrong (empty when everything worked)."""
    alpha, beta = lab["alpha"], lab["beta"]
    _step(f"1. a small internet in network namespaces, the registry on {REGISTRY}")
    for agent in (alpha, beta):
        router = agent.router
        _step(
            f"     {agent.hostname} at {agent.lan_address}, behind a {router.kind} NAT "
            f"({router.lan} -> {router.wan_address})"
        )
    for agent in (alpha, beta):
        agent.up()
    _step("2. pilotif up on both: the registry gives each a permanent address")
    for agent in (alpha, beta):
        node = agent.status()["node"]
        _step(
            f"     {agent.hostname}: {node['ipv4']}, seen by the registry at "
            f"{node['public_endpoint']}"
        )
    _step("3. trust is mutual and explicit")
    _shell(alpha, "pilotif handshake beta", alpha.pilotif("handshake", "beta").stdout)
    _shell(beta, "pilotif approve alpha", beta.pilotif("approve", "alpha").stdout)
    failures = []
    try:
        alpha.wait_for_path("beta", (_DIRECT,))
    except LabError as error:
        failures.append(f"no direct path: {error}")
    beta_ipv4 = beta.status()["node"]["ipv4"]
    _step("4. names: any program resolves beta.pilot")
    resolved = alpha.namespace.run("getent", "ahostsv4", "beta.pilot", check=False).stdout
    addresses = {line.split()[0] for line in resolved.splitlines() if line.strip()}
    _shell(alpha, "getent ahostsv4 beta.pilot", " ".join(sorted(addresses)) or "(nothing)")
    _step(f"5. plain TCP by name: a server on beta's port {DEMO_PORT} answers {DEMO_REPLY}")
    server = start_receiver(beta.namespace, beta_ipv4, DEMO_PORT, show_text=True, reply=DEMO_REPLY)
    try:
        connect = alpha.pilotif(
            "connect", "beta", str(DEMO_PORT), input_text=f"{DEMO_LINE}\n", check=False
        )
        received = str(receiver_report(server).get("text", "")) if connect.returncode == 0 else ""
    finally:
        beta.namespace.stop(server)
    _shell(alpha, f"echo '{DEMO_LINE}' | pilotif connect beta {DEMO_PORT}", connect.stdout)
    _step(f"     beta's server received: {received.strip()!r}")
    _step("6. the path each side uses (direct: hole punched through both NATs)")
    _shell(alpha, "pilotif peers", alpha.pilotif("peers").stdout)
    _shell(beta, "pilotif peers", beta.pilotif("peers").stdout)
    _step("7. an agent service: beta leaves a message in alpha's inbox (docs/AGENTS.md)")
    sent = beta.pilotif("send", "alpha", DEMO_MESSAGE, check=False)
    _shell(beta, f"pilotif send alpha '{DEMO_MESSAGE}'", sent.stdout or sent.stderr)
    inbox = alpha.pilotif("inbox", check=False)
    _shell(alpha, "pilotif inbox", inbox.stdout or inbox.stderr)
    if f"beta: {DEMO_MESSAGE}" not in inbox.stdout:
        failures.append(f"the message did not reach alpha's inbox: {sent.stderr.strip()}")
    if addresses != {beta_ipv4}:
        failures.append(f"beta.pilot resolved to {sorted(addresses)}, not {beta_ipv4}")
    if received != f"{DEMO_LINE}\n" or connect.stdout != DEMO_REPLY:
        failures.append(f"the TCP exchange failed: {connect.stderr.strip()}")
    return failures


def run_nat_demo() -> int:
    """Run the demo, print what each step did; 0 when every check passed."""
    if os.geteuid() != 0:
        print("the demo builds network namespaces and needs root: run it with sudo")
        return EXIT_NOT_ROOT
    try:
        with nat_lab((NatKind.CONE, NatKind.CONE), (("alpha", 0), ("beta", 1))) as lab:
            failures = _demo(lab)
    except LabError as error:
        print(f"demo failed: {error}")
        return EXIT_FAILED
    _step("8. registry, daemons and namespaces stopped, nothing left behind")
    if failures:
        print("demo failed: " + "; ".join(failures))
        return EXIT_FAILED
    print("demo passed")
    return EXIT_OK
