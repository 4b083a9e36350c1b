"""Issue 11 end to end in the NAT lab: join keys, a closed registry, tags that an operator
granted against tags a node gave itself, and names that come back after --expire-after.
Agents are driven with the `pilotif` command line; the operator with
`pilotif registry admin` on the registry's database."""

import os
import shutil
import time
from pathlib import Path

import pytest
from pilotif_lab.nat import PATH_TIMEOUT_S, Agent, NatKind, nat_lab, poll_until
from pilotif_lab.netns import LabError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="builds network namespaces: needs root"),
]

CONE = NatKind.CONE
TRUST_TIMEOUT_S = 10.0
"""Generous: a request, an auto-approval and the pushes take well under a second."""
EXPIRE_AFTER_S = 10
"""The registry's --expire-after in the expiry test (30 days by default)."""


def _up_refused(agent: Agent, join_key: str | None = None) -> str:
    """`pilotif up` that must fail: its one-line error."""
    with pytest.raises(LabError) as refused:
        agent.up(join_key=join_key)
    assert agent.pid() is None, "a refused `up` left a daemon running"
    return str(refused.value)


def _trusted_names(agent: Agent) -> list[str]:
    return sorted(node["hostname"] for node in agent.json("trust"))


def test_auto_approve_by_tag_trusts_granted_tags_not_self_set_ones(tmp_path: Path) -> None:
    """Before: `--auto-approve tag:team` approved any stranger that registered with
    tags=["team"]. Now only a tag the operator granted (here by a join key) counts."""
    agents = (("lead", 0), ("stranger", 1), ("member", 1))
    with nat_lab((CONE, CONE), agents, tmp_path) as lab:
        key = lab.admin("key", "create", "--tags", "team")["key"]
        lead, stranger, member = lab["lead"], lab["stranger"], lab["member"]
        lead.up(auto_approve="tag:team")
        stranger.up(tags=("team",))
        member.up(join_key=key)
        stranger.pilotif("handshake", "lead")
        member.pilotif("handshake", "lead")
        member.wait_for_path("lead", ("direct", "relay"), TRUST_TIMEOUT_S)
        poll_until(
            lambda: True if lead.json("pending")["incoming"] else None,
            PATH_TIMEOUT_S,
            "the stranger's request waiting at lead",
        )
        assert _trusted_names(lead) == ["member"]
        assert [i["node"]["hostname"] for i in lead.json("pending")["incoming"]] == ["stranger"]
        found = {n["hostname"]: n for n in lead.json("find", "tag:team")}
        assert found["member"].get("granted_tags") == ["team"]
        assert "granted_tags" not in found["stranger"] and found["stranger"]["tags"] == ["team"]
        assert "granted=team" in lead.pilotif("find", "tag:team").stdout


def test_a_closed_registry_admits_only_nodes_with_a_good_key(tmp_path: Path) -> None:
    agents = (("nokey", 0), ("first", 0), ("second", 0), ("late", 0))
    with nat_lab((CONE,), agents, tmp_path, registry_args=("--require-join-key",)) as lab:
        assert "join key" in _up_refused(lab["nokey"])
        one_off = lab.admin("key", "create")["key"]
        lab["first"].up(join_key=one_off)
        assert "used" in _up_refused(lab["second"], one_off)
        expiring = lab.admin("key", "create", "--expires", "1s", "--reusable")["key"]
        time.sleep(1.5)
        assert "expired" in _up_refused(lab["late"], expiring)
        # The node the one-off key admitted comes back with it (a restart, a sidecar).
        lab["first"].down()
        lab["first"].restart()
        # `up` may return on what the node kept before the registry answers.
        poll_until(
            lambda: True if lab["first"].status()["node"]["registry_online"] else None,
            TRUST_TIMEOUT_S,
            "first registering again with its one-off key",
        )
        assert [k["uses"] for k in lab.admin("key", "list")] == [1, 0]


def test_a_name_unseen_past_expire_after_is_free_for_another_key(tmp_path: Path) -> None:
    args = ("--require-join-key", "--expire-after", f"{EXPIRE_AFTER_S}s")
    with nat_lab((CONE,), (("worker", 0),), tmp_path, registry_args=args) as lab:
        key = lab.admin("key", "create", "--reusable")["key"]
        worker = lab["worker"]
        worker.up(join_key=key)
        old_key = worker.status()["public_key"]
        worker.down()
        gone_at = time.monotonic()
        # A new machine (a new identity) under the old name: refused while it is fresh...
        shutil.rmtree(worker.state_dir)
        assert "belongs to another node" in _up_refused(worker, key)
        time.sleep(max(0.0, EXPIRE_AFTER_S + 1 - (time.monotonic() - gone_at)))
        # ... and admitted once the old node has not been seen for --expire-after.
        shutil.rmtree(worker.state_dir)
        worker.up(join_key=key)
        assert worker.status()["public_key"] != old_key
        assert [n["hostname"] for n in lab.admin("node", "list")] == ["worker"]
