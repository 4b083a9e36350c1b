"""Issue 12's agent services end to end in the NAT lab: a message reaches a peer's inbox
across two NATs and survives the peer's restart; a client in another language (bash and
its /dev/tcp) speaks the documented wire format; garbage gets an answer and a closed
connection, never a stuck daemon; echo answers on port 7; a 50 MB file arrives with its
SHA-256, and one cut short leaves nothing; a subscriber gets exactly the events published
after it subscribed."""

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
from pilotif_lab.nat import Agent, NatKind, poll_until, trusting_pair
from pilotif_lab.netns import LabError
from pilotif_lab.pilotif_node import pilotif_executable

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="builds network namespaces: needs root"),
]

PATH_TIMEOUT_S = 15.0
REACHED_TIMEOUT_S = 10.0


NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
"""Run a command as uid 65534 (nobody), no groups: any unprivileged local user."""


def _bash_exchange(
    agent: Agent, address: str, port: int, *lines: str, user: tuple[str, ...] = ()
) -> str:
    """Send lines to address:port from the agent's namespace with bash's /dev/tcp (as
    `user`, root without it) and return as many lines of answer: no Python on the client
    side."""
    script = (
        f"exec 3<>/dev/tcp/{address}/{port} && printf '%s\\n' \"$@\" >&3"
        f" && timeout 5 head -n {len(lines)} <&3"
    )
    result = agent.namespace.run(*user, "bash", "-c", script, "client", *lines, check=False)
    return result.stdout.strip()


def test_messages_reach_the_inbox_survive_a_restart_and_speak_plain_lines(
    tmp_path: Path,
) -> None:
    with trusting_pair((NatKind.CONE, NatKind.CONE), tmp_path, ("direct",), PATH_TIMEOUT_S) as lab:
        alpha, beta = lab["alpha"], lab["beta"]
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

        # Hostile JSON gets an answer, and the next line on the same connection works.
        surrogate = '{"op": "message", "text": "\\ud800"}'
        after = json.dumps({"op": "message", "text": "after a surrogate"})
        refused, accepted = _bash_exchange(alpha, beta_ip, 1001, surrogate, after).splitlines()
        assert (json.loads(refused)["ok"], json.loads(refused)["code"]) == (False, "bad_request")
        assert json.loads(accepted)["ok"] is True

        # A local user of beta's host is not beta: refused, nothing kept "from beta".
        as_beta = json.dumps({"op": "message", "text": "I am beta"})
        for port, line in ((1001, as_beta), (1002, '{"op": "subscribe", "topic": "*"}')):
            answer = json.loads(_bash_exchange(beta, beta_ip, port, line, user=NOBODY))
            assert (answer["ok"], answer["code"]) == (False, "not_a_peer")
        assert [(m["sender"], m["text"]) for m in beta.json("inbox")] == [
            ("alpha", "after a surrogate")
        ]


FILE_BYTES = 50 * 2**20
_TRUNCATED_CLIENT = """
import hashlib, json, socket, sys
data = b"t" * 2_000_000
conn = socket.create_connection((sys.argv[1], 1001), timeout=10)
digest = hashlib.sha256(data).hexdigest()
header = {"op": "file", "name": "cut.bin", "size": len(data), "sha256": digest}
conn.sendall(json.dumps(header).encode() + b"\\n")
print(conn.makefile("rb").readline().decode().strip())
conn.sendall(data[: len(data) // 2])
conn.close()
"""


def test_a_file_arrives_whole_or_not_at_all(tmp_path: Path) -> None:
    with trusting_pair((NatKind.CONE, NatKind.CONE), tmp_path, ("direct",), PATH_TIMEOUT_S) as lab:
        alpha, beta = lab["alpha"], lab["beta"]
        beta_ip = beta.status()["node"]["ipv4"]
        payload = tmp_path / "results.bin"
        payload.write_bytes(os.urandom(FILE_BYTES))
        digest = hashlib.sha256(payload.read_bytes()).hexdigest()

        sent = alpha.json("send-file", "beta", str(payload))
        assert (sent["size"], sent["sha256"]) == (FILE_BYTES, digest)
        listing = beta.json("received")
        [kept] = listing["files"]
        assert (kept["sender"], kept["size"], kept["sha256"]) == ("alpha", FILE_BYTES, digest)
        on_disk = Path(listing["directory"]) / kept["name"]
        assert hashlib.sha256(on_disk.read_bytes()).hexdigest() == digest

        # A transfer cut short leaves no file, listed or partial.
        ready = alpha.namespace.run(sys.executable, "-c", _TRUNCATED_CLIENT, beta_ip).stdout
        assert json.loads(ready)["ready"] is True
        poll_until(
            lambda: True if not any((Path(listing["directory"]) / ".partial").iterdir()) else None,
            REACHED_TIMEOUT_S,
            "beta dropping the partial file",
        )
        assert [f["name"] for f in beta.json("received")["files"]] == [kept["name"]]

        # Too large: refused before a byte is sent.
        header = json.dumps({"op": "file", "name": "huge", "size": 2**40, "sha256": "0" * 64})
        refused = json.loads(_bash_exchange(alpha, beta_ip, 1001, header))
        assert (refused["ok"], refused["code"]) == (False, "too_large")
        with pytest.raises(LabError):
            alpha.pilotif("send-file", "beta", str(tmp_path / "missing.bin"))


def test_a_subscriber_gets_exactly_the_events_published_after_it_subscribed(
    tmp_path: Path,
) -> None:
    with trusting_pair((NatKind.CONE, NatKind.CONE), tmp_path, ("direct",), PATH_TIMEOUT_S) as lab:
        alpha, beta = lab["alpha"], lab["beta"]
        assert beta.json("publish", "beta", "jobs/0", "before")["delivered"] == 0
        subscriber = alpha.namespace.spawn(
            pilotif_executable(),
            "subscribe",
            "beta",
            "jobs/*",
            "--count",
            "2",
            "--timeout",
            "60",
            "--state-dir",
            str(alpha.state_dir),
            pipes=True,
        )
        try:
            assert subscriber.stderr is not None
            assert b"subscribed" in subscriber.stderr.readline()
            assert beta.json("publish", "beta", "jobs/1", '{"n": 1}')["delivered"] == 1
            assert beta.json("publish", "beta", "other/x", "not for it")["delivered"] == 0
            assert alpha.json("publish", "beta", "jobs/2", "two")["delivered"] == 1
            output, _ = subscriber.communicate(timeout=30)
        finally:
            alpha.namespace.stop(subscriber)
        events = [json.loads(line) for line in output.decode().splitlines()]
        assert [(e["topic"], e["data"], e["sender"]) for e in events] == [
            ("jobs/1", {"n": 1}, "beta"),
            ("jobs/2", "two", "alpha"),
        ]
        with pytest.raises(LabError) as refused:
            alpha.pilotif("publish", "beta", "bad topic!", "x")
        assert "bad_topic" in str(refused.value) or "topic" in str(refused.value)


def test_a_task_is_submitted_accepted_and_answered_across_two_nats(tmp_path: Path) -> None:
    with trusting_pair(
        (NatKind.CONE, NatKind.SYMMETRIC), tmp_path, ("direct", "relay"), PATH_TIMEOUT_S
    ) as lab:
        alpha, beta = lab["alpha"], lab["beta"]
        submitted = alpha.json("task", "submit", "beta", "summarise the logs")
        task_id = submitted["id"]
        [incoming] = beta.json("task", "list")
        assert (incoming["id"], incoming["role"], incoming["peer"]) == (
            task_id,
            "incoming",
            "alpha",
        )
        assert beta.json("task", "accept", task_id)["state"] == "accepted"
        assert beta.json("task", "result", task_id, "3 errors, all DNS")["state"] == "done"
        [outgoing] = alpha.json("task", "list")
        assert (outgoing["role"], outgoing["state"], outgoing["result"]) == (
            "outgoing",
            "done",
            "3 errors, all DNS",
        )
        # Both keep their history across a restart; a finished task takes no more changes.
        alpha.down()
        alpha.restart()
        assert [t["state"] for t in alpha.json("task", "list")] == ["done"]
        with pytest.raises(LabError) as refused:
            beta.pilotif("task", "decline", task_id, "--reason", "too late")
        assert "bad_state" in str(refused.value) or "cannot become" in str(refused.value)
        with pytest.raises(LabError):
            beta.pilotif("task", "accept", "no-such-task")


def test_bench_measures_and_listen_prints_what_arrives(tmp_path: Path) -> None:
    with trusting_pair((NatKind.CONE, NatKind.CONE), tmp_path, ("direct",), PATH_TIMEOUT_S) as lab:
        alpha, beta = lab["alpha"], lab["beta"]
        beta_ip = beta.status()["node"]["ipv4"]
        measured = alpha.json("bench", "beta", "5")
        assert measured["megabytes"] == 5 and measured["mbit_per_s"] > 0
        assert 0 < measured["rtt_ms"] < 1000

        listener = beta.namespace.spawn(
            pilotif_executable(),
            "listen",
            "9000",
            "--count",
            "2",
            "--state-dir",
            str(beta.state_dir),
            pipes=True,
        )
        try:
            assert listener.stderr is not None
            assert b"listening" in listener.stderr.readline()
            script = f'exec 3<>/dev/tcp/{beta_ip}/9000 && printf "one\\ntwo\\n" >&3'
            alpha.namespace.run("bash", "-c", script)
            output, _ = listener.communicate(timeout=30)
        finally:
            beta.namespace.stop(listener)
        alpha_ip = alpha.status()["node"]["ipv4"]
        assert [json.loads(line) for line in output.decode().splitlines()] == [
            {"peer": alpha_ip, "port": 9000, "data": "one"},
            {"peer": alpha_ip, "port": 9000, "data": "two"},
        ]
