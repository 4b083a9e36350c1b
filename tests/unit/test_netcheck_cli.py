"""`pilotif netcheck [--json]` on loopback: what a user reads when the registry and a
relay answer, when nothing answers (UDP blocked: the stream would carry), with a proxy
set, and where the registry comes from (`--registry`, PILOTIF_REGISTRY, a running node)
or why it cannot run. Fake servers answer probes as the registry and relays do
(pilotif.control.probe_answer); the gateway is never asked (--no-port-mapping). And the
readable report of what the lab shows (a symmetric NAT, a port mapping, IPv6 unrouted)."""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from pilotif.cli.main import cli
from pilotif.cli.netcheck import REGISTRY_ENV, report_json, report_text
from pilotif.control.probe_answer import PROBE_TYPE, pack_answer
from pilotif.control.relay_info import RelayInfo
from pilotif.daemon.netcheck import NetcheckReport, StreamCheck
from pilotif.net.hostport import format_endpoint
from pilotif.net.portmap.client import PortMapping
from pilotif.node.cache import NodeCache, NodeSnapshot
from pilotif.node.netcheck import Server, ServerKind, ServerResult, UdpReport
from pilotif.wg.events import Endpoint
from tests.unit.test_cli import assert_one_line_error, pilotif
from tests.unit.udp_responder import LOOPBACK, udp_responder

QUICK_RUN = ("--timeout", "4", "--no-port-mapping")
"""Long enough for loopback answers on a slow machine; the gateway is never asked."""


@contextmanager
def answering(*, silent: bool = False) -> Iterator[Endpoint]:
    """A server on loopback that answers netcheck probes (or, `silent`, drops them: what
    a network that blocks UDP looks like)."""

    def answer(data: bytes, source: Endpoint) -> list[bytes]:
        if silent or data[:1] != bytes((PROBE_TYPE,)):
            return []
        return [pack_answer(data, source)]

    with udp_responder(answer) as endpoint:
        yield endpoint


@pytest.fixture(autouse=True)
def no_proxy_or_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "PILOTIF_PROXY", REGISTRY_ENV):
        monkeypatch.delenv(name, raising=False)


def _netcheck(tmp_path: Path, *args: str) -> Result:
    state_dir = tmp_path / "state"
    return CliRunner().invoke(cli, ["netcheck", *args, *QUICK_RUN, "--state-dir", str(state_dir)])


def test_registry_and_relay_answering_give_udp_the_endpoint_the_relay_and_the_mtu(
    tmp_path: Path,
) -> None:
    with answering() as registry, answering() as relay:
        result = _netcheck(
            tmp_path, "--registry", format_endpoint(registry), "--relay", format_endpoint(relay)
        )
        as_json = _netcheck(
            tmp_path,
            "--json",
            "--registry",
            format_endpoint(registry),
            "--relay",
            "KEY@" + format_endpoint(relay),
        )
    assert result.exit_code == 0, result.output
    assert "UDP over IPv4: yes" in result.output
    assert "IPv6: no IPv6 address for the registry or any relay" in result.output
    assert "mapping varies by destination: no" in result.output
    assert "MTU towards the registry: 1500 bytes" in result.output
    assert f"nearest relay: {format_endpoint(relay)}" in result.output
    assert "transport: udp" in result.output
    assert "port mapping: not checked" in result.output
    report = json.loads(as_json.output)
    assert report["udp_v4"] is True and report["udp_v6"] is None
    assert report["mapping_varies_by_destination"] is False
    assert report["mtu_to_registry"] == 1500
    assert report["nearest_relay"] == format_endpoint(relay)
    assert report["relays"][0]["rtt_ms"] is not None
    (public,) = report["public_v4"]
    assert public.startswith(LOOPBACK + ":")
    assert report["registry"][0]["public_endpoint"] == public
    assert report["transport"] == "udp" and report["proxy"] is None
    assert report["stream"] == {"works": False, "rtt_ms": None}


def test_when_nothing_answers_udp_the_stream_through_the_proxy_would_carry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://user:secret@127.0.0.1:9")
    with answering(silent=True) as registry:
        result = _netcheck(tmp_path, "--json", "--registry", format_endpoint(registry))
        text = _netcheck(tmp_path, "--registry", format_endpoint(registry))
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["udp_v4"] is False and report["public_v4"] == []
    assert report["mapping_varies_by_destination"] is None
    assert report["mtu_to_registry"] is None
    assert report["transport"] == "tcp"
    assert report["proxy"] == "http://user@127.0.0.1:9"
    assert "secret" not in result.output + text.output
    assert "UDP over IPv4: no" in text.output
    assert "transport: tcp (UDP gets no answer: the stream through http://user@127.0.0.1:9" in (
        text.output
    )


def test_the_registry_comes_from_pilotif_registry_as_the_deployed_node_has_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with answering() as registry:
        monkeypatch.setenv(REGISTRY_ENV, format_endpoint(registry))
        result = _netcheck(tmp_path, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["registry"][0]["endpoint"] == format_endpoint(registry)


def test_with_pilotif_registry_and_no_daemon_the_relays_come_from_the_node_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node's config (PILOTIF_REGISTRY) and its state (node.json: the relays its
    registry named last) are enough; a registry given on the command line may be another
    one, whose relays the cache does not know."""
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    with answering() as registry, answering() as relay:
        NodeCache(state_dir).save(
            NodeSnapshot(
                IPv4Address("100.64.0.2"),
                IPv4Network("100.64.0.0/10"),
                51820,
                (),
                relays=(RelayInfo(bytes(32), relay),),
            )
        )
        monkeypatch.setenv(REGISTRY_ENV, format_endpoint(registry))
        from_state = json.loads(_netcheck(tmp_path, "--json").output)
        monkeypatch.delenv(REGISTRY_ENV)
        given = _netcheck(tmp_path, "--json", "--registry", format_endpoint(registry))
    assert [r["endpoint"] for r in from_state["relays"]] == [format_endpoint(relay)]
    assert from_state["relays"][0]["rtt_ms"] is not None
    assert json.loads(given.output)["relays"] == []


def test_without_a_registry_or_a_node_it_says_what_to_give(tmp_path: Path) -> None:
    state_dir = str(tmp_path / "state")
    assert_one_line_error(pilotif("netcheck", "--state-dir", state_dir), "--registry HOST:PORT")
    error = json.loads(pilotif("netcheck", "--json", "--state-dir", state_dir).stdout)
    assert error["code"] == "not_running"
    assert "--registry HOST:PORT" in error["hint"]


@pytest.mark.parametrize("registry", ["nonsense", "127.0.0.1:99999", ",", "[::1"])
def test_a_bad_registry_is_one_line(tmp_path: Path, registry: str) -> None:
    state_dir = str(tmp_path / "state")
    assert_one_line_error(
        pilotif("netcheck", "--registry", registry, "--state-dir", state_dir), "--registry"
    )


def test_the_readable_report_of_a_symmetric_nat_with_a_port_mapping_and_no_ipv6_route() -> None:
    registry = Server(ServerKind.REGISTRY, ("198.18.0.1", 7946))
    registry_v6 = Server(ServerKind.REGISTRY, ("3fff::1", 7946))
    relays = [Server(ServerKind.RELAY, (f"198.18.0.{host}", 7947)) for host in (5, 6)]
    seen = [("198.18.0.12", port) for port in (40001, 40002, 40003)]
    udp = UdpReport(
        udp_v4=True,
        udp_v6=False,
        public_v4=tuple(seen),
        public_v6=(),
        mapping_varies=True,
        hairpinning=False,
        mtu=1280,
        servers=(
            ServerResult(registry, 3.0, seen[0]),
            ServerResult(registry_v6, None, None),
            ServerResult(relays[0], 9.5, seen[1]),
            ServerResult(relays[1], 1.5, seen[2]),
        ),
    )
    report = NetcheckReport(
        udp=udp,
        port_mapping=PortMapping("pcp", ("198.18.0.12", 51820), 7200, 51820),
        port_mapping_checked=True,
        stream=StreamCheck(True, 4.0),
        proxy=None,
        ipv6_route=False,
        ignored={},
    )
    lines = report_text(report).splitlines()
    for expected in (
        "  * UDP over IPv6: no (no IPv6 route on this host)",
        "  * public endpoint: 198.18.0.12:40001, 198.18.0.12:40002, 198.18.0.12:40003",
        "  * port mapping: pcp (mapped 198.18.0.12:51820, deleted)",
        "  * MTU towards the registry: 1280 bytes",
        "  * registry [3fff::1]:7946: no answer",
        "  * nearest relay: 198.18.0.6:7947",
        "      - 198.18.0.6:7947: 1.5 ms",
        "      - 198.18.0.5:7947: 9.5 ms",
    ):
        assert expected in lines, report_text(report)
    assert lines.index("      - 198.18.0.6:7947: 1.5 ms") < lines.index(
        "      - 198.18.0.5:7947: 9.5 ms"
    )
    assert any(line.startswith("  * mapping varies by destination: yes") for line in lines)
    as_json = report_json(report)
    assert as_json["port_mapping"] == {"protocol": "pcp", "external": "198.18.0.12:51820"}
    assert as_json["nearest_relay"] == "198.18.0.6:7947" and as_json["ipv6_route"] is False
