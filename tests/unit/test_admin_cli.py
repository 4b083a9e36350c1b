"""`pilotif registry admin` as an operator meets it: networks, join keys, nodes and
tags on the registry's database, JSON for scripts, and one clear line for bad input.
No root, no registry running (the commands open its database)."""

import json
import time
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest

from pilotif.registry.joinkey import parse_join_key
from pilotif.registry.store import DB_FILE_NAME, Store
from pilotif.wg.crypto import generate_private_key, public_key
from tests.unit.test_cli import assert_one_line_error, pilotif

NETWORK = IPv4Network("100.64.0.0/10")


@pytest.fixture
def registry(registry_db: str | Path) -> tuple[str, str]:
    """How `registry admin` finds a registry's database holding alpha and beta: its
    state dir (SQLite) or its --database (PostgreSQL)."""
    store = Store(registry_db, NETWORK)
    for name in ("alpha", "beta"):
        store.register(public_key(generate_private_key()), name, ("own",), time.time())
    store.close()
    if isinstance(registry_db, Path):
        return ("--state-dir", str(registry_db.parent))
    return ("--database", registry_db)


def admin(registry: tuple[str, str], *args: str) -> Any:
    result = pilotif("registry", "admin", *registry, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_key_is_created_listed_and_revoked_and_its_secret_is_never_listed(
    registry: tuple[str, str],
) -> None:
    admin(registry, "network", "create", "fleet", "--closed")
    created = admin(
        registry,
        "key",
        "create",
        "--tags",
        "team,gpu",
        "--network",
        "fleet",
        "--reusable",
        "--expires",
        "7d",
    )
    assert parse_join_key(created["key"]) is not None
    assert (created["tags"], created["network"], created["reusable"]) == (
        ["team", "gpu"],
        "fleet",
        True,
    )
    assert created["expires"] == pytest.approx(time.time() + 7 * 86_400, abs=60)
    listed = admin(registry, "key", "list")
    assert [k["id"] for k in listed] == [created["id"]]
    assert created["key"] not in json.dumps(listed)
    assert admin(registry, "key", "revoke", created["id"])["revoked"] is True
    assert admin(registry, "key", "list")[0]["revoked"] is True
    assert admin(registry, "network", "list") == [
        {
            "name": "fleet",
            "closed": True,
            "created": pytest.approx(time.time(), abs=60),
            "members": 0,
        }
    ]


def test_the_text_form_prints_the_key_alone(registry: tuple[str, str]) -> None:
    result = pilotif("registry", "admin", *registry, "key", "create")
    assert result.returncode == 0
    assert parse_join_key(result.stdout.strip()) is not None


def test_nodes_are_listed_renamed_tagged_and_removed(registry: tuple[str, str]) -> None:
    assert [n["hostname"] for n in admin(registry, "node", "list")] == ["alpha", "beta"]
    assert admin(registry, "tag", "grant", "alpha", "team")["granted_tags"] == ["team"]
    assert admin(registry, "node", "rename", "alpha", "alpha-2")["hostname"] == "alpha-2"
    assert admin(registry, "tag", "revoke", "alpha-2", "team")["granted_tags"] == []
    admin(registry, "node", "remove", "beta")
    assert [n["hostname"] for n in admin(registry, "node", "list")] == ["alpha-2"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("key", "create", "--expires", "soon"), ("--expires", "duration")),
        (("key", "create", "--expires", "0s"), ("--expires",)),
        (("key", "create", "--network", "nowhere"), ("nowhere",)),
        (("key", "create", "--tags", "not a label"), ("--tags", "DNS label")),
        (("key", "revoke", "00000000"), ("00000000",)),
        (("network", "create", "bad_name!"), ("NAME", "DNS label")),
        (("node", "remove", "nobody"), ("nobody",)),
        (("node", "rename", "alpha", "beta"), ("beta",)),
        (("tag", "grant", "nobody", "team"), ("nobody",)),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    registry: tuple[str, str], args: tuple[str, ...], words: tuple[str, ...]
) -> None:
    before = admin(registry, "node", "list"), admin(registry, "key", "list")
    assert_one_line_error(pilotif("registry", "admin", *registry, *args), *words)
    assert (admin(registry, "node", "list"), admin(registry, "key", "list")) == before


def test_an_existing_network_is_refused(registry: tuple[str, str]) -> None:
    admin(registry, "network", "create", "fleet")
    result = pilotif("registry", "admin", *registry, "network", "create", "fleet", "--json")
    assert result.returncode != 0
    assert json.loads(result.stdout)["code"] == "network_exists"


def test_a_state_dir_without_a_registry_is_one_line(tmp_path: Path) -> None:
    assert_one_line_error(
        pilotif("registry", "admin", "--state-dir", str(tmp_path), "key", "list"),
        "no registry database",
    )
    assert not (tmp_path / DB_FILE_NAME).exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--join-key", "pjk_nothex00_x"), ("--join-key",)),
        (("--auto-approve", "friends"), ("--auto-approve",)),
    ],
)
def test_up_refuses_a_bad_join_key_or_policy(
    tmp_path: Path, args: tuple[str, ...], words: tuple[str, ...]
) -> None:
    result = pilotif(
        "up",
        "--registry",
        "198.18.0.1:7946",
        "--hostname",
        "a",
        *args,
        "--state-dir",
        str(tmp_path / "s"),
    )
    assert_one_line_error(result, *words)


def test_admin_needs_a_state_dir_or_a_database_and_only_a_postgresql_url(
    tmp_path: Path,
) -> None:
    assert_one_line_error(pilotif("registry", "admin", "key", "list"), "--database")
    assert_one_line_error(
        pilotif("registry", "admin", "--database", "mysql://x/y", "key", "list"), "postgresql://"
    )


def test_registry_refuses_a_bad_expiry(tmp_path: Path) -> None:
    assert_one_line_error(
        pilotif("registry", "--expire-after", "forever", "--state-dir", str(tmp_path)),
        "--expire-after",
    )
