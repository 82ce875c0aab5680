"""Concurrent builders: 8 ``genoflow run`` on one home, and two deployments racing to one bucket.

The promises checked (issue 5 §1): every process exits 0; each (asset, md5, version) has exactly
one artifact, byte-identical to a single-process run; no temp folder or lock file is left in the
cache or the work folder; the registry has no duplicate, pending or dangling row; Dagster's
SQLite instance recorded every run as a success ("database is locked" is a failure). The
helpers here are shared with ``scripts/stress_concurrency.py``, which repeats the race 100 times.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from genoflow.config import Settings
from genoflow.storage.cache import MARKER, Cache, Draft
from genoflow.storage.gcs import GcsLocation
from genoflow.storage.layout import ArtifactKey
from genoflow.storage.node import Node
from genoflow.storage.transfer import inspect

from .conftest import DATA
from .support.gcs_emulator import GcsEmulator, gcs_emulator, use_emulator  # noqa: F401

# ruff: noqa: F811 - pytest fixtures imported from the emulator module

REPO = Path(__file__).resolve().parent.parent
DEMO = DATA / "manifests" / "demo"
# An interval file and a passthrough one: 8 interpreters starting at once cost most of the time,
# so the test keeps the runs few; scripts/stress_concurrency.py adds an alignment file.
INPUTS = ("trio.vcf", "samples.csv")
PROCESSES = 8
CONTEXT = multiprocessing.get_context("spawn")


# --- running genoflow -------------------------------------------------------------------------


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``genoflow`` child on ``home`` (its Dagster instance inside)."""
    env = {**os.environ, "GENOFLOW_HOME": str(home), "GENOFLOW_THREADS": "1", **extra}
    env.pop("DAGSTER_HOME", None)
    return env


def launch(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``genoflow ARGS`` on ``home`` without waiting; output is piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "genoflow.cli", *args],
        env=env or cli_env(home),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = 600) -> tuple[int, str, str]:
    """Wait for a launched child; return its exit status, stdout and stderr."""
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def write_manifest(folder: Path, names: tuple[str, ...] = INPUTS) -> Path:
    """Copy demo files into ``folder`` and list them in ``folder/m.tsv``."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["name\turi\tmd5"]
    for name in names:
        shutil.copy(DEMO / name, folder / name)
        lines.append(f"{name}\t{name}\t{hashlib.md5((folder / name).read_bytes()).hexdigest()}")
    manifest = folder / "m.tsv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


# --- what a home must look like afterwards ----------------------------------------------------


def artifacts(home: Path) -> dict[str, dict[str, str]]:
    """Every published artifact folder (relative path) → {file name: md5}, marker excluded."""
    found = {}
    for marker in (home / "cache").rglob(MARKER):
        folder = marker.parent
        found[str(folder.relative_to(home / "cache"))] = {
            entry["name"]: entry["md5"] for entry in json.loads(marker.read_text())["files"]
        }
    return found


def content_problems(home: Path) -> list[str]:
    """What a reader of the cache could trip on: files that differ from the md5 their marker
    lists, and artifact folders without a marker (temp folders, hidden, are no artifacts)."""
    problems = []
    for relpath, files in artifacts(home).items():
        for name, expected in files.items():
            path = home / "cache" / relpath / name
            if not path.is_file() or md5_of(path) != expected:
                problems.append(f"{relpath}/{name}: missing, or bytes differ from its marker")
    for folder in (home / "cache").glob("*/*/*/*/*"):
        if folder.is_dir() and not folder.name.startswith(".") and not (folder / MARKER).is_file():
            problems.append(f"{folder.relative_to(home)}: an artifact folder without its marker")
    return problems


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def marker_problems(folder: Path, checksum: str | None = None) -> list[str]:
    """Problems of the artifact in ``folder`` (a cache folder, or an object prefix on the
    emulator's disk): no marker, another checksum than ``checksum``, or a file that differs."""
    marker = folder / MARKER
    if not marker.is_file():
        return [f"{folder}: no {MARKER}"]
    listed = json.loads(marker.read_text())
    problems = [f"{folder}: holds {listed['checksum']}, not {checksum}"] if checksum and (
        listed["checksum"] != checksum) else []  # fmt: skip
    for entry in listed["files"]:
        path = folder / entry["name"]
        if not path.is_file() or md5_of(path) != entry["md5"]:
            problems.append(f"{folder}/{entry['name']}: missing, or bytes differ from its marker")
    return problems


def debris(home: Path) -> list[str]:
    """Temp folders and lock files left in the cache and the work folder."""
    found = []
    for top in (home / "cache", home / "work"):
        for path in top.rglob("*") if top.exists() else []:
            if ".tmp." in path.name or path.name.endswith(".lock"):
                found.append(str(path.relative_to(home)))
    return sorted(found)


def replica_rows(registry: Path) -> list[tuple[str, ...]]:
    """(key, checksum, location, root, path, data type, state) of every replica row."""
    if not registry.exists():
        return []
    connection = sqlite3.connect(registry)
    try:
        return connection.execute(
            "SELECT a.key, a.checksum, l.name, l.root, r.path, r.data_type, r.state "
            "FROM replica r JOIN artifact a ON a.id = r.artifact_id "
            "JOIN location l ON l.id = r.location_id"
        ).fetchall()
    finally:
        connection.close()


def replica_folder(root: str, path: str, objects: Path | None) -> Path | None:
    """Where a replica's files are on this machine: its local folder, or, for ``gs://`` roots,
    the emulator's object folder ``objects`` (None when there is none to look at)."""
    if not root.startswith("gs://"):
        return Path(root, path)
    return None if objects is None else objects / root.removeprefix("gs://") / path


def readable_replica_problems(registry: Path, objects: Path | None = None) -> list[str]:
    """Replicas a reader would be handed (available, not INVALID) that do not hold the artifact."""
    problems = []
    for key, checksum, _, root, path, data_type, state in replica_rows(registry):
        folder = replica_folder(root, path, objects)
        if state == "available" and data_type != "INVALID" and folder is not None:
            problems += [f"{key}: {p}" for p in marker_problems(folder, checksum)]
    return problems


def registry_problems(
    home: Path, registry: Path | None = None, objects: Path | None = None
) -> list[str]:
    """Duplicate source rows; duplicate, pending, INVALID or dangling replica rows; artifacts of
    ``home``'s cache without a registered replica."""
    registry = registry or home / "registry.db"
    connection = sqlite3.connect(registry)
    try:
        sources = connection.execute(
            "SELECT md5, name, uri, manifest, count(*) FROM source_row "
            "GROUP BY md5, name, uri, manifest HAVING count(*) > 1"
        ).fetchall()
    finally:
        connection.close()
    rows = replica_rows(registry)
    problems = [f"source row registered {row[-1]} times: {row[:2]}" for row in sources]
    counts = Counter((location, path) for _, _, location, _, path, _, _ in rows)
    problems += [f"{where} has {n} replica rows" for where, n in counts.items() if n > 1]
    problems += [f"{row[0]}: replica {row[5]} {row[6]} at {row[3]}" for row in rows
                 if row[6] != "available" or row[5] == "INVALID"]  # fmt: skip
    problems += readable_replica_problems(registry, objects)
    registered = {key for key, *_ in rows}
    problems += [f"{key}: published but not registered" for key in artifacts(home) if
                 key not in registered]  # fmt: skip
    return problems


def dagster_problems(home: Path, outcomes: list[tuple[int, str, str]]) -> list[str]:
    """Runs of the Dagster instance under ``home`` that did not succeed, and sources a process
    reported without a successful run behind them.

    A process that starts after another built a source finds its chain up to date and launches
    no run (it names the run that built it), so there are between one and ``processes`` runs per
    source, every one a success.
    """
    connection = sqlite3.connect(home / "dagster" / "history" / "runs.db")
    try:
        status_of = dict(connection.execute("SELECT run_id, status FROM runs"))
    finally:
        connection.close()
    statuses = Counter(status_of.values())
    problems = [f"{n} runs {status}" for status, n in statuses.items() if status != "SUCCESS"]
    reported = [r["run_id"] for _, out, _ in outcomes for r in json.loads(out or "[]")]
    problems += [f"run {run_id} reported but not a success" for run_id in reported
                 if status_of.get(run_id) != "SUCCESS"]  # fmt: skip
    if set(status_of) - set(reported):
        problems.append(f"runs nobody reported: {sorted(set(status_of) - set(reported))}")
    return problems


def race(home: Path, manifest: Path, processes: int = PROCESSES) -> list[tuple[int, str, str]]:
    """Start ``processes`` ``genoflow run`` on one home at once; return each (status, out, err)."""
    children = [launch(home, "run", str(manifest), "--json") for _ in range(processes)]
    return [finish(child) for child in children]


# --- 8 processes, one home --------------------------------------------------------------------


@pytest.fixture(scope="module")
def raced(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A single-process reference home, and a home 8 concurrent runs built."""
    folder = tmp_path_factory.mktemp("raced")
    manifest = write_manifest(folder / "inputs")
    reference = folder / "reference"
    status, _, err = finish(launch(reference, "run", str(manifest)))
    assert status == 0, err
    home = folder / "home"
    return {"reference": reference, "home": home, "outcomes": race(home, manifest)}


def test_every_concurrent_run_exits_0(raced: dict[str, Any]) -> None:
    statuses = [status for status, _, _ in raced["outcomes"]]

    assert statuses == [0] * PROCESSES, [err for _, _, err in raced["outcomes"]]


def test_no_concurrent_run_meets_a_locked_database(raced: dict[str, Any]) -> None:
    said = "".join(out + err for _, out, err in raced["outcomes"])

    assert "database is locked" not in said


def test_every_concurrent_run_reports_each_source_done(raced: dict[str, Any]) -> None:
    for _, out, _ in raced["outcomes"]:
        records = json.loads(out)
        assert sorted(record["name"] for record in records) == sorted(INPUTS)
        states = {state for record in records for state in record["assets"].values()}
        assert states <= {"built", "cached"}, records


def test_concurrent_runs_publish_exactly_the_artifacts_of_a_single_run(
    raced: dict[str, Any],
) -> None:
    assert artifacts(raced["home"]) == artifacts(raced["reference"])


def test_concurrent_runs_publish_intact_folders_only(raced: dict[str, Any]) -> None:
    assert content_problems(raced["home"]) == []


def test_concurrent_runs_leave_no_temp_folder_or_lock_file(raced: dict[str, Any]) -> None:
    assert debris(raced["home"]) == []


def test_concurrent_runs_leave_one_valid_registry_row_per_replica(raced: dict[str, Any]) -> None:
    assert registry_problems(raced["home"]) == []


def test_the_dagster_instance_records_every_concurrent_run_as_a_success(
    raced: dict[str, Any],
) -> None:
    assert dagster_problems(raced["home"], raced["outcomes"]) == []


# --- two deployments, one bucket ----------------------------------------------------------------

ROUNDS = 3


def _publish_locally(home: Path, round_: int) -> ArtifactKey:
    """Publish an artifact (the same bytes on every deployment) into ``home``'s cache."""
    md5 = hashlib.md5(f"race {round_}".encode()).hexdigest()
    key = ArtifactKey("intervals", md5, "sorted", "1")
    cache = Cache(home / "cache")
    draft = cache.begin(key)
    assert isinstance(draft, Draft)
    data = b"".join(b"chr1\t%d\t%d\tround%d\n" % (i, i + 5, round_) for i in range(20000))
    (draft.dir / "sorted.bed.gz").write_bytes(data)
    (draft.dir / "sorted.bed.gz.tbi").write_bytes(hashlib.sha256(data).digest() * 40)
    cache.publish(
        draft, processor="tests.race", details={"files": ["sorted.bed.gz", "sorted.bed.gz.tbi"]}
    )
    return key


def _register_at_once(settings: Settings, keys: list[ArtifactKey], barrier: Barrier,
                      results: Queue) -> None:  # fmt: skip
    """Each round: wait for the rival deployment, then register and replicate, as publish does."""
    node = Node(settings)
    try:
        for key in keys:
            artifact = node.cache.lookup(key)
            assert artifact is not None
            barrier.wait(timeout=60)
            node.register(artifact)
            (remote,) = [r for r in node.replicas_of(key) if r.kind == "gcs"]
            results.put((settings.deployment, str(key.relpath), remote.id, remote.generation))
    finally:
        node.close()


@pytest.fixture(scope="module")
def race_bucket(gcs_emulator: GcsEmulator) -> Iterator[tuple[str, Path]]:
    """A bucket of the session's emulator, with gcsfs pointed at it for this module."""
    with pytest.MonkeyPatch.context() as patch:
        use_emulator(patch, gcs_emulator)
        gcs_emulator.create_bucket("deployment-race")
        yield "deployment-race", gcs_emulator.root


@pytest.fixture(scope="module")
def deployments(
    tmp_path_factory: pytest.TempPathFactory, race_bucket: tuple[str, Path]
) -> dict[str, Any]:
    """Two deployments (own caches, one registry, one bucket) after racing ROUNDS artifacts."""
    tmp_path, (gcs_bucket, objects) = tmp_path_factory.mktemp("deployments"), race_bucket
    registry = tmp_path / "shared-registry.db"
    homes = {"site-a": tmp_path / "a", "site-b": tmp_path / "b"}
    keys = [_publish_locally(home, r) for r in range(ROUNDS) for home in homes.values()][::2]
    barrier, results = CONTEXT.Barrier(2), CONTEXT.Queue()
    workers = []
    for deployment, home in homes.items():
        settings = Settings.from_env(
            {
                "GENOFLOW_HOME": str(home),
                "GENOFLOW_DEPLOYMENT": deployment,
                "GENOFLOW_REPLICAS": f"gs://{gcs_bucket}/genoflow",
                "GENOFLOW_REGISTRY_URL": f"sqlite:///{registry}",
            }
        )
        workers.append(
            CONTEXT.Process(target=_register_at_once, args=(settings, keys, barrier, results))
        )
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in range(2 * ROUNDS)]
    for worker in workers:
        worker.join(timeout=60)
    assert [worker.exitcode for worker in workers] == [0, 0]
    return {"registry": registry, "homes": homes, "keys": keys, "outcomes": outcomes,
            "bucket": gcs_bucket, "objects": objects}  # fmt: skip


def test_racing_deployments_both_end_with_the_same_registered_bucket_replica(
    deployments: dict[str, Any],
) -> None:
    by_key: dict[str, set[tuple[int, str]]] = {}
    for _deployment, relpath, replica_id, generation in deployments["outcomes"]:
        by_key.setdefault(relpath, set()).add((replica_id, generation))

    assert sorted(by_key) == sorted(str(key.relpath) for key in deployments["keys"])
    assert all(len(seen) == 1 for seen in by_key.values()), by_key


def test_racing_deployments_leave_one_marker_whose_generation_is_the_registered_one(
    deployments: dict[str, Any], tmp_path: Path
) -> None:
    location = GcsLocation("check", f"gs://{deployments['bucket']}/genoflow", deployment="gcs")
    registered = {relpath: generation for _, relpath, _, generation in deployments["outcomes"]}
    for key in deployments["keys"]:
        found = inspect(location, str(key.relpath), tmp_path, full=True)
        assert found.problems == []
        assert found.generation == registered[str(key.relpath)]


def test_racing_deployments_leave_a_consistent_registry(deployments: dict[str, Any]) -> None:
    for home in deployments["homes"].values():
        problems = registry_problems(home, deployments["registry"], deployments["objects"])
        assert problems == []
