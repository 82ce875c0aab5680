"""Concurrent and killed builders: the cache stays correct with N processes and after a SIGKILL."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from genoflow.storage.cache import Cache, Draft
from genoflow.storage.layout import ArtifactKey

PROCESSES = 8
MD5 = "89abcdef0123456789abcdef01234567"
KEY = ArtifactKey("alignments", MD5, "sorted", "1")
DATA = b"@HD\tVN:1.6\tSO:coordinate\nread\xe9\t0\tchr1\t100\n" * 2000
INDEX = b"BAI\x01" + bytes(range(256)) * 4
FILES = {"sorted.bam": DATA, "sorted.bam.bai": INDEX}
CONTEXT = multiprocessing.get_context("spawn")
# The cache after the race, and each builder's (built it?, checksum it saw).
Raced = tuple[Cache, list[tuple[bool, str | None]]]


def write_files(draft: Draft, files: dict[str, bytes] = FILES) -> None:
    for name, data in files.items():
        (draft.dir / name).write_bytes(data)


def publish(cache: Cache, draft: Draft) -> None:
    cache.publish(draft, processor="genoflow_tests.build", details={"files": list(FILES)})


def debris(root: Path) -> list[str]:
    """Temp folders and lock files anywhere under ``root``."""
    return sorted(
        str(path.relative_to(root))
        for path in root.rglob("*")
        if ".tmp." in path.name or path.name.endswith(".lock")
    )


def run_processes(target: Callable[..., None], args: tuple[Any, ...], count: int) -> list[Any]:
    """Run ``target(*args, results)`` in ``count`` spawned processes; return what each put."""
    results: Queue = CONTEXT.Queue()
    workers = [CONTEXT.Process(target=target, args=(*args, results)) for _ in range(count)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert [worker.exitcode for worker in workers] == [0] * count
    return outcomes


def _build_slowly(root: str, barrier: Barrier, results: Queue) -> None:
    """Start together with every rival; whoever gets a draft writes it slowly, then publishes."""
    cache = Cache(root, lock_timeout=60)
    barrier.wait(timeout=60)
    found = cache.begin(KEY)
    built = isinstance(found, Draft)
    if isinstance(found, Draft):
        write_files(found)
        time.sleep(0.3)
        publish(cache, found)
    artifact = Cache(root).lookup(KEY)
    results.put((built, None if artifact is None else artifact.checksum))


@pytest.fixture(scope="module")
def raced(tmp_path_factory: pytest.TempPathFactory) -> Raced:
    """A cache after 8 processes asked for the same artifact at the same moment."""
    root = tmp_path_factory.mktemp("raced") / "cache"
    outcomes = run_processes(_build_slowly, (str(root), CONTEXT.Barrier(PROCESSES)), PROCESSES)
    return Cache(root), outcomes


def test_concurrent_builders_publish_exactly_one_artifact_folder(raced: Raced) -> None:
    cache, _ = raced

    assert [p.name for p in cache.folder(KEY).parent.iterdir()] == ["v1"]


def test_concurrent_builders_leave_the_published_content_intact(raced: Raced) -> None:
    cache, _ = raced
    artifact = cache.lookup(KEY)

    assert artifact is not None
    assert artifact.verify() == []
    assert [path.read_bytes() for path in artifact.files] == [DATA, INDEX]


def test_concurrent_builders_leave_no_temp_folders_or_lock_files(raced: Raced) -> None:
    cache, _ = raced

    assert debris(cache.root) == []


def test_every_concurrent_builder_gets_the_same_artifact(raced: Raced) -> None:
    cache, outcomes = raced
    artifact = cache.lookup(KEY)

    assert artifact is not None
    assert [checksum for _, checksum in outcomes] == [artifact.checksum] * PROCESSES


def test_the_lock_lets_only_one_of_the_concurrent_builders_build(raced: Raced) -> None:
    _, outcomes = raced

    assert sorted(built for built, _ in outcomes) == [False] * (PROCESSES - 1) + [True]


def _die_mid_build(root: str) -> None:
    """Take the lock, write half of the main file, then die the way an OOM kill does."""
    draft = Cache(root).begin(KEY)
    assert isinstance(draft, Draft)
    with open(draft.dir / "sorted.bam", "wb") as handle:
        handle.write(DATA[: len(DATA) // 2])
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture
def killed(tmp_path: Path) -> Path:
    """A cache root whose only builder was SIGKILLed halfway through its draft."""
    root = tmp_path / "cache"
    builder = CONTEXT.Process(target=_die_mid_build, args=(str(root),))
    builder.start()
    builder.join(timeout=60)
    assert builder.exitcode == -signal.SIGKILL
    return root


def test_a_killed_builder_leaves_no_artifact_visible(killed: Path) -> None:
    cache = Cache(killed)

    assert cache.lookup(KEY) is None
    assert not cache.folder(KEY).exists()


def test_a_killed_builder_leaves_only_its_temp_folder_behind(killed: Path) -> None:
    names = [p.name for p in Cache(killed).folder(KEY).parent.iterdir()]

    assert len([name for name in names if name.startswith(".v1.tmp.")]) == 1


def test_a_killed_builder_releases_its_lock(killed: Path) -> None:
    cache = Cache(killed, lock_timeout=2)

    draft = cache.begin(KEY)

    assert isinstance(draft, Draft)
    cache.discard(draft)


def test_the_next_builder_sweeps_the_killed_builders_temp_folder(killed: Path) -> None:
    cache = Cache(killed, lock_timeout=2)

    draft = cache.begin(KEY)

    assert isinstance(draft, Draft)
    assert [p.name for p in cache.folder(KEY).parent.glob(".v1.tmp.*")] == [draft.dir.name]
    cache.discard(draft)


def test_the_next_builder_after_a_kill_publishes_intact_files(killed: Path) -> None:
    cache = Cache(killed, lock_timeout=2)
    draft = cache.begin(KEY)
    assert isinstance(draft, Draft)
    write_files(draft)

    publish(cache, draft)

    artifact = cache.lookup(KEY)
    assert artifact is not None
    assert artifact.verify() == []
    assert debris(killed) == []
