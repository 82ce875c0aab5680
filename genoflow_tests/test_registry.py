"""The source registry: WAL SQLite, idempotent registration, filters, and concurrent writers.

Contention is never a failure: a registry call waits out another connection's lock, and only
past its busy timeout says so, as "busy", never as an unreachable database.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from genoflow.core.errors import StorageError
from genoflow.storage.registry import Registry, SourceRow
from genoflow_tests.support.processes import race
from genoflow_tests.support.rows import row

PROCESSES = 4


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    opened = Registry(tmp_path / "registry.sqlite")
    yield opened
    opened.close()


def test_creates_the_sqlite_file_in_wal_mode(tmp_path: Path) -> None:
    Registry(tmp_path / "state" / "registry.sqlite").close()

    with sqlite3.connect(tmp_path / "state" / "registry.sqlite") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_register_returns_how_many_rows_were_new(registry: Registry) -> None:
    assert registry.register([row(1), row(2)]) == 2


def test_registering_the_same_rows_again_adds_nothing(registry: Registry) -> None:
    registry.register([row(1), row(2)])

    assert registry.register([row(1), row(2)]) == 0
    assert len(registry.rows()) == 2


def test_registering_no_rows_adds_nothing(registry: Registry) -> None:
    assert registry.register([]) == 0


def test_a_replica_of_a_known_md5_is_a_new_row(registry: Registry) -> None:
    registry.register([row(1)])

    added = registry.register([row(1, uri="https://mirror.example/peaks1.bed")])

    assert added == 1
    assert [r.uri for r in registry.rows(f"{1:032x}")] == [
        "/data/peaks1.bed",
        "https://mirror.example/peaks1.bed",
    ]


def test_rows_round_trip_every_field(registry: Registry) -> None:
    original = row(7, size=None, extra={"assay": "ChIP-seq", "note": "caf\u00e9"})
    registry.register([original])

    assert registry.rows() == [
        SourceRow(
            md5=original.md5,
            name=original.name,
            uri=original.uri,
            format="bed",
            family="intervals",
            size=None,
            manifest="manifests/lab.tsv",
            line=9,
            extra={"assay": "ChIP-seq", "note": "caf\u00e9"},
        )
    ]


def test_rows_of_an_md5_returns_only_that_sources_rows(registry: Registry) -> None:
    registry.register([row(1), row(2), row(1, manifest="manifests/other.tsv")])

    rows = registry.rows(f"{1:032x}")

    assert [(r.md5, r.manifest) for r in rows] == [
        (f"{1:032x}", "manifests/lab.tsv"),
        (f"{1:032x}", "manifests/other.tsv"),
    ]


def test_md5s_of_a_family_returns_only_that_familys_sources(registry: Registry) -> None:
    registry.register([row(1), row(2, family="alignments", format="bam"), row(3)])

    assert registry.md5s("intervals") == [f"{1:032x}", f"{3:032x}"]


def test_md5s_are_distinct(registry: Registry) -> None:
    registry.register([row(1), row(1, uri="/mirror/peaks1.bed"), row(2)])

    assert registry.md5s() == [f"{1:032x}", f"{2:032x}"]


def test_a_second_registry_on_the_same_file_sees_the_rows(tmp_path: Path) -> None:
    first = Registry(tmp_path / "registry.sqlite")
    first.register([row(1)])
    first.close()

    second = Registry(tmp_path / "registry.sqlite")

    assert second.md5s() == [f"{1:032x}"]
    second.close()


def _register_overlapping(path: str, start: int, barrier: Barrier, results: Queue) -> None:
    """Open the registry with every rival at once, then register 40 rows in small batches."""
    try:
        barrier.wait(timeout=60)
        registry = Registry(path)
        added = sum(registry.register([row(n)]) for n in range(start, start + 40))
        registry.close()
        results.put(("ok", added))
    except Exception as exc:  # sent to the parent, which fails the test with it
        results.put(("error", repr(exc)))


def test_concurrent_registration_leaves_no_duplicates_and_no_lock_errors(tmp_path: Path) -> None:
    path = str(tmp_path / "registry.sqlite")
    # Process i registers sources 10*i .. 10*i+39: each source is offered by up to four processes.
    outcomes = race(_register_overlapping, [(path, 10 * i) for i in range(PROCESSES)]).outcomes

    assert [status for status, _ in outcomes] == ["ok"] * PROCESSES, outcomes
    registry = Registry(path)
    assert len(registry.rows()) == 70
    assert registry.md5s() == [f"{n:032x}" for n in range(70)]
    assert sum(added for _, added in outcomes) == 70
    registry.close()


def test_a_registry_opened_while_another_connection_writes_a_new_file_waits_instead_of_failing(
    tmp_path: Path,
) -> None:
    # A rollback-journal file with a writer mid-transaction: switching it to WAL answered
    # SQLITE_BUSY at once, without the busy handler, which is how processes opening a new
    # registry at the same moment failed each other.
    path = tmp_path / "registry.sqlite"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE other (x)")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO other VALUES (1)")
    release = threading.Timer(1.0, writer.execute, args=("COMMIT",))
    release.start()
    started = time.monotonic()

    registry = Registry(path)

    release.join()
    writer.close()
    assert time.monotonic() - started >= 0.9
    assert registry.register([row(1)]) == 1
    registry.close()
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_registry_locked_past_its_timeout_says_busy_and_keeps_sqlites_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "registry.sqlite"
    registry = Registry(path, busy_timeout=0.5)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")

    with pytest.raises(StorageError) as raised:
        registry.register([row(1)])

    holder.execute("ROLLBACK")
    holder.close()
    message = str(raised.value)
    assert "busy" in message
    assert "database is locked (SQLITE_BUSY" in message
    assert "0.5 s" in message
    assert "reachable" not in message
    assert "GENOFLOW_REGISTRY_URL" not in message
    assert registry.register([row(1)]) == 1  # the same registry works once the lock is gone
    registry.close()


def _open_new_registries_together(paths: list[str], barrier: Barrier, results: Queue) -> None:
    """For each path, open a new registry file at the same moment as every rival, register."""
    outcomes = []
    for number, path in enumerate(paths):
        try:
            barrier.wait(timeout=120)
            registry = Registry(path)
            registry.register([row(number)])
            registry.close()
            outcomes.append("ok")
        except Exception as exc:  # sent to the parent, which fails the test with it
            outcomes.append(repr(exc))
    results.put(outcomes)


def test_processes_opening_a_new_registry_file_at_the_same_moment_all_succeed(
    tmp_path: Path,
) -> None:
    rounds, processes = 5, 6
    paths = [str(tmp_path / f"round{n}" / "registry.sqlite") for n in range(rounds)]
    outcomes = race(_open_new_registries_together, [(paths,)] * processes, timeout=240).outcomes

    failures = [o for outcome in outcomes for o in outcome if o != "ok"]
    assert failures == [], failures
    for number, path in enumerate(paths):
        registry = Registry(path)
        assert registry.md5s() == [f"{number:032x}"]
        registry.close()
