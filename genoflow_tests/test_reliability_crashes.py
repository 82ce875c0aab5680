"""SIGKILL a builder at each moment that matters, then read, then run again (issue 5 §2).

A ``genoflow run`` child is killed at one moment: during staging, during sorting, between the
data and the marker, between the marker and the rename, between the rename and the registry
write, and during replication to a bucket. Sorting lasts long enough to be caught from outside:
the test watches the disk and sends SIGKILL. The other moments last microseconds, so the child
arms a trigger (a wrapper around one project function, installed in that child only) that
SIGKILLs its own process there; nothing in the package knows about it.

After each kill: :func:`classify` reads the moment back from what is on disk (the same reading
``scripts/stress_kills.py`` uses on its 200 random kills); a reader sees no partial artifact;
the next run completes, sweeps the dead temp folders, reclaims the dead run's pending replicas,
and leaves a consistent registry.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pytest

from genoflow.storage.cache import MARKER

from .support.gcs_emulator import GcsEmulator, gcs_emulator  # noqa: F401
from .test_reliability_concurrency import (
    REPO,
    artifacts,
    cli_env,
    content_problems,
    debris,
    finish,
    launch,
    readable_replica_problems,
    registry_problems,
    replica_rows,
)

# ruff: noqa: F811 - pytest fixtures imported from the emulator module

# --- the moments, and the triggers armed inside a child -----------------------------------------


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _DyingReader:
    """A source file that kills its reader once ``after`` bytes were delivered."""

    def __init__(self, handle: BinaryIO, after: int) -> None:
        self._handle, self._after, self._delivered = handle, after, 0

    def read(self, size: int = -1) -> bytes:
        if self._delivered >= self._after:
            _die()
        data = self._handle.read(size)
        self._delivered += len(data)
        return data

    def fileno(self) -> int:
        return self._handle.fileno()

    def __enter__(self) -> _DyingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


def _arm_staging() -> None:
    from genoflow.storage import staging

    # Every local opener (plain and confined to the allowed roots) opens through _open_file.
    real = staging._open_file

    def open_file(uri: str, roots: Any) -> _DyingReader:
        handle = real(uri, roots)
        return _DyingReader(handle, after=os.fstat(handle.fileno()).st_size // 2)

    staging._open_file = open_file


def _arm(module: Any, name: str, *, when: Callable[..., bool] = lambda *a, **k: True) -> None:
    """Replace ``module.name`` by a wrapper that dies when ``when(*args)`` holds, else calls it."""
    real = getattr(module, name)

    def dying(*args: Any, **kwargs: Any) -> Any:
        if when(*args, **kwargs):
            _die()
        return real(*args, **kwargs)

    setattr(module, name, dying)


def _arm_before_marker() -> None:
    from genoflow.storage import cache

    _arm(cache, "_write_marker")


def _arm_before_rename() -> None:
    from genoflow.storage import atomic

    _arm(atomic, "publish_dir")


def _arm_before_register() -> None:
    from genoflow.storage.node import Node

    _arm(Node, "register")


def _arm_replicating() -> None:
    from genoflow.storage.gcs import GcsLocation

    # The data objects are up; the marker that would make them an artifact is not.
    _arm(GcsLocation, "put", when=lambda _self, _src, path, **_: path.endswith(f"/{MARKER}"))


TRIGGERS: dict[str, Callable[[], None]] = {
    "staging": _arm_staging,
    "before-marker": _arm_before_marker,
    "before-rename": _arm_before_rename,
    "before-register": _arm_before_register,
    "replicating": _arm_replicating,
}


def run_armed(moment: str, argv: list[str]) -> int:
    """The child's entry point: arm the trigger of ``moment``, then run ``genoflow ARGV``."""
    TRIGGERS[moment]()
    from genoflow.cli import main

    return main(argv)


def launch_armed(home: Path, moment: str, *args: str, env: dict[str, str]) -> subprocess.Popen:
    """Start ``genoflow ARGS`` in a child that kills itself at ``moment``."""
    code = (
        "import sys; from genoflow_tests.test_reliability_crashes import run_armed; "
        "sys.exit(run_armed(sys.argv[1], sys.argv[2:]))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, moment, *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_when(child: subprocess.Popen, condition: Callable[[], bool], timeout: float = 300) -> None:
    """SIGKILL ``child`` from outside as soon as ``condition()`` holds (polled every 2 ms)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if child.poll() is not None or time.monotonic() > deadline:
            return
        time.sleep(0.002)
    child.send_signal(signal.SIGKILL)


def sorting(home: Path) -> bool:
    """A ``sorted`` draft exists and its sort's scratch folder too: a sort is running."""
    drafts = list((home / "cache").glob("*/*/*/sorted/.v*.tmp.*"))
    return bool(drafts) and any((home / "work").glob(".*-sorted.tmp.*"))


# --- reading the moment back from the disk ------------------------------------------------------


def drafts(home: Path) -> list[Path]:
    """Private temp folders next to artifact folders (a build in progress, or a dead one's)."""
    return sorted(p for p in (home / "cache").glob("*/*/*/*/.*.tmp.*") if p.is_dir())


def bucket_objects(objects: Path | None) -> list[Path]:
    """Every object file the emulator keeps (its bucket metadata files excluded)."""
    if objects is None or not objects.exists():
        return []
    return [p for p in objects.rglob("*") if p.is_file() and p.parent != objects]


def bucket_partials(objects: Path | None) -> list[str]:
    """Data objects whose artifact has no marker: not an artifact, debris of a dead copy."""
    return sorted(
        str(p.relative_to(objects))
        for p in bucket_objects(objects)
        if not (p.parent / MARKER).exists() and objects is not None
    )


def bucket_problems(objects: Path | None) -> list[str]:
    """Artifacts in the bucket (marker present) whose files are missing or differ."""
    from .test_reliability_concurrency import marker_problems

    markers = [p for p in bucket_objects(objects) if p.name == MARKER]
    return [problem for marker in markers for problem in marker_problems(marker.parent)]


def classify(home: Path, objects: Path | None = None, md5: str = "") -> str:
    """Say at which moment a killed ``genoflow run`` died, from what it left on disk.

    Args:
        home: the killed run's GENOFLOW_HOME.
        objects: the emulator's object folder, when the run replicated to a bucket.
        md5: the source the run was building, when the home also holds older artifacts.
    """
    for draft in drafts(home):
        asset, names = draft.parent.name, {p.name for p in draft.iterdir()}
        if MARKER in names:
            return "before-rename"
        if asset == "source":
            return "staging" if not names or "staged" in names else "before-marker"
        if asset == "sorted":
            sorting_now = any((home / "work").glob(".*-sorted.tmp.*"))
            return "sorting" if sorting_now or not names else "before-marker"
        return "indexing"
    rows = replica_rows(home / "registry.db")
    if any(row[6] == "pending" for row in rows) or bucket_partials(objects):
        return "replicating"
    registered = {row[0] for row in rows if not row[3].startswith("gs://")}
    if set(artifacts(home)) - registered:
        return "before-register"
    built = [key for key in artifacts(home) if md5 in key]
    if not built:
        return "before-any-build"
    return "after-last-step" if any("/index/" in key for key in built) else "between-steps"


def reader_problems(home: Path, objects: Path | None = None) -> list[str]:
    """What a reader could be handed that is not a whole artifact: in the cache, through the
    registry, or in the bucket."""
    return (
        content_problems(home)
        + readable_replica_problems(home / "registry.db", objects)
        + bucket_problems(objects)
    )


# --- inputs -------------------------------------------------------------------------------------


def write_big_bed(folder: Path, seed: int, lines: int = 250_000) -> Path:
    """A shuffled BED of a few MB (several staging chunks, a sort that lasts), and its manifest."""
    import hashlib

    rng = random.Random(seed)
    rows = [
        f"chr{rng.randint(1, 22)}\t{start}\t{start + rng.randint(1, 900)}\tpeak{i}_{seed}\n"
        for i, start in enumerate(rng.randrange(0, 2_000_000_000) for _ in range(lines))
    ]
    data = "".join(rows).encode()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"peaks_{seed}.bed").write_bytes(data)
    manifest = folder / f"m_{seed}.tsv"
    md5 = hashlib.md5(data).hexdigest()
    manifest.write_text(f"name\turi\tmd5\npeaks_{seed}.bed\tpeaks_{seed}.bed\t{md5}\n")
    return manifest


# --- one kill and the run after it ---------------------------------------------------------------


@dataclass
class Crash:
    """What one killed run left, and what the next run made of it."""

    moment: str
    status: int
    seen_as: str
    reader_problems: list[str]
    debris_after_kill: list[str]
    pending_after_kill: int
    partials_after_kill: list[str]
    next_status: int
    next_records: list[dict[str, Any]]
    next_stderr: str
    debris: list[str]
    registry_problems: list[str]
    partials: list[str]
    reader_problems_after: list[str]
    run_statuses: list[str]


def run_statuses(home: Path) -> list[str]:
    """The status of every run in the Dagster instance under ``home``."""
    connection = sqlite3.connect(home / "dagster" / "history" / "runs.db")
    try:
        return [status for (status,) in connection.execute("SELECT status FROM runs")]
    finally:
        connection.close()


MOMENTS = ("staging", "sorting", "before-marker", "before-rename", "before-register", "replicating")


def crash_and_recover(
    home: Path, manifest: Path, moment: str, env: dict[str, str], objects: Path | None
) -> Crash:
    """Kill a run at ``moment``, look at the disk, run again, look again."""
    if moment == "sorting":
        child = launch(home, "run", str(manifest), env=env)
        kill_when(child, lambda: sorting(home))
    else:
        child = launch_armed(home, moment, "run", str(manifest), env=env)
    status, _, _ = finish(child)
    after_kill = {
        "seen_as": classify(home, objects),
        "reader_problems": reader_problems(home, objects),
        "debris_after_kill": debris(home),
        "pending_after_kill": sum(
            row[6] == "pending" for row in replica_rows(home / "registry.db")
        ),
        "partials_after_kill": bucket_partials(objects),
    }
    next_status, out, err = finish(launch(home, "run", str(manifest), "--json", env=env))
    return Crash(
        moment,
        status,
        next_status=next_status,
        next_records=json.loads(out or "[]"),
        next_stderr=err,
        debris=debris(home),
        registry_problems=registry_problems(home, objects=objects),
        partials=bucket_partials(objects),
        reader_problems_after=reader_problems(home, objects),
        run_statuses=run_statuses(home),
        **after_kill,
    )


@pytest.fixture(scope="module")
def big_bed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_big_bed(tmp_path_factory.mktemp("inputs"), seed=7)


@pytest.fixture(scope="module", params=MOMENTS)
def crash(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    big_bed: Path,
    gcs_emulator: GcsEmulator,
) -> Crash:
    """One run killed at the parametrized moment, then the run after it."""
    moment = request.param
    home = tmp_path_factory.mktemp(f"killed-{moment}") / "home"
    env, objects = cli_env(home), None
    if moment == "replicating":
        bucket = "killed-while-replicating"
        gcs_emulator.create_bucket(bucket)
        env |= {
            "STORAGE_EMULATOR_HOST": gcs_emulator.endpoint,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "GENOFLOW_REPLICAS": f"gs://{bucket}/genoflow",
        }
        objects = gcs_emulator.root
    return crash_and_recover(home, big_bed, moment, env, objects)


def test_the_builder_is_killed_at_its_moment_and_the_disk_says_which(crash: Crash) -> None:
    assert crash.status == -signal.SIGKILL
    assert crash.seen_as == crash.moment


def test_a_reader_sees_no_partial_artifact_after_the_kill(crash: Crash) -> None:
    assert crash.reader_problems == []


def test_the_run_after_the_kill_completes_every_asset(crash: Crash) -> None:
    assert crash.next_status == 0, crash.next_stderr
    (record,) = crash.next_records
    assert set(record["assets"].values()) <= {"built", "cached"}, record


def test_the_run_after_the_kill_leaves_no_temp_folder_or_lock_file(crash: Crash) -> None:
    assert crash.debris == []


def test_the_run_after_the_kill_leaves_a_consistent_registry_and_bucket(crash: Crash) -> None:
    assert crash.registry_problems == []
    assert crash.partials == []
    assert crash.reader_problems_after == []


@pytest.mark.parametrize(
    "crash", ["staging", "sorting", "before-marker", "before-rename"], indirect=True
)
def test_the_kill_left_a_dead_temp_folder_that_the_next_run_swept(crash: Crash) -> None:
    assert [name for name in crash.debris_after_kill if ".tmp." in name]
    assert crash.debris == []


@pytest.mark.parametrize("crash", ["replicating"], indirect=True)
def test_the_pending_replica_of_the_dead_run_is_reclaimed(crash: Crash) -> None:
    assert crash.pending_after_kill == 1
    assert crash.partials_after_kill  # data objects up, marker not: no artifact
    assert crash.partials == []
    assert crash.registry_problems == []


@pytest.mark.parametrize("crash", ["sorting"], indirect=True)
def test_the_run_of_a_killed_builder_is_not_left_in_progress(crash: Crash) -> None:
    assert "STARTED" not in crash.run_statuses
