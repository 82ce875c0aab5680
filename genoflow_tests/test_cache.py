"""The content-addressed cache: lookup, private drafts, atomic publish, verification and cleanup."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from genoflow.core.errors import StorageError
from genoflow.storage.cache import MARKER, Artifact, Cache, Draft
from genoflow.storage.layout import ArtifactKey

MD5 = "0123456789abcdef0123456789abcdef"
KEY = ArtifactKey("intervals", MD5, "sorted", "1")
# Latin-1 bytes in a record, as real files carry them.
DATA = b"chr1\t10\t20\tpeak_caf\xe9\n" * 200
INDEX = b"TBI\x01" + bytes(range(256))
FILES = {"sorted.bed.gz": DATA, "sorted.bed.gz.tbi": INDEX}
TOOLS = {"pysam": "0.24.1", "htslib": "1.24"}


def build(cache: Cache, key: ArtifactKey = KEY, files: dict[str, bytes] = FILES) -> Artifact:
    """Build and publish an artifact holding ``files`` (main file first)."""
    draft = cache.begin(key)
    assert isinstance(draft, Draft)
    for name, data in files.items():
        (draft.dir / name).write_bytes(data)
    return cache.publish(
        draft, processor="genoflow_tests.build", tools=TOOLS, details={"files": list(files)}
    )


def debris(cache: Cache) -> list[str]:
    """Temp folders and lock files anywhere beside or under the cache root."""
    return sorted(
        str(path.relative_to(cache.root.parent))
        for path in cache.root.parent.rglob("*")
        if ".tmp." in path.name or path.name.endswith(".lock")
    )


def dead_temp_sibling(dest: Path) -> Path:
    """A temp folder created by a process that has exited (as a SIGKILLed builder leaves one)."""
    code = (
        "import sys; from genoflow.storage import atomic; print(atomic.temp_sibling(sys.argv[1]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(dest)], check=True, capture_output=True, text=True
    )
    return Path(done.stdout.strip())


@pytest.fixture
def cache(tmp_path: Path) -> Cache:
    return Cache(tmp_path / "cache", lock_timeout=5)


def test_lookup_of_a_missing_key_is_none(cache: Cache) -> None:
    assert cache.lookup(KEY) is None


def test_publish_puts_the_files_in_the_key_folder(cache: Cache) -> None:
    artifact = build(cache)

    assert artifact.path == cache.root / KEY.relpath
    assert [path.read_bytes() for path in artifact.files] == [DATA, INDEX]
    assert artifact.main == artifact.path / "sorted.bed.gz"


def test_marker_lists_each_file_with_its_size_and_md5_main_first(cache: Cache) -> None:
    artifact = build(cache)

    marker = (artifact.path / MARKER).read_text()
    assert artifact.marker.to_json()["files"] == [
        {"name": "sorted.bed.gz", "size": len(DATA), "md5": hashlib.md5(DATA).hexdigest()},
        {"name": "sorted.bed.gz.tbi", "size": len(INDEX), "md5": hashlib.md5(INDEX).hexdigest()},
    ]
    assert hashlib.md5(DATA).hexdigest() in marker


def test_marker_records_checksum_processor_tools_and_creation_time(cache: Cache) -> None:
    artifact = build(cache)

    marker = artifact.marker.to_json()
    assert marker["checksum"] == artifact.checksum
    assert marker["processor"] == "genoflow_tests.build"
    assert marker["tools"] == TOOLS
    assert dt.datetime.fromisoformat(marker["created_at"]).tzinfo is not None
    assert (marker["asset"], marker["source_md5"], marker["version"]) == (
        "intervals/sorted",
        MD5,
        "1",
    )


def test_checksum_of_a_single_file_artifact_is_that_files_md5(cache: Cache) -> None:
    artifact = build(cache, files={"source.bed": DATA})

    assert artifact.checksum == hashlib.md5(DATA).hexdigest()


def test_checksum_of_several_files_changes_when_one_file_changes(cache: Cache) -> None:
    other_key = ArtifactKey("intervals", MD5, "sorted", "2")
    first = build(cache)
    second = build(cache, other_key, {"sorted.bed.gz": DATA, "sorted.bed.gz.tbi": INDEX + b"!"})

    assert first.checksum != second.checksum


def test_lookup_finds_a_published_artifact(cache: Cache) -> None:
    published = build(cache)

    found = Cache(cache.root).lookup(KEY)

    assert found is not None
    assert (found.path, found.marker) == (published.path, published.marker)


def test_begin_on_a_published_key_returns_the_artifact_not_a_draft(cache: Cache) -> None:
    published = build(cache)

    found = cache.begin(KEY)

    assert isinstance(found, Artifact)
    assert found.checksum == published.checksum
    assert debris(cache) == []


def test_publish_leaves_no_temp_folder_or_lock_file(cache: Cache) -> None:
    artifact = build(cache)

    assert sorted(p.name for p in artifact.path.parent.iterdir()) == ["v1"]


def test_discarded_draft_leaves_no_artifact_temp_folder_or_lock(cache: Cache) -> None:
    draft = cache.begin(KEY)
    assert isinstance(draft, Draft)
    with pytest.raises(RuntimeError, match="sort failed"):
        try:
            (draft.dir / "sorted.bed.gz").write_bytes(DATA[:100])
            raise RuntimeError("sort failed")
        except BaseException:
            cache.discard(draft)
            raise

    assert cache.lookup(KEY) is None
    assert not cache.folder(KEY).parent.exists()  # the emptied asset folder goes too


def test_a_draft_holds_the_lock_until_it_is_discarded(cache: Cache) -> None:
    draft = cache.begin(KEY)
    impatient = Cache(cache.root, lock_timeout=0.1)

    with pytest.raises(StorageError, match="lock"):
        impatient.begin(KEY)
    cache.discard(draft)
    second = impatient.begin(KEY)
    assert isinstance(second, Draft)
    impatient.discard(second)


def test_failed_publish_leaves_no_artifact_temp_folder_or_lock(cache: Cache) -> None:
    draft = cache.begin(KEY)
    assert isinstance(draft, Draft)
    (draft.dir / "sorted.bed.gz").write_bytes(DATA)

    with pytest.raises(StorageError, match=re.escape("sorted.bed.gz.tbi")):
        cache.publish(
            draft, processor="p", details={"files": ["sorted.bed.gz", "sorted.bed.gz.tbi"]}
        )

    assert cache.lookup(KEY) is None
    assert not cache.folder(KEY).parent.exists()  # the emptied asset folder goes too


def test_publish_with_unserialisable_details_leaves_no_temp_folder(cache: Cache) -> None:
    draft = cache.begin(KEY)
    assert isinstance(draft, Draft)
    (draft.dir / "sorted.bed.gz").write_bytes(DATA)

    with pytest.raises(TypeError):
        cache.publish(draft, processor="p", details={"started": object()})

    assert not cache.folder(KEY).parent.exists()  # the emptied asset folder goes too


def test_a_folder_with_data_but_no_marker_is_not_an_artifact(cache: Cache) -> None:
    folder = cache.folder(KEY)
    folder.mkdir(parents=True)
    (folder / "sorted.bed.gz").write_bytes(DATA)

    assert cache.lookup(KEY) is None


def test_lookup_rejects_an_artifact_whose_file_was_truncated(cache: Cache) -> None:
    artifact = build(cache)
    artifact.main.write_bytes(DATA[:-10])

    assert cache.lookup(KEY) is None


def test_lookup_rejects_an_artifact_whose_file_is_missing(cache: Cache) -> None:
    artifact = build(cache)
    artifact.files[1].unlink()

    assert cache.lookup(KEY) is None


@pytest.mark.parametrize("marker", ['{"files": [', "{}", '{"files": [{"name": 1}]}'])
def test_a_damaged_marker_is_not_an_artifact_and_gets_rebuilt(cache: Cache, marker: str) -> None:
    artifact = build(cache)
    (artifact.path / MARKER).write_text(marker)

    assert cache.lookup(KEY) is None
    draft = cache.begin(KEY)
    assert isinstance(draft, Draft)
    cache.discard(draft)


def test_begin_moves_a_damaged_artifact_aside_and_lets_it_be_rebuilt(cache: Cache) -> None:
    build(cache).main.write_bytes(DATA[:-10])

    draft = cache.begin(KEY)

    assert isinstance(draft, Draft)
    assert not cache.folder(KEY).exists()
    assert sorted(p.name for p in cache.folder(KEY).parent.iterdir()) == [
        ".v1.lock",
        draft.dir.name,
    ]
    cache.discard(draft)


def test_rebuilding_a_damaged_artifact_publishes_intact_files(cache: Cache) -> None:
    build(cache).main.write_bytes(DATA[:-10])

    rebuilt = build(cache)

    assert rebuilt.main.read_bytes() == DATA
    assert rebuilt.verify() == []
    assert debris(cache) == []


def test_verify_detects_a_same_size_corruption(cache: Cache) -> None:
    artifact = build(cache)
    corrupt = bytearray(DATA)
    corrupt[len(corrupt) // 2] ^= 0x01
    artifact.main.write_bytes(bytes(corrupt))

    found = cache.lookup(KEY)

    assert found is not None
    assert found.verify() == [f"sorted.bed.gz: md5 differs from {MARKER}"]


def test_verify_of_an_intact_artifact_finds_no_problem(cache: Cache) -> None:
    assert build(cache).verify() == []


def test_workdir_is_removed_on_exit(cache: Cache) -> None:
    with cache.workdir("sort") as work:
        (work / "chunk.tmp").write_bytes(DATA)

    assert not work.exists()


def test_workdir_is_removed_when_the_body_raises(cache: Cache) -> None:
    with pytest.raises(RuntimeError), cache.workdir("sort") as work:
        (work / "chunk.tmp").write_bytes(DATA)
        raise RuntimeError("sort failed")

    assert not work.exists()


def test_workdir_lies_beside_the_cache_root(cache: Cache) -> None:
    with cache.workdir("sort") as work:
        assert work.parent == cache.root.parent / "work"


def test_cache_sweep_removes_dead_temp_folders_deep_in_the_tree(cache: Cache) -> None:
    other = ArtifactKey("alignments", "f" * 32, "index", "3")
    dead = {
        dead_temp_sibling(cache.folder(KEY)),
        dead_temp_sibling(cache.folder(other)),
        dead_temp_sibling(cache.root.parent / "work" / "sort"),
    }

    removed = cache.sweep()

    assert set(removed) == dead
    assert not any(path.exists() for path in dead)


def test_cache_sweep_keeps_a_live_draft_and_published_artifacts(cache: Cache) -> None:
    build(cache)
    draft = cache.begin(ArtifactKey("intervals", MD5, "index", "1"))
    assert isinstance(draft, Draft)

    assert cache.sweep() == []
    assert draft.dir.is_dir()
    assert cache.lookup(KEY) is not None
    cache.discard(draft)
