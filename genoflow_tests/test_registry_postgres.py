"""The registry and the DataManager behave the same on SQLite and on a real PostgreSQL server.

The server is started here, once for the module: ``initdb`` and ``postgres`` refuse to run as
root, so under root they run as the ``postgres`` user (created when missing) in a private folder
that user owns; the server listens on 127.0.0.1 on a free port, its unix socket inside that
folder, and is stopped by PID with SIGINT. Every test gets a database of its own.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from genoflow.storage.datamanager import DataManager
from genoflow.storage.layout import ArtifactKey
from genoflow.storage.locations import DataType, LocalLocation
from genoflow.storage.registry import Registry
from genoflow.storage.registry import replicas as replica_table
from genoflow.storage.upkeep import ReplicaUpkeep
from genoflow_tests.support.artifacts import (
    RELPATH,
    every_replica,
    flip_last_byte,
    local,
    publish_artifact,
    register_many,
    store,
    upload_artifact,
)
from genoflow_tests.support.postgres import running_server
from genoflow_tests.support.processes import race
from genoflow_tests.support.rows import row

pytestmark = pytest.mark.system  # starts a server (see pyproject markers)

PROCESSES = 4


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server for this module; yields its URL without a database name."""
    with running_server("full_page_writes=off") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty registry: a SQLite file, or a new database on the PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "registry.sqlite")
    server = request.getfixturevalue("postgres_server")
    name = f"registry_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return f"{server}/{name}"


@pytest.fixture
def manager(registry_url: str, tmp_path: Path) -> Iterator[DataManager]:
    opened = DataManager(registry_url, workdir=tmp_path / "work")
    yield opened
    opened.close()


@pytest.fixture
def lab(tmp_path: Path) -> LocalLocation:
    publish_artifact(tmp_path / "lab")
    return LocalLocation("lab-cache", tmp_path / "lab", deployment="lab")


def test_registry_uses_the_dialect_of_its_url(registry_url: str) -> None:
    registry = Registry(registry_url)

    expected = "postgresql" if registry_url.startswith("postgresql") else "sqlite"
    assert registry.engine.dialect.name == expected
    registry.close()


def test_registering_manifest_rows_twice_adds_them_once(registry_url: str) -> None:
    registry = Registry(registry_url)

    assert registry.register([row(1), row(2)]) == 2
    assert registry.register([row(1), row(2)]) == 0
    assert registry.md5s() == [f"{1:032x}", f"{2:032x}"]
    registry.close()


def test_a_registered_replica_comes_back_with_its_location(
    manager: DataManager, lab: LocalLocation
) -> None:
    replica = manager.register_path(lab, RELPATH, RELPATH)
    manager.register_path(lab, RELPATH, RELPATH)

    assert [r.id for r in manager.get_data_locations(RELPATH)] == [replica.id]
    assert (replica.deployment, replica.kind, replica.is_local) == ("lab", "local", True)


def test_source_choice_prefers_the_destination_deployment_then_this_node(
    tmp_path: Path, manager: DataManager, lab: LocalLocation
) -> None:
    manager.register_path(lab, RELPATH, RELPATH)
    bucket = store(tmp_path, "bucket", "cloud")
    upload_artifact(bucket, lab.path(RELPATH))
    manager.register_path(bucket, RELPATH, RELPATH)

    assert manager.get_source_location(RELPATH, "cloud").location == "bucket"
    assert manager.get_source_location(RELPATH, "hpc").location == "lab-cache"


def test_invalidation_cascades_to_links_and_hides_them(
    tmp_path: Path, manager: DataManager, lab: LocalLocation
) -> None:
    primary = manager.register_path(lab, RELPATH, RELPATH)
    [link] = manager.transfer_data(lab, RELPATH, [local(tmp_path, "node", "lab")], RELPATH)
    assert link.data_type is DataType.SYMBOLIC_LINK

    manager.invalidate_location(lab, RELPATH)

    assert manager.get_data_locations(RELPATH) == []
    every = ReplicaUpkeep(manager).all_replicas(readable=False)
    assert {r.id for r in every} == {primary.id, link.id}


def test_fetch_falls_back_to_a_valid_replica_and_invalidates_the_corrupt_one(
    tmp_path: Path, manager: DataManager, lab: LocalLocation
) -> None:
    manager.register_path(lab, RELPATH, RELPATH)
    [copy] = manager.transfer_data(lab, RELPATH, [store(tmp_path, "bucket", "cloud")], RELPATH)
    flip_last_byte(lab.path(RELPATH) / "peaks.bed.gz")

    fetched = ReplicaUpkeep(manager).fetch(RELPATH, local(tmp_path, "node", "lab"))

    assert ReplicaUpkeep(manager).verify(fetched) == []
    assert [r.location for r in manager.get_data_locations(RELPATH)] == ["bucket", "node"]
    assert copy.location == "bucket"


def test_reclaim_deletes_an_old_pending_replica_of_another_host(
    tmp_path: Path, manager: DataManager, lab: LocalLocation
) -> None:
    manager.register_path(lab, RELPATH, RELPATH)
    old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    with manager.context.registry.engine.begin() as connection:
        connection.execute(
            sa.update(replica_table).values(state="pending", owner="another-host:1", updated_at=old)
        )

    assert ReplicaUpkeep(manager).reclaim_pending(max_age=3 * 3600) == []
    assert len(ReplicaUpkeep(manager).reclaim_pending(max_age=3600)) == 1
    assert every_replica(manager) == []


def test_concurrent_registration_from_several_processes_succeeds(
    registry_url: str, tmp_path: Path
) -> None:
    for md5 in range(8):
        key = ArtifactKey("intervals", f"{md5:032x}", "sorted", "1")
        publish_artifact(tmp_path / "shared", key=key)
    DataManager(registry_url, workdir=tmp_path / "work").close()  # tables exist before the race
    outcomes = race(
        register_many, [(registry_url, str(tmp_path), n) for n in range(PROCESSES)]
    ).outcomes

    assert sorted(outcomes) == [("ok", n) for n in range(PROCESSES)], outcomes
    manager = DataManager(registry_url, workdir=tmp_path / "work")
    assert len(ReplicaUpkeep(manager).all_replicas()) == 8 * (1 + PROCESSES)
    manager.close()
