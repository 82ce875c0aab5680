"""The DataManager's public surface is StreamFlow's, and ReplicaUpkeep does genoflow's own work.

StreamFlow's ``streamflow.core.data.DataManager`` declares ``context`` and the methods
``close``, ``get_data_locations``, ``get_source_location``, ``invalidate_location``,
``register_path``, ``register_relation`` and ``transfer_data`` (plus ``get_schema``, inherited
from its plugin-schema base, which genoflow has no use for). Pinning the set here means the API
cannot grow silently: a new public method belongs in ``ReplicaUpkeep`` or must be argued for.
"""

from __future__ import annotations

import datetime as dt
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from genoflow.storage import locations, transfer
from genoflow.storage.cache import Cache
from genoflow.storage.context import StorageContext
from genoflow.storage.datamanager import DataManager
from genoflow.storage.locations import DataType, LocalLocation
from genoflow.storage.registry import Registry
from genoflow.storage.registry import replicas as replica_table
from genoflow.storage.replicas import ReplicaState
from genoflow.storage.upkeep import NoValidReplica, ReplicaUpkeep
from genoflow_tests.support.artifacts import (
    KEY,
    RELPATH,
    FolderStore,
    flip_last_byte,
    local,
    publish_artifact,
    store,
    upload_artifact,
)

STREAMFLOW_DATA_MANAGER = {
    "context",
    "close",
    "get_data_locations",
    "get_source_location",
    "invalidate_location",
    "register_path",
    "register_relation",
    "transfer_data",
}


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[DataManager]:
    with DataManager(tmp_path / "registry.sqlite", workdir=tmp_path / "work") as opened:
        yield opened


@pytest.fixture
def upkeep(manager: DataManager) -> ReplicaUpkeep:
    return ReplicaUpkeep(manager)


@pytest.fixture
def lab(tmp_path: Path) -> LocalLocation:
    publish_artifact(tmp_path / "lab")
    return LocalLocation("lab-cache", tmp_path / "lab", deployment="lab")


def in_bucket(tmp_path: Path, name: str = "bucket") -> FolderStore:
    """A store holding an unregistered copy of the test artifact."""
    bucket = store(tmp_path, name, "cloud")
    upload_artifact(bucket, publish_artifact(tmp_path / f"build-{name}"))
    return bucket


def public_names(value: object) -> set[str]:
    return {name for name in dir(value) if not name.startswith("_")}


def test_the_data_manager_exposes_exactly_streamflows_public_names(manager: DataManager) -> None:
    assert public_names(manager) == STREAMFLOW_DATA_MANAGER


def test_the_data_manager_is_a_context_manager_that_closes_only_a_registry_it_opened(
    tmp_path: Path,
) -> None:
    with Registry(tmp_path / "registry.sqlite") as registry:
        with DataManager(registry, workdir=tmp_path / "work") as manager:
            assert manager.context.registry is registry
        assert registry.rows() == []  # still open after the manager closed


def signatures() -> Iterator[tuple[str, inspect.Signature]]:
    owners = [DataManager, ReplicaUpkeep, StorageContext, LocalLocation, FolderStore]
    for owner in owners:
        for name, function in inspect.getmembers(owner, inspect.isfunction):
            yield f"{owner.__name__}.{name}", inspect.signature(function)
    for module in (transfer, locations):
        for name, function in inspect.getmembers(module, inspect.isfunction):
            if function.__module__ == module.__name__:
                yield f"{module.__name__}.{name}", inspect.signature(function)


def test_a_parameter_named_path_is_always_a_str_path_within_a_location() -> None:
    wrong = [
        f"{where}: path is {parameter.annotation}"
        for where, signature in signatures()
        for parameter in signature.parameters.values()
        if parameter.name == "path" and parameter.annotation != "str"
    ]
    assert wrong == []


def test_the_logical_path_is_named_relpath_wherever_it_is_taken() -> None:
    takers = [
        DataManager.get_data_locations,
        DataManager.get_source_location,
        ReplicaUpkeep.fetch,
        ReplicaUpkeep.sources,
    ]
    assert [list(inspect.signature(f).parameters)[1] for f in takers] == ["relpath"] * 4


def test_get_data_locations_finds_a_copy_by_relpath_whatever_its_path_there(
    tmp_path: Path, manager: DataManager, lab: LocalLocation
) -> None:
    manager.register_path(lab, RELPATH, RELPATH)
    bucket = store(tmp_path, "bucket", "cloud")
    [copy] = manager.transfer_data(lab, RELPATH, [bucket], "mirrored/copy")

    found = manager.get_data_locations(RELPATH, location_name="bucket")

    assert found == [copy]
    assert (copy.path, copy.relpath) == ("mirrored/copy", RELPATH)
    assert manager.get_data_locations("mirrored/copy") == []


def test_upkeep_fetch_copies_from_a_valid_source_and_registers_the_copy(
    tmp_path: Path, manager: DataManager, upkeep: ReplicaUpkeep, lab: LocalLocation
) -> None:
    manager.register_path(lab, RELPATH, RELPATH)
    node = local(tmp_path, "node", "hpc")

    copy = upkeep.fetch(RELPATH, node, writable=True)

    assert (copy.location, copy.path, copy.data_type) == ("node", RELPATH, DataType.PRIMARY)
    assert Cache(node.root).lookup(KEY).verify() == []


def test_upkeep_fetch_invalidates_a_corrupt_source_and_uses_the_next(
    tmp_path: Path, manager: DataManager, upkeep: ReplicaUpkeep, lab: LocalLocation
) -> None:
    manager.register_path(lab, RELPATH, RELPATH)
    manager.register_path(in_bucket(tmp_path), RELPATH, RELPATH)
    flip_last_byte(lab.path(RELPATH) / "peaks.bed.gz")
    node = local(tmp_path, "node", "lab")

    upkeep.fetch(RELPATH, node)

    assert upkeep.replica_at("lab-cache", RELPATH).data_type is DataType.INVALID
    assert Cache(node.root).lookup(KEY).verify() == []


def test_upkeep_sources_put_first_the_replica_get_source_location_picks(
    tmp_path: Path, manager: DataManager, upkeep: ReplicaUpkeep, lab: LocalLocation
) -> None:
    manager.register_path(lab, RELPATH, RELPATH)
    manager.register_path(in_bucket(tmp_path), RELPATH, RELPATH)

    ranked = upkeep.sources(RELPATH, "cloud")

    assert [r.location for r in ranked] == ["bucket", "lab-cache"]
    assert manager.get_source_location(RELPATH, "cloud") == ranked[0]


def test_upkeep_verify_finds_a_flipped_byte_only_with_a_full_check(
    manager: DataManager, upkeep: ReplicaUpkeep, lab: LocalLocation
) -> None:
    replica = manager.register_path(lab, RELPATH, RELPATH)
    flip_last_byte(lab.path(RELPATH) / "peaks.bed.gz")

    assert upkeep.verify(replica, full=False) == []
    assert upkeep.verify(replica)[0].startswith("peaks.bed.gz has md5")


def test_upkeep_repair_restores_a_damaged_replica_from_a_valid_one(
    tmp_path: Path, manager: DataManager, upkeep: ReplicaUpkeep, lab: LocalLocation
) -> None:
    bad = manager.register_path(lab, RELPATH, RELPATH)
    manager.register_path(in_bucket(tmp_path), RELPATH, RELPATH)
    flip_last_byte(lab.path(RELPATH) / "peaks.bed.gz")

    outcome = upkeep.repair(bad)

    assert outcome.problems and outcome.restored is not None
    assert upkeep.verify(outcome.restored) == []


def test_upkeep_repair_with_no_valid_source_asks_for_a_rebuild(
    manager: DataManager, upkeep: ReplicaUpkeep, lab: LocalLocation
) -> None:
    bad = manager.register_path(lab, RELPATH, RELPATH)
    flip_last_byte(lab.path(RELPATH) / "peaks.bed.gz")

    with pytest.raises(NoValidReplica, match="no valid replica is left"):
        upkeep.repair(bad)
    assert manager.get_data_locations(RELPATH) == []


def test_upkeep_sees_invalid_replicas_that_the_data_manager_hides(
    tmp_path: Path, manager: DataManager, upkeep: ReplicaUpkeep, lab: LocalLocation
) -> None:
    manager.register_path(lab, RELPATH, RELPATH)
    bucket = manager.register_path(in_bucket(tmp_path), RELPATH, RELPATH)
    manager.invalidate_location(lab, RELPATH)

    assert manager.get_data_locations(RELPATH) == [bucket]
    assert upkeep.replica_at("lab-cache", RELPATH).data_type is DataType.INVALID
    assert [r.location for r in upkeep.all_replicas(readable=False)] == ["lab-cache", "bucket"]
    assert upkeep.all_replicas() == [bucket]
    assert upkeep.all_replicas(location_name="bucket", readable=False) == [bucket]


def test_upkeep_set_aside_removes_an_invalid_local_folder_and_nothing_else(
    manager: DataManager, upkeep: ReplicaUpkeep, lab: LocalLocation
) -> None:
    primary = manager.register_path(lab, RELPATH, RELPATH)
    upkeep.set_aside(primary)
    assert lab.path(RELPATH).is_dir()

    manager.invalidate_location(lab, RELPATH)
    upkeep.set_aside(upkeep.replica_at("lab-cache", RELPATH))

    assert not lab.path(RELPATH).exists()


def test_upkeep_reclaims_an_old_pending_replica_of_another_host(
    tmp_path: Path, manager: DataManager, upkeep: ReplicaUpkeep, lab: LocalLocation
) -> None:
    manager.register_path(lab, RELPATH, RELPATH)
    bucket = store(tmp_path, "bucket", "cloud")
    manager.transfer_data(lab, RELPATH, [bucket], RELPATH)
    old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    with manager.context.registry.engine.begin() as connection:
        connection.execute(
            sa.update(replica_table)
            .where(replica_table.c.path == RELPATH)
            .values(state=str(ReplicaState.PENDING), owner="another-host:4242", updated_at=old)
        )

    assert upkeep.reclaim_pending(max_age=3 * 3600) == []
    assert len(upkeep.reclaim_pending(max_age=3600)) == 2
    assert upkeep.all_replicas(readable=False) == []
    assert lab.path(RELPATH).is_dir()  # a copy whose marker is there is never deleted
