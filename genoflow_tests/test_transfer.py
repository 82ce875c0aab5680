"""Moving artifacts between locations: markers read first and written last, every byte verified."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genoflow.core.errors import StorageError
from genoflow.storage.cache import MARKER
from genoflow.storage.locations import AlreadyExists, LocalLocation, ObjectInfo
from genoflow.storage.transfer import (
    BadReplica,
    inspect,
    publish,
    read_marker,
    remove,
    remove_partial,
    same_filesystem,
    stage,
)
from genoflow_tests.support.artifacts import (
    FILES,
    RELPATH,
    FailingMarkerLocal,
    FailingMarkerStore,
    FolderStore,
    flip_last_byte,
    publish_artifact,
    upload_artifact,
)


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    folder = tmp_path / "scratch"
    folder.mkdir()
    return folder


@pytest.fixture
def source(tmp_path: Path) -> LocalLocation:
    publish_artifact(tmp_path / "lab")
    return LocalLocation("lab", tmp_path / "lab", deployment="lab")


@pytest.fixture
def store(tmp_path: Path) -> FolderStore:
    return FolderStore("bucket", tmp_path / "bucket", deployment="cloud")


def test_read_marker_rejects_a_folder_without_its_marker(
    source: LocalLocation, scratch: Path
) -> None:
    (source.path(RELPATH) / MARKER).unlink()

    with pytest.raises(BadReplica, match=r"no genoflow\.json here"):
        read_marker(source, RELPATH, scratch)


def test_read_marker_rejects_a_marker_that_is_not_json(
    source: LocalLocation, scratch: Path
) -> None:
    (source.path(RELPATH) / MARKER).write_bytes(b'{"files": [')

    with pytest.raises(BadReplica, match="damaged"):
        read_marker(source, RELPATH, scratch)


def test_read_marker_rejects_a_marker_naming_a_file_outside_its_folder(
    source: LocalLocation, scratch: Path
) -> None:
    marker_file = source.path(RELPATH) / MARKER
    marker = json.loads(marker_file.read_text())
    marker["files"] = [{"name": "../escape", "size": 1, "md5": "0" * 32}]
    marker["checksum"] = "0" * 32
    marker_file.write_text(json.dumps(marker))

    with pytest.raises(BadReplica, match="outside its folder"):
        read_marker(source, RELPATH, scratch)


def test_stage_verifies_every_file_of_a_local_source_in_place(
    source: LocalLocation, scratch: Path
) -> None:
    staged = stage(source, RELPATH, scratch, expected=None)

    assert staged.in_place
    assert staged.files == {name: source.path(f"{RELPATH}/{name}") for name in FILES}
    assert list(scratch.iterdir()) == []


def test_stage_rejects_a_source_whose_bytes_changed_after_its_marker(
    source: LocalLocation, scratch: Path
) -> None:
    flip_last_byte(source.path(f"{RELPATH}/peaks.bed.gz"))

    with pytest.raises(BadReplica, match=r"peaks\.bed\.gz has md5"):
        stage(source, RELPATH, scratch, expected=None)


def test_stage_rejects_a_source_holding_another_build_than_the_registered_one(
    source: LocalLocation, scratch: Path
) -> None:
    with pytest.raises(BadReplica, match="the registry expects"):
        stage(source, RELPATH, scratch, expected="f" * 32)


def test_stage_downloads_a_remote_source_and_deletes_a_corrupt_download(
    tmp_path: Path, store: FolderStore, scratch: Path
) -> None:
    upload_artifact(store, publish_artifact(tmp_path / "lab"))
    index = store.file(f"{RELPATH}/peaks.bed.gz.tbi")
    index.write_bytes(index.read_bytes()[:-1])

    with pytest.raises(BadReplica, match=r"peaks\.bed\.gz\.tbi has"):
        stage(store, RELPATH, scratch, expected=None)
    assert not (scratch / "peaks.bed.gz.tbi").exists()


def test_publish_to_an_object_store_writes_the_marker_last(
    source: LocalLocation, store: FolderStore, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staged = stage(source, RELPATH, scratch, expected=None)
    order: list[str] = []
    original_put = store.put

    def recording_put(src: Path, path: str, *, if_absent: bool = False) -> ObjectInfo:
        order.append(path.rsplit("/", 1)[1] + (" if_absent" if if_absent else ""))
        return original_put(src, path, if_absent=if_absent)

    monkeypatch.setattr(store, "put", recording_put)

    info, linked = publish(store, RELPATH, staged, link=False)

    assert order == [*FILES, f"{MARKER} if_absent"]
    assert not linked
    assert info == store.stat(f"{RELPATH}/{MARKER}")


def test_publish_to_an_object_store_deletes_its_data_when_the_marker_put_fails(
    tmp_path: Path, source: LocalLocation, scratch: Path
) -> None:
    store = FailingMarkerStore("bucket", tmp_path / "bucket", deployment="cloud")
    staged = stage(source, RELPATH, scratch, expected=None)

    with pytest.raises(StorageError, match="connection reset"):
        publish(store, RELPATH, staged, link=False)
    assert store.objects() == []


def test_publish_to_local_disk_leaves_nothing_when_the_marker_write_fails(
    tmp_path: Path, source: LocalLocation, scratch: Path
) -> None:
    target = FailingMarkerLocal("node", tmp_path / "node", deployment="hpc")
    staged = stage(source, RELPATH, scratch, expected=None)

    with pytest.raises(StorageError, match="no space left"):
        publish(target, RELPATH, staged, link=False)
    assert [p for p in (tmp_path / "node").rglob("*") if p.is_file()] == []
    assert not target.path(RELPATH).exists()


def test_publish_raises_already_exists_and_keeps_the_rivals_objects(
    tmp_path: Path, source: LocalLocation, store: FolderStore, scratch: Path
) -> None:
    upload_artifact(store, source.path(RELPATH))
    before = store.objects()

    with pytest.raises(AlreadyExists):
        publish(store, RELPATH, stage(source, RELPATH, scratch, expected=None), link=False)
    assert store.objects() == before


def test_publish_with_link_hard_links_the_files_of_a_local_source(
    tmp_path: Path, source: LocalLocation, scratch: Path
) -> None:
    target = LocalLocation("node", tmp_path / "node", deployment="lab")

    _, linked = publish(target, RELPATH, stage(source, RELPATH, scratch, expected=None), link=True)

    assert linked
    for name in FILES:
        assert target.path(f"{RELPATH}/{name}").samefile(source.path(f"{RELPATH}/{name}"))
    assert not target.path(f"{RELPATH}/{MARKER}").samefile(source.path(f"{RELPATH}/{MARKER}"))


def test_publish_without_link_copies_into_fresh_files(
    tmp_path: Path, source: LocalLocation, scratch: Path
) -> None:
    target = LocalLocation("node", tmp_path / "node", deployment="lab")

    publish(target, RELPATH, stage(source, RELPATH, scratch, expected=None), link=False)

    copy = target.path(f"{RELPATH}/peaks.bed.gz")
    assert copy.read_bytes() == FILES["peaks.bed.gz"]
    assert not copy.samefile(source.path(f"{RELPATH}/peaks.bed.gz"))


def test_publish_to_local_disk_replaces_a_folder_that_has_no_marker(
    tmp_path: Path, source: LocalLocation, scratch: Path
) -> None:
    target = LocalLocation("node", tmp_path / "node", deployment="lab")
    target.path(RELPATH).mkdir(parents=True)
    (target.path(RELPATH) / "leftover").write_bytes(b"partial")

    publish(target, RELPATH, stage(source, RELPATH, scratch, expected=None), link=False)

    assert sorted(p.name for p in target.path(RELPATH).iterdir()) == sorted([*FILES, MARKER])


def test_inspect_trusts_the_stores_md5_for_the_full_check(
    tmp_path: Path, store: FolderStore, scratch: Path
) -> None:
    upload_artifact(store, publish_artifact(tmp_path / "lab"))
    flip_last_byte(store.file(f"{RELPATH}/peaks.bed.gz"))

    found = inspect(store, RELPATH, scratch, full=True)

    assert len(found.problems) == 1
    assert found.problems[0].startswith("peaks.bed.gz has md5")


def test_inspect_without_full_checks_only_sizes(source: LocalLocation, scratch: Path) -> None:
    flip_last_byte(source.path(f"{RELPATH}/peaks.bed.gz"))

    assert inspect(source, RELPATH, scratch, full=False).problems == []


def test_inspect_full_rehashes_local_files(source: LocalLocation, scratch: Path) -> None:
    flip_last_byte(source.path(f"{RELPATH}/peaks.bed.gz"))

    assert inspect(source, RELPATH, scratch, full=True).problems[0].startswith("peaks.bed.gz has")


def test_inspect_reports_a_missing_marker_as_no_artifact(store: FolderStore, scratch: Path) -> None:
    found = inspect(store, RELPATH, scratch, full=True)

    assert found.marker is None
    assert "no genoflow.json" in found.problems[0]


def test_remove_deletes_every_object_the_marker_lists(
    tmp_path: Path, store: FolderStore, scratch: Path
) -> None:
    upload_artifact(store, publish_artifact(tmp_path / "lab"))

    remove(store, RELPATH, scratch, names=[])

    assert store.objects() == []


def test_remove_partial_keeps_a_copy_whose_marker_arrived(
    tmp_path: Path, store: FolderStore
) -> None:
    upload_artifact(store, publish_artifact(tmp_path / "lab"))

    remove_partial(store, RELPATH, names=list(FILES))

    assert len(store.objects()) == 3


def test_remove_partial_deletes_data_objects_without_a_marker(
    tmp_path: Path, store: FolderStore
) -> None:
    store.put(publish_artifact(tmp_path / "lab") / "peaks.bed.gz", f"{RELPATH}/peaks.bed.gz")

    remove_partial(store, RELPATH, names=list(FILES))

    assert store.objects() == []


def test_same_filesystem_holds_for_two_local_folders_on_one_device(tmp_path: Path) -> None:
    first = LocalLocation("a", tmp_path / "a", deployment="lab")
    second = LocalLocation("b", tmp_path / "b" / "not-yet-created", deployment="lab")

    assert same_filesystem(first, second)


def test_same_filesystem_never_holds_for_an_object_store(tmp_path: Path) -> None:
    local = LocalLocation("a", tmp_path / "a", deployment="lab")

    assert not same_filesystem(local, FolderStore("b", tmp_path / "b", deployment="lab"))
