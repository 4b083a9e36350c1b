"""The node's trust state and its cache on disk: what they keep, the older formats they
still read, and a clear error (naming the file) for a file it cannot use."""

import json
import logging
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from pilotif.node.cache import NODE_CACHE_FILE, CachedPeer, NodeCache, NodeSnapshot
from pilotif.node.trust import TrustFiles, TrustRecord
from pilotif.util.files import StateFileError
from pilotif.util.logs import _EventFormatter
from pilotif.wg.cookie import source_bytes
from pilotif.wg.events import RelayEndpoint
from pilotif.wg.keys import encode_key

KEY_A, KEY_B = bytes(range(32)), bytes(range(1, 33))


def test_a_record_survives_a_save_and_load(tmp_path: Path) -> None:
    files = TrustFiles(tmp_path)
    record = TrustRecord(
        registry_key=KEY_A,
        pins={"beta": KEY_B},
        consented={KEY_B},
        outbox={KEY_A: ("trust_request", {"peer": encode_key(KEY_A), "message": "hi"})},
    )
    files.save(record)
    assert files.load() == record
    assert (tmp_path / "peers.json").stat().st_mode & 0o777 == 0o600


def test_the_first_peers_format_counts_as_pins_with_consent(tmp_path: Path) -> None:
    (tmp_path / "peers.json").write_text(json.dumps({"beta": encode_key(KEY_B)}))
    record = TrustFiles(tmp_path).load()
    assert record.pins == {"beta": KEY_B}
    assert record.consented == {KEY_B}


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("peers.json", "{not json"),
        ("peers.json", "[1, 2]"),
        ("peers.json", '{"pins": {"beta": "short"}}'),
        ("peers.json", '{"pins": {}, "outbox": {"short": {"op": "untrust", "fields": {}}}}'),
        ("peers.json", '{"pins": {}, "outbox": []}'),
        ("registry.pub", "garbage"),
        ("registry.pub", "\xff"),
    ],
)
def test_a_corrupted_file_is_one_error_naming_it(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(StateFileError) as error:
        TrustFiles(tmp_path).load()
    assert str(tmp_path / name) in str(error.value)


def test_a_state_file_behind_a_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text(encode_key(KEY_A))
    (tmp_path / "registry.pub").symlink_to(target)
    with pytest.raises(StateFileError, match="symbolic link"):
        TrustFiles(tmp_path).load()


def test_forgetting_a_key_drops_its_pin_and_consent() -> None:
    record = TrustRecord(pins={"beta": KEY_B, "gamma": KEY_A}, consented={KEY_A, KEY_B})
    record.forget(KEY_B)
    assert record.pins == {"gamma": KEY_A}
    assert record.consented == {KEY_A}


def test_a_relayed_source_binds_a_cookie_to_the_peer_key() -> None:
    """Issue 9's crash: cookie code took the relay's fake ("relay", n) endpoint."""
    assert source_bytes(RelayEndpoint(KEY_A)) == KEY_A
    assert source_bytes(RelayEndpoint(KEY_A)) != source_bytes(RelayEndpoint(KEY_B))


def test_a_log_field_with_a_newline_stays_on_one_line() -> None:
    record = logging.LogRecord("pilotif", logging.INFO, "", 0, "trust_requested", None, None)
    record.fields = {"message": "hi\n2026-01-01 info trust_established peer=evil"}
    line = _EventFormatter(as_json=False).format(record)
    assert "\n" not in line
    record.fields = {"network": Path("/x"), "n": 1}
    assert json.loads(_EventFormatter(as_json=True).format(record))["network"] == "/x"


def test_the_node_cache_keeps_granted_tags_and_networks_and_reads_older_files(
    tmp_path: Path,
) -> None:
    """A node that starts without its registry applies its port policy to cached peers
    by the tags the operator granted them, so node.json keeps those (and networks)."""
    peer = CachedPeer(
        "beta",
        KEY_B,
        IPv4Address("100.64.0.2"),
        ("own",),
        ("198.18.0.12", 51820),
        granted_tags=("workers",),
        network_name="fleet",
    )
    snapshot = NodeSnapshot(
        IPv4Address("100.64.0.1"), IPv4Network("100.64.0.0/10"), 51820, (peer,), "fleet"
    )
    NodeCache(tmp_path).save(snapshot)
    assert NodeCache(tmp_path).load() == snapshot
    older = json.loads((tmp_path / NODE_CACHE_FILE).read_text())
    del older["network_name"], older["peers"][0]["granted_tags"], older["peers"][0]["network_name"]
    (tmp_path / NODE_CACHE_FILE).write_text(json.dumps(older))
    loaded = NodeCache(tmp_path).load()
    assert loaded is not None and loaded.network_name is None
    assert loaded.peers[0].granted_tags == () and loaded.peers[0].network_name is None
