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
import signal
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .support.crashes import (
    MOMENTS,
    bucket_partials,
    classify,
    kill_when,
    launch_armed,
    reader_problems,
    sorting,
    write_big_bed,
)
from .support.deployments import (
    cli_env,
    debris,
    finish,
    launch,
    registry_problems,
    replica_rows,
)
from .support.gcs_emulator import GcsEmulator, gcs_emulator  # noqa: F401

pytestmark = pytest.mark.system  # starts a server (see pyproject markers)

# ruff: noqa: F811 - pytest fixtures imported from the emulator module

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
