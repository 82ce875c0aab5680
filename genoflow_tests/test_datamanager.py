"""The DataManager: replica registration, source choice, verified transfers, repair and reclaim."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from genoflow.core.errors import StorageError
from genoflow.storage import replicas
from genoflow.storage.cache import MARKER, Cache
from genoflow.storage.datamanager import DataManager
from genoflow.storage.layout import ArtifactKey
from genoflow.storage.locations import DataType, LocalLocation, ObjectInfo
from genoflow.storage.registry import artifacts as artifact_table
from genoflow.storage.registry import replicas as replica_table
from genoflow.storage.replicas import ReplicaState
from genoflow.storage.transfer import BadReplica
from genoflow.storage.upkeep import ReplicaUpkeep
from genoflow_tests.support.artifacts import (
    FILES,
    KEY,
    RELPATH,
    FailingMarkerLocal,
    FailingMarkerStore,
    FolderStore,
    every_replica,
    flip_last_byte,
    local,
    publish_artifact,
    register_many,
    store,
    upload_artifact,
)
from genoflow_tests.support.processes import race

PROCESSES = 4


class DamagingStore(FolderStore):
    """A store that garbles the last byte of every data object it receives."""

    def put(self, src: Path, path: str, *, if_absent: bool = False) -> ObjectInfo:
        info = super().put(src, path, if_absent=if_absent)
        if not path.endswith(MARKER):
            flip_last_byte(self.file(path))
        return self.stat(path) or info


class RivalStore(FolderStore):
    """A store where another writer publishes the same artifact just before our marker lands."""

    rival: Path

    def put(self, src: Path, path: str, *, if_absent: bool = False) -> ObjectInfo:
        if path.endswith(MARKER) and if_absent:
            super().put(self.rival / MARKER, path, if_absent=True)
        return super().put(src, path, if_absent=if_absent)


class StallingStore(FolderStore):
    """Announces that the data objects are written, then hangs before the marker (to be killed)."""

    def put(self, src: Path, path: str, *, if_absent: bool = False) -> ObjectInfo:
        if path.endswith(MARKER):
            (self.folder.parent / "data-written").touch()
            time.sleep(600)
        return super().put(src, path, if_absent=if_absent)


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[DataManager]:
    opened = DataManager(tmp_path / "registry.sqlite", workdir=tmp_path / "work")
    yield opened
    opened.close()


@pytest.fixture
def lab(tmp_path: Path) -> LocalLocation:
    publish_artifact(tmp_path / "lab")
    return LocalLocation("lab-cache", tmp_path / "lab", deployment="lab")


def stored_in(location: FolderStore, tmp_path: Path, path: str = RELPATH) -> FolderStore:
    """``location`` holding a copy of the test artifact at ``path`` (not registered)."""
    upload_artifact(location, publish_artifact(tmp_path / f"build-{location.name}"), path)
    return location


def test_register_path_records_an_available_primary_replica(
    manager: DataManager, lab: LocalLocation
) -> None:
    replica = manager.register_path(lab, RELPATH, RELPATH)

    assert (replica.location, replica.deployment, replica.kind) == ("lab-cache", "lab", "local")
    assert (replica.data_type, replica.state) == (DataType.PRIMARY, ReplicaState.AVAILABLE)
    assert replica.generation == lab.stat(f"{RELPATH}/{MARKER}").generation
    assert manager.get_data_locations(RELPATH) == [replica]


def test_the_artifact_row_records_the_facts_of_its_marker(
    manager: DataManager, lab: LocalLocation
) -> None:
    manager.register_path(lab, RELPATH, RELPATH)

    with manager.context.registry.engine.begin() as connection:
        row = connection.execute(sa.select(artifact_table)).one()
    facts = (row.key, row.source_md5, row.asset, row.version, row.processor, row.size)
    size = sum(len(data) for data in FILES.values())
    assert facts == (RELPATH, KEY.md5, "intervals/sorted", "1", "tests.publish", size)
    assert row.checksum == Cache(lab.root).lookup(KEY).checksum


def test_register_path_twice_keeps_one_replica(manager: DataManager, lab: LocalLocation) -> None:
    manager.register_path(lab, RELPATH, RELPATH)
    manager.register_path(lab, RELPATH, RELPATH)

    assert len(ReplicaUpkeep(manager).all_replicas(readable=False)) == 1


def test_register_path_refuses_a_folder_without_its_marker(
    manager: DataManager, lab: LocalLocation
) -> None:
    (lab.path(RELPATH) / MARKER).unlink()

    with pytest.raises(BadReplica, match=r"no genoflow\.json"):
        manager.register_path(lab, RELPATH, RELPATH)
    assert ReplicaUpkeep(manager).all_replicas(readable=False) == []


def test_register_path_refuses_another_build_of_a_registered_artifact(
    tmp_path: Path, manager: DataManager, lab: LocalLocation
) -> None:
    manager.register_path(lab, RELPATH, RELPATH)
    publish_artifact(tmp_path / "other", {"peaks.bed.gz": b"different bytes"})

    with pytest.raises(StorageError, match="the registry has"):
        manager.register_path(local(tmp_path, "other", "lab"), RELPATH, RELPATH)


def test_register_path_refuses_a_location_name_taken_by_another_root(
    tmp_path: Path, manager: DataManager, lab: LocalLocation
) -> None:
    manager.register_path(lab, RELPATH, RELPATH)
    publish_artifact(tmp_path / "elsewhere")
    impostor = LocalLocation("lab-cache", tmp_path / "elsewhere", deployment="lab")

    with pytest.raises(StorageError, match="already registered"):
        manager.register_path(impostor, RELPATH, RELPATH)


def test_get_data_locations_filters_by_deployment_location_and_kind(
    tmp_path: Path, manager: DataManager, lab: LocalLocation
) -> None:
    manager.register_path(lab, RELPATH, RELPATH)
    bucket = manager.register_path(
        stored_in(store(tmp_path, "bucket", "cloud"), tmp_path), RELPATH, RELPATH
    )
    mirror = stored_in(store(tmp_path, "mirror", "cloud", kind="https"), tmp_path)
    manager.register_path(mirror, RELPATH, RELPATH)

    assert [r.location for r in manager.get_data_locations(RELPATH, deployment="cloud")] == [
        "bucket",
        "mirror",
    ]
    assert manager.get_data_locations(RELPATH, location_name="bucket") == [bucket]
    assert [r.location for r in manager.get_data_locations(RELPATH, location_type="https")] == [
        "mirror"
    ]
    assert manager.get_data_locations("intervals/00/other/sorted/v1") == []


def test_invalid_replicas_are_never_returned(manager: DataManager, lab: LocalLocation) -> None:
    manager.register_path(lab, RELPATH, RELPATH)

    manager.invalidate_location(lab, RELPATH)

    assert manager.get_data_locations(RELPATH) == []
    assert every_replica(manager) == [("lab-cache", "INVALID", "available")]


def test_pending_replicas_are_never_returned(manager: DataManager, lab: LocalLocation) -> None:
    with manager.context.registry.engine.begin() as connection:
        replicas.begin_pending(
            connection,
            artifact_id=replicas.ensure_artifact(connection, RELPATH, None),
            location_id=replicas.ensure_location(connection, lab),
            path=RELPATH,
        )

    assert manager.get_data_locations(RELPATH) == []
    assert every_replica(manager) == [("lab-cache", "PRIMARY", "pending")]


def test_invalidation_cascades_to_every_symbolic_link_pointing_at_the_replica(
    tmp_path: Path, manager: DataManager, lab: LocalLocation
) -> None:
    primary = manager.register_path(lab, RELPATH, RELPATH)
    links = []
    for name in ("link-1", "link-2"):
        publish_artifact(tmp_path / name)
        links.append(
            manager.register_path(
                local(tmp_path, name, "lab"), RELPATH, RELPATH, DataType.SYMBOLIC_LINK
            )
        )
    manager.register_relation(primary, links[0])
    manager.register_relation(links[0], links[1])  # a link to a link
    bucket = stored_in(store(tmp_path, "bucket", "cloud"), tmp_path)
    manager.register_path(bucket, RELPATH, RELPATH)

    manager.invalidate_location(lab, RELPATH)

    assert [r.location for r in manager.get_data_locations(RELPATH)] == ["bucket"]


def test_invalidating_a_link_leaves_its_target_valid(
    tmp_path: Path, manager: DataManager, lab: LocalLocation
) -> None:
    primary = manager.register_path(lab, RELPATH, RELPATH)
    publish_artifact(tmp_path / "link")
    link_location = local(tmp_path, "link", "lab")
    link = manager.register_path(link_location, RELPATH, RELPATH, DataType.SYMBOLIC_LINK)
    manager.register_relation(primary, link)

    manager.invalidate_location(link_location, RELPATH)

    assert manager.get_data_locations(RELPATH) == [primary]


def test_register_relation_records_the_link_target(
    tmp_path: Path, manager: DataManager, lab: LocalLocation
) -> None:
    primary = manager.register_path(lab, RELPATH, RELPATH)
    publish_artifact(tmp_path / "link")
    link = manager.register_path(
        local(tmp_path, "link", "lab"), RELPATH, RELPATH, DataType.SYMBOLIC_LINK
    )

    manager.register_relation(primary, link)

    assert manager.get_data_locations(RELPATH, location_name="link")[0].link_target == primary.id


def source_setup(tmp_path: Path, manager: DataManager) -> dict[str, str]:
    """Replicas on three deployments: a remote gcs and https copy, a node-local cache, a link."""
    here = local(tmp_path, "node-cache", "hpc")
    publish_artifact(Path(here.root))
    manager.register_path(
        stored_in(store(tmp_path, "mirror", "upstream", "https"), tmp_path), RELPATH, RELPATH
    )
    manager.register_path(stored_in(store(tmp_path, "bucket", "cloud"), tmp_path), RELPATH, RELPATH)
    manager.register_path(here, RELPATH, RELPATH)
    return {"here": "node-cache", "gcs": "bucket", "https": "mirror"}


def test_source_is_a_primary_on_the_destination_deployment_first(
    tmp_path: Path, manager: DataManager
) -> None:
    source_setup(tmp_path, manager)

    assert manager.get_source_location(RELPATH, "cloud").location == "bucket"


def test_source_is_a_replica_local_to_this_node_when_none_is_on_the_destination_deployment(
    tmp_path: Path, manager: DataManager
) -> None:
    source_setup(tmp_path, manager)

    assert manager.get_source_location(RELPATH, "elsewhere").location == "node-cache"


def test_source_is_the_cheapest_primary_when_nothing_is_local(
    tmp_path: Path, manager: DataManager
) -> None:
    source_setup(tmp_path, manager)
    manager.invalidate_location(local(tmp_path, "node-cache", "hpc"), RELPATH)

    sources = ReplicaUpkeep(manager).sources(RELPATH, "elsewhere")
    assert [r.location for r in sources] == ["bucket", "mirror"]


def test_a_link_on_another_node_is_never_a_source(tmp_path: Path, lab: LocalLocation) -> None:
    writer = DataManager(tmp_path / "registry.sqlite", workdir=tmp_path / "work")
    primary = writer.register_path(lab, RELPATH, RELPATH)
    publish_artifact(tmp_path / "link")
    link = writer.register_path(
        local(tmp_path, "link", "lab"), RELPATH, RELPATH, DataType.SYMBOLIC_LINK
    )
    writer.register_relation(primary, link)
    writer.invalidate_location(lab, RELPATH)
    writer.register_path(local(tmp_path, "link", "lab"), RELPATH, RELPATH, DataType.SYMBOLIC_LINK)
    writer.close()
    # Another node shares the registry but reaches none of these folders.
    other = DataManager(tmp_path / "registry.sqlite", workdir=tmp_path / "work-2")

    assert other.get_source_location(RELPATH, "lab") is None
    other.close()


def test_a_source_this_node_cannot_reach_comes_after_the_reachable_ones(
    tmp_path: Path, lab: LocalLocation
) -> None:
    far = DataManager(tmp_path / "registry.sqlite", workdir=tmp_path / "work-far")
    far.register_path(stored_in(store(tmp_path, "far-bucket", "cloud"), tmp_path), RELPATH, RELPATH)
    far.close()
    near = DataManager(tmp_path / "registry.sqlite", workdir=tmp_path / "work")
    near.register_path(lab, RELPATH, RELPATH)

    sources = ReplicaUpkeep(near).sources(RELPATH, "cloud")
    assert [r.location for r in sources] == ["lab-cache", "far-bucket"]
    near.close()


def test_source_is_none_when_every_replica_is_invalid(
    manager: DataManager, lab: LocalLocation
) -> None:
    manager.register_path(lab, RELPATH, RELPATH)
    manager.invalidate_location(lab, RELPATH)

    assert manager.get_source_location(RELPATH, "lab") is None


def test_transfer_copies_every_file_then_the_marker_and_registers_a_related_primary(
    tmp_path: Path, manager: DataManager, lab: LocalLocation
) -> None:
    src = manager.register_path(lab, RELPATH, RELPATH)
    node = local(tmp_path, "node", "hpc")

    [copy] = manager.transfer_data(lab, RELPATH, [node], RELPATH, writable=True)

    artifact = Cache(node.root).lookup(KEY)
    assert artifact is not None and artifact.verify() == []
    assert (copy.data_type, copy.state, copy.relpath) == (DataType.PRIMARY, "available", RELPATH)
    assert copy.link_target is None and copy.verified_at is not None
    assert not (node.path(RELPATH) / "peaks.bed.gz").samefile(lab.path(RELPATH) / "peaks.bed.gz")
    assert {r.id for r in manager.get_data_locations(RELPATH)} == {src.id, copy.id}


def test_transfer_on_the_same_filesystem_hard_links_and_registers_a_symbolic_link(
    tmp_path: Path, manager: DataManager, lab: LocalLocation
) -> None:
    src = manager.register_path(lab, RELPATH, RELPATH)
    node = local(tmp_path, "node", "lab")

    [link] = manager.transfer_data(lab, RELPATH, [node], RELPATH)

    assert (link.data_type, link.link_target) == (DataType.SYMBOLIC_LINK, src.id)
    assert (node.path(RELPATH) / "peaks.bed.gz").samefile(lab.path(RELPATH) / "peaks.bed.gz")


def test_transfer_to_an_object_store_registers_a_verified_primary(
    tmp_path: Path, manager: DataManager, lab: LocalLocation
) -> None:
    manager.register_path(lab, RELPATH, RELPATH)
    bucket = store(tmp_path, "bucket", "cloud")

    [copy] = manager.transfer_data(lab, RELPATH, [bucket], RELPATH)

    assert copy.data_type is DataType.PRIMARY
    assert copy.generation == bucket.stat(f"{RELPATH}/{MARKER}").generation
    assert ReplicaUpkeep(manager).verify(copy) == []


def test_transfer_to_several_destinations_registers_each_copy(
    tmp_path: Path, manager: DataManager, lab: LocalLocation
) -> None:
    manager.register_path(lab, RELPATH, RELPATH)
    targets = [store(tmp_path, "bucket", "cloud"), local(tmp_path, "node", "hpc")]

    copies = manager.transfer_data(lab, RELPATH, targets, "mirrored/copy", writable=True)

    assert [(c.location, c.path) for c in copies] == [
        ("bucket", "mirrored/copy"),
        ("node", "mirrored/copy"),
    ]
    assert [ReplicaUpkeep(manager).verify(c) for c in copies] == [[], []]


def test_transfer_of_a_source_corrupted_after_its_marker_registers_and_leaves_nothing(
    tmp_path: Path, manager: DataManager, lab: LocalLocation
) -> None:
    manager.register_path(lab, RELPATH, RELPATH)
    flip_last_byte(lab.path(RELPATH) / "peaks.bed.gz.tbi")
    targets = [store(tmp_path, "bucket", "cloud"), local(tmp_path, "node", "hpc")]

    with pytest.raises(BadReplica, match=r"peaks\.bed\.gz\.tbi has md5"):
        manager.transfer_data(lab, RELPATH, targets, RELPATH, writable=True)
    assert every_replica(manager) == [("lab-cache", "PRIMARY", "available")]
    assert not (tmp_path / "bucket").exists()
    assert not (tmp_path / "node" / RELPATH).exists()


def test_transfer_deletes_a_copy_that_arrives_damaged(
    tmp_path: Path, manager: DataManager, lab: LocalLocation
) -> None:
    manager.register_path(lab, RELPATH, RELPATH)
    bucket = DamagingStore("bucket", tmp_path / "bucket", deployment="cloud")

    with pytest.raises(StorageError, match="arrived damaged"):
        manager.transfer_data(lab, RELPATH, [bucket], RELPATH)
    assert bucket.objects() == []
    assert every_replica(manager) == [("lab-cache", "PRIMARY", "available")]


@pytest.mark.parametrize("kind", ["object store", "local disk"])
def test_a_transfer_interrupted_before_the_marker_leaves_no_artifact_and_no_replica(
    tmp_path: Path, manager: DataManager, lab: LocalLocation, kind: str
) -> None:
    manager.register_path(lab, RELPATH, RELPATH)
    if kind == "object store":
        target = FailingMarkerStore("target", tmp_path / "target", deployment="cloud")
    else:
        target = FailingMarkerLocal("target", tmp_path / "target", deployment="hpc")

    with pytest.raises(StorageError):
        manager.transfer_data(lab, RELPATH, [target], RELPATH, writable=True)
    assert [p for p in (tmp_path / "target").rglob("*") if p.is_file()] == []
    assert every_replica(manager) == [("lab-cache", "PRIMARY", "available")]


def test_a_marker_another_writer_published_first_is_verified_and_registered(
    tmp_path: Path, manager: DataManager, lab: LocalLocation
) -> None:
    manager.register_path(lab, RELPATH, RELPATH)
    bucket = RivalStore("bucket", tmp_path / "bucket", deployment="cloud")
    bucket.rival = lab.path(RELPATH)

    [copy] = manager.transfer_data(lab, RELPATH, [bucket], RELPATH)

    assert (copy.location, copy.data_type, copy.state) == ("bucket", DataType.PRIMARY, "available")
    assert ReplicaUpkeep(manager).verify(copy) == []


def test_transfer_adopts_an_identical_unregistered_copy_at_the_destination(
    tmp_path: Path, manager: DataManager, lab: LocalLocation
) -> None:
    manager.register_path(lab, RELPATH, RELPATH)
    bucket = stored_in(store(tmp_path, "bucket", "cloud"), tmp_path)
    before = bucket.stat(f"{RELPATH}/{MARKER}")

    [copy] = manager.transfer_data(lab, RELPATH, [bucket], RELPATH)

    assert copy.generation == before.generation  # adopted, not rewritten


def test_transfer_replaces_a_damaged_unregistered_copy_at_the_destination(
    tmp_path: Path, manager: DataManager, lab: LocalLocation
) -> None:
    manager.register_path(lab, RELPATH, RELPATH)
    bucket = stored_in(store(tmp_path, "bucket", "cloud"), tmp_path)
    flip_last_byte(bucket.file(f"{RELPATH}/peaks.bed.gz"))

    [copy] = manager.transfer_data(lab, RELPATH, [bucket], RELPATH)

    assert ReplicaUpkeep(manager).verify(copy) == []


def test_transfer_refuses_to_replace_another_sound_build_at_the_destination(
    tmp_path: Path, manager: DataManager, lab: LocalLocation
) -> None:
    manager.register_path(lab, RELPATH, RELPATH)
    bucket = store(tmp_path, "bucket", "cloud")
    upload_artifact(bucket, publish_artifact(tmp_path / "other", {"peaks.bed.gz": b"other"}))

    with pytest.raises(StorageError, match="another build"):
        manager.transfer_data(lab, RELPATH, [bucket], RELPATH)
    assert bucket.file(f"{RELPATH}/peaks.bed.gz").read_bytes() == b"other"


def test_transfer_refuses_a_source_that_is_not_registered(
    tmp_path: Path, manager: DataManager, lab: LocalLocation
) -> None:
    with pytest.raises(StorageError, match="not a registered"):
        manager.transfer_data(lab, RELPATH, [local(tmp_path, "node", "hpc")], RELPATH)


def test_fetch_falls_back_to_the_next_replica_and_invalidates_the_corrupt_one(
    tmp_path: Path, manager: DataManager, lab: LocalLocation
) -> None:
    manager.register_path(lab, RELPATH, RELPATH)
    manager.register_path(stored_in(store(tmp_path, "bucket", "cloud"), tmp_path), RELPATH, RELPATH)
    flip_last_byte(lab.path(RELPATH) / "peaks.bed.gz")
    node = local(tmp_path, "node", "lab")  # the corrupt cache is on its deployment: tried first

    copy = ReplicaUpkeep(manager).fetch(RELPATH, node)

    assert Cache(node.root).lookup(KEY).verify() == []
    assert copy.data_type is DataType.PRIMARY
    assert [r.location for r in manager.get_data_locations(RELPATH)] == ["bucket", "node"]
    assert ("lab-cache", "INVALID", "available") in every_replica(manager)


def test_fetch_names_every_failed_source_when_none_verifies(
    tmp_path: Path, manager: DataManager, lab: LocalLocation
) -> None:
    manager.register_path(lab, RELPATH, RELPATH)
    bucket = stored_in(store(tmp_path, "bucket", "cloud"), tmp_path)
    manager.register_path(bucket, RELPATH, RELPATH)
    flip_last_byte(lab.path(RELPATH) / "peaks.bed.gz")
    bucket.delete(f"{RELPATH}/peaks.bed.gz.tbi")

    with pytest.raises(StorageError) as caught:
        ReplicaUpkeep(manager).fetch(RELPATH, local(tmp_path, "node", "hpc"))
    assert "lab-cache" not in caught.value.message  # names URIs, not location names
    assert str(lab.path(RELPATH)) in caught.value.message
    assert "store://bucket/" in caught.value.message
    assert manager.get_data_locations(RELPATH) == []


def test_fetch_returns_the_replica_already_at_the_destination(
    manager: DataManager, lab: LocalLocation
) -> None:
    replica = manager.register_path(lab, RELPATH, RELPATH)

    assert ReplicaUpkeep(manager).fetch(RELPATH, lab) == replica


def test_fetch_copies_afresh_over_a_registered_destination_copy_whose_files_are_gone(
    tmp_path: Path, manager: DataManager, lab: LocalLocation
) -> None:
    manager.register_path(lab, RELPATH, RELPATH)
    bucket = store(tmp_path, "bucket", "cloud")
    manager.transfer_data(lab, RELPATH, [bucket], RELPATH)
    bucket.delete(f"{RELPATH}/peaks.bed.gz")

    copy = ReplicaUpkeep(manager).fetch(RELPATH, bucket)

    assert ReplicaUpkeep(manager).verify(copy) == []


def test_verify_reports_a_file_whose_size_changed(manager: DataManager, lab: LocalLocation) -> None:
    replica = manager.register_path(lab, RELPATH, RELPATH)
    with open(lab.path(RELPATH) / "peaks.bed.gz", "ab") as handle:
        handle.write(b"x")

    problems = ReplicaUpkeep(manager).verify(replica, full=False)

    size = len(FILES["peaks.bed.gz"])
    assert problems == [f"peaks.bed.gz has {size + 1} bytes, {MARKER} says {size}"]


def test_verify_without_full_misses_a_flipped_byte_that_full_finds(
    manager: DataManager, lab: LocalLocation
) -> None:
    replica = manager.register_path(lab, RELPATH, RELPATH)
    flip_last_byte(lab.path(RELPATH) / "peaks.bed.gz")

    assert ReplicaUpkeep(manager).verify(replica, full=False) == []
    assert ReplicaUpkeep(manager).verify(replica)[0].startswith("peaks.bed.gz has md5")


def test_verify_records_when_an_intact_replica_was_verified(
    manager: DataManager, lab: LocalLocation
) -> None:
    replica = manager.register_path(lab, RELPATH, RELPATH)

    assert ReplicaUpkeep(manager).verify(replica) == []
    assert manager.get_data_locations(RELPATH)[0].verified_at is not None


def test_repair_invalidates_a_bad_replica_and_restores_it_from_a_valid_one(
    tmp_path: Path, manager: DataManager, lab: LocalLocation
) -> None:
    bad = manager.register_path(lab, RELPATH, RELPATH)
    manager.register_path(stored_in(store(tmp_path, "bucket", "cloud"), tmp_path), RELPATH, RELPATH)
    flip_last_byte(lab.path(RELPATH) / "peaks.bed.gz")

    outcome = ReplicaUpkeep(manager).repair(bad)

    assert outcome.problems and outcome.restored is not None
    assert (outcome.restored.location, outcome.restored.path) == ("lab-cache", RELPATH)
    assert Cache(lab.root).lookup(KEY).verify() == []
    assert ReplicaUpkeep(manager).verify(outcome.restored) == []


def test_repair_with_no_valid_source_left_keeps_the_bad_copy_invalidated(
    manager: DataManager, lab: LocalLocation
) -> None:
    bad = manager.register_path(lab, RELPATH, RELPATH)
    flip_last_byte(lab.path(RELPATH) / "peaks.bed.gz")

    with pytest.raises(StorageError, match="no valid replica is left"):
        ReplicaUpkeep(manager).repair(bad)
    assert (lab.path(RELPATH) / "peaks.bed.gz").exists()
    assert every_replica(manager) == [("lab-cache", "INVALID", "available")]


def test_repair_without_restore_only_invalidates(manager: DataManager, lab: LocalLocation) -> None:
    bad = manager.register_path(lab, RELPATH, RELPATH)
    flip_last_byte(lab.path(RELPATH) / "peaks.bed.gz")

    outcome = ReplicaUpkeep(manager).repair(bad, restore=False)

    assert outcome.restored is None
    assert every_replica(manager) == [("lab-cache", "INVALID", "available")]


def test_repair_leaves_an_intact_replica_alone(manager: DataManager, lab: LocalLocation) -> None:
    replica = manager.register_path(lab, RELPATH, RELPATH)

    assert ReplicaUpkeep(manager).repair(replica).problems == []
    assert manager.get_data_locations(RELPATH)[0].data_type is DataType.PRIMARY


def _stall_in_transfer(registry: str, workdir: str, lab_root: str, bucket_root: str) -> None:
    """Start copying to a store that hangs before the marker (the parent kills this process)."""
    manager = DataManager(registry, workdir=workdir)
    lab = LocalLocation("lab-cache", lab_root, deployment="lab")
    manager.register_path(lab, RELPATH, RELPATH)
    bucket = StallingStore("bucket", Path(bucket_root), deployment="cloud")
    manager.transfer_data(lab, RELPATH, [bucket], RELPATH)


def test_reclaim_deletes_the_pending_replica_and_partial_data_of_a_killed_writer(
    tmp_path: Path, lab: LocalLocation
) -> None:
    registry, bucket_root = str(tmp_path / "registry.sqlite"), tmp_path / "buckets" / "bucket"
    context = multiprocessing.get_context("spawn")
    args = (registry, str(tmp_path / "work"), lab.root, str(bucket_root))
    writer = context.Process(target=_stall_in_transfer, args=args)
    writer.start()
    deadline = time.monotonic() + 60
    while not (tmp_path / "buckets" / "data-written").exists() and writer.is_alive():
        assert time.monotonic() < deadline, "the writer never reached the marker"
        time.sleep(0.05)
    os.kill(writer.pid, signal.SIGKILL)
    writer.join()
    manager = DataManager(registry, workdir=tmp_path / "work")
    bucket = FolderStore("bucket", bucket_root, deployment="cloud")
    manager.context.add_location(bucket)
    assert ("bucket", "PRIMARY", "pending") in every_replica(manager)
    assert bucket.objects() != []

    reclaimed = ReplicaUpkeep(manager).reclaim_pending()

    assert [(r.location, r.owner) for r in reclaimed] == [
        ("bucket", f"{socket.gethostname()}:{writer.pid}")
    ]
    assert every_replica(manager) == [("lab-cache", "PRIMARY", "available")]
    assert bucket.objects() == []
    manager.close()


def claim_pending(manager: DataManager, location: LocalLocation, path: str = RELPATH) -> None:
    with manager.context.registry.engine.begin() as connection:
        replicas.begin_pending(
            connection,
            artifact_id=replicas.ensure_artifact(connection, RELPATH, None),
            location_id=replicas.ensure_location(connection, location),
            path=path,
        )


def test_reclaim_keeps_the_pending_replica_of_a_live_writer(
    tmp_path: Path, manager: DataManager
) -> None:
    claim_pending(manager, local(tmp_path, "node", "hpc"))

    assert ReplicaUpkeep(manager).reclaim_pending() == []
    assert every_replica(manager) == [("node", "PRIMARY", "pending")]


def test_reclaim_deletes_a_pending_replica_of_another_host_only_once_it_is_old(
    tmp_path: Path, manager: DataManager
) -> None:
    claim_pending(manager, local(tmp_path, "node", "hpc"))
    old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    with manager.context.registry.engine.begin() as connection:
        connection.execute(
            sa.update(replica_table).values(owner="another-host:4242", updated_at=old)
        )

    assert ReplicaUpkeep(manager).reclaim_pending(max_age=3 * 3600) == []
    assert len(ReplicaUpkeep(manager).reclaim_pending(max_age=3600)) == 1
    assert every_replica(manager) == []


def test_reclaim_removes_a_dead_local_writers_temp_folder(
    tmp_path: Path, manager: DataManager
) -> None:
    node = local(tmp_path, "node", "hpc")
    manager.context.add_location(node)
    claim_pending(manager, node)
    dead = (
        node.path(RELPATH).parent / f".v1.tmp.{socket.gethostname().split('.')[0]}.999999999.ab12"
    )
    dead.mkdir(parents=True)
    (dead / "peaks.bed.gz").write_bytes(b"partial")
    with manager.context.registry.engine.begin() as connection:
        connection.execute(
            sa.update(replica_table).values(owner=f"{socket.gethostname()}:999999999")
        )

    ReplicaUpkeep(manager).reclaim_pending()

    assert not dead.exists()
    assert every_replica(manager) == []


def test_concurrent_registration_from_several_processes_never_reports_a_locked_database(
    tmp_path: Path,
) -> None:
    for md5 in range(8):
        publish_artifact(
            tmp_path / "shared", key=ArtifactKey("intervals", f"{md5:032x}", "sorted", "1")
        )
    registry = str(tmp_path / "registry.sqlite")
    DataManager(registry, workdir=tmp_path / "work").close()  # tables exist before the race
    outcomes = race(
        register_many, [(registry, str(tmp_path), n) for n in range(PROCESSES)]
    ).outcomes

    assert sorted(outcomes) == [("ok", n) for n in range(PROCESSES)], outcomes
    manager = DataManager(registry, workdir=tmp_path / "work")
    assert len(ReplicaUpkeep(manager).all_replicas()) == 8 * (1 + PROCESSES)
    third = str(ArtifactKey("intervals", f"{3:032x}", "sorted", "1").relpath)
    assert len(manager.get_data_locations(third)) == 1 + PROCESSES
    manager.close()
