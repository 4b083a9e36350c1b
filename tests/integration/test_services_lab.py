"""Issue 12's agent services end to end in the NAT lab: a message reaches a peer's inbox
across two NATs and survives the peer's restart; a client in another language (bash and
its /dev/tcp) speaks the documented wire format; garbage gets an answer and a closed
connection, never a stuck daemon; echo answers on port 7."""

import json
import os
from pathlib import Path

import pytest

from pilotif.lab.nat import Agent, NatKind, nat_lab, poll_until, trust
from pilotif.lab.netns import LabError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="builds network namespaces: needs root"),
]

PATH_TIMEOUT_S = 15.0
REACHED_TIMEOUT_S = 10.0


def _bash_exchange(agent: Agent, address: str, port: int, line: str) -> str:
    """Send one line to address:port from the agent's namespace with bash's /dev/tcp and
    return the first line of the answer: no Python on the client side."""
    script = (
        f"exec 3<>/dev/tcp/{address}/{port} && printf '%s\\n' \"$1\" >&3 && timeout 5 head -n 1 <&3"
    )
    result = agent.namespace.run("bash", "-c", script, "client", line, check=False)
    return result.stdout.strip()


def test_messages_reach_the_inbox_survive_a_restart_and_speak_plain_lines(
    tmp_path: Path,
) -> None:
    with nat_lab((NatKind.CONE, NatKind.CONE), (("alpha", 0), ("beta", 1)), tmp_path) as lab:
        alpha, beta = lab["alpha"], lab["beta"]
        alpha.up()
        beta.up()
        trust(alpha, beta)
        alpha.wait_for_path("beta", ("direct",), PATH_TIMEOUT_S)
        beta_ip = beta.status()["node"]["ipv4"]

        assert alpha.json("send", "beta", "hello beta") == {"peer": "beta", "id": 1}
        beta.down()
        beta.restart()
        inbox = beta.json("inbox")
        assert [(m["sender"], m["text"]) for m in inbox] == [("alpha", "hello beta")]

        # The documented wire format, from bash: one JSON object a line.
        request = json.dumps({"op": "message", "text": "from bash"})
        answer = poll_until(
            lambda: _bash_exchange(alpha, beta_ip, 1001, request) or None,
            REACHED_TIMEOUT_S,
            "a bash client reaching beta's messages service",
        )
        assert json.loads(answer) == {"ok": True, "id": 2}
        garbage = json.loads(_bash_exchange(alpha, beta_ip, 1001, "this is not json"))
        assert (garbage["ok"], garbage["code"]) == (False, "bad_request")
        assert _bash_exchange(alpha, beta_ip, 7, "echo me") == "echo me"
        assert [m["text"] for m in beta.json("inbox")] == ["hello beta", "from bash"]
        assert "alpha: from bash" in beta.pilotif("inbox").stdout

        # Bad input: one line each, nothing sent.
        for args in (("send", "nobody", "hi"), ("send", "beta")):
            with pytest.raises(LabError) as refused:
                alpha.pilotif(*args)
            assert "pilotif: error:" in str(refused.value)
        assert beta.json("inbox", "--clear") == {"cleared": 2}
        assert beta.json("inbox") == []
