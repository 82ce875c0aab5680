"""Concurrent builders: 8 ``genoflow run`` on one home, and two deployments racing to one bucket.

The promises checked (issue 5 §1): every process exits 0; each (asset, md5, version) has exactly
one artifact, byte-identical to a single-process run; no temp folder or lock file is left in the
cache or the work folder; the registry has no duplicate, pending or dangling row; Dagster's
SQLite instance recorded every run as a success ("database is locked" is a failure). The
helpers live in ``support/deployments.py``, shared with ``scripts/stress_concurrency.py``, which
repeats the race 100 times.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from genoflow.core.settings import Settings
from genoflow.storage.cache import Cache, Draft
from genoflow.storage.gcs import GcsLocation
from genoflow.storage.layout import ArtifactKey
from genoflow.storage.node import Node
from genoflow.storage.transfer import inspect

from .support.deployments import (
    CONTEXT,
    INPUTS,
    PROCESSES,
    artifacts,
    content_problems,
    dagster_problems,
    debris,
    finish,
    launch,
    race,
    registry_problems,
    write_manifest,
)
from .support.gcs_emulator import GcsEmulator, gcs_emulator, use_emulator  # noqa: F401

pytestmark = pytest.mark.system  # starts a server (see pyproject markers)

# ruff: noqa: F811 - pytest fixtures imported from the emulator module

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
