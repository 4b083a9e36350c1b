"""The registry on PostgreSQL as an operator meets it: replicas that share one identity
kept in the database, a replica with another key refused, and one clear line for a
database that cannot be used (the store itself is tested on both engines elsewhere)."""

import time
from ipaddress import IPv4Network
from pathlib import Path

import pytest
from pilotif_lab.postgres import ThrowawayPostgres

from pilotif.registry.database import DatabaseError, without_password
from pilotif.registry.server import REGISTRY_KEY_FILE, RegistryOptions, _open_store
from pilotif.registry.store import Store
from pilotif.util.files import write_private_file
from pilotif.wg.crypto import generate_private_key
from pilotif.wg.keys import encode_key
from tests.unit.test_cli import assert_one_line_error, pilotif

NETWORK = IPv4Network("100.64.0.0/10")


@pytest.fixture
def database(postgres_server: ThrowawayPostgres, request: pytest.FixtureRequest) -> str:
    return postgres_server.create_database(f"identity_{request.node.name[-40:].lower()}")


def _replica(state_dir: Path, database: str) -> bytes:
    store, key = _open_store(state_dir, RegistryOptions(NETWORK, database=database))
    store.close()
    return key


def test_the_first_replica_creates_the_identity_and_the_others_load_it(
    tmp_path: Path, database: str
) -> None:
    first = _replica(tmp_path / "a", database)
    assert _replica(tmp_path / "b", database) == first
    assert _replica(tmp_path / "a", database) == first
    assert not (tmp_path / "b" / REGISTRY_KEY_FILE).exists(), "the key stays in the database"


def test_a_registry_moving_to_postgresql_keeps_its_key(tmp_path: Path, database: str) -> None:
    key = generate_private_key()
    write_private_file(tmp_path / "a" / REGISTRY_KEY_FILE, encode_key(key) + "\n")
    assert _replica(tmp_path / "a", database) == key
    assert _replica(tmp_path / "b", database) == key


def test_a_replica_with_another_key_is_refused_and_changes_nothing(
    tmp_path: Path, database: str
) -> None:
    shared = _replica(tmp_path / "a", database)
    stray = tmp_path / "b" / REGISTRY_KEY_FILE
    write_private_file(stray, encode_key(generate_private_key()) + "\n")
    with pytest.raises(DatabaseError, match="another key"):
        _replica(tmp_path / "b", database)
    assert _replica(tmp_path / "c", database) == shared


def test_an_unreachable_database_is_one_line_at_start(tmp_path: Path) -> None:
    url = f"postgresql://pilotif@/registry?host={tmp_path}&port=1"
    result = pilotif(
        "registry", "--database", url, "--listen", "127.0.0.1:17946", "--state-dir", str(tmp_path)
    )
    assert_one_line_error(result, "cannot reach the database")
    assert not (tmp_path / "registry.db").exists()


def test_a_database_that_is_not_postgresql_is_refused_at_once(tmp_path: Path) -> None:
    result = pilotif("registry", "--database", "sqlite:///x.db", "--state-dir", str(tmp_path))
    assert_one_line_error(result, "postgresql://")


def _drop_connections(server: ThrowawayPostgres, url: str) -> None:
    """What a server restart does to its clients: every connection to the database ends."""
    name = url.split("@/", 1)[1].split("?")[0]
    server.psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        f" WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    )


def test_a_store_whose_connections_were_dropped_connects_again(
    postgres_server: ThrowawayPostgres, database: str
) -> None:
    store = Store(database, NETWORK)
    try:
        assert store.listen("pilotif_push") is not None
        store.register(generate_private_key(), "alice", (), 1.0)
        _drop_connections(postgres_server, database)
        with pytest.raises(DatabaseError, match=r"failed|unreachable"):
            store.node_by_hostname("alice")
        with pytest.raises(DatabaseError, match="notifications"):
            # The listening connection hears of its end when the server's goodbye arrives.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                store.notifications()
                time.sleep(0.05)
        # The next use after a second connects again; so does listening.
        time.sleep(1.1)
        found = store.node_by_hostname("alice")
        assert found is not None and found.hostname == "alice"
        assert store.listen("pilotif_push") is not None
        store.leave_notes("pilotif_push", ["me"], "hello", 2.0)
        deadline = time.monotonic() + 5
        heard: list[str] = []
        while not heard and time.monotonic() < deadline:
            time.sleep(0.05)
            heard = store.notifications()
        assert heard == [""], "the notification only wakes: the note is in the database"
        assert store.take_notes("me") == ["hello"]
    finally:
        store.close()


@pytest.mark.parametrize(
    ("location", "logged"),
    [
        ("postgresql://reg:s3cret@db.example/pilotif", "postgresql://reg:***@db.example/pilotif"),
        (
            "postgresql://reg@db.example/pilotif?password=s3cret&sslmode=require",
            "postgresql://reg@db.example/pilotif?password=***&sslmode=require",
        ),
        (
            "postgres://db.example/p?sslmode=require&sslpassword=s3cret&Password=s3cret",
            "postgres://db.example/p?sslmode=require&sslpassword=***&Password=***",
        ),
        (
            "postgresql://reg:s3cret@/pilotif?host=/run/pg&port=5432",
            "postgresql://reg:***@/pilotif?host=/run/pg&port=5432",
        ),
        ("host=db dbname=p password=s3cret user=reg", "host=db dbname=p password=*** user=reg"),
        ("host=db password = 's3 \\' cret' user=reg", "host=db password = *** user=reg"),
        ("postgresql://reg@db.example/pilotif", "postgresql://reg@db.example/pilotif"),
    ],
)
def test_a_database_location_is_logged_without_its_password(location: str, logged: str) -> None:
    assert without_password(location) == logged
    assert "s3" not in without_password(location)
