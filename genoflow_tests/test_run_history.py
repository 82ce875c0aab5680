"""Chains up to date from the embedded instance's run history, with and without Dagster."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.tags import PARTITION_NAME_TAG

from genoflow.build.steps import chain_version, job_name
from genoflow.core.settings import Settings
from genoflow.defs.tags import CHAIN_TAG
from genoflow.instance.home import ensure_dagster_home
from genoflow.instance.run_history import chains_up_to_date, successful_chain_runs
from genoflow.instance.runner import up_to_date

from .conftest import run_cli


@pytest.fixture
def instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DagsterInstance:
    settings = Settings.from_env({"GENOFLOW_HOME": str(tmp_path)})
    monkeypatch.setenv("DAGSTER_HOME", str(ensure_dagster_home(settings)))
    return DagsterInstance.get()


def _add_run(
    instance: DagsterInstance,
    family: str,
    md5: str,
    status: DagsterRunStatus = DagsterRunStatus.SUCCESS,
    chain: str | None = None,
    job: str | None = None,
) -> str:
    run_id = str(uuid.uuid4())
    tags = {PARTITION_NAME_TAG: md5, CHAIN_TAG: chain or chain_version(family)}
    job = job or job_name(family)
    instance.add_run(DagsterRun(job, run_id=run_id, status=status, tags=tags))
    return run_id


def test_the_database_and_dagsters_api_name_the_same_runs(instance, tmp_path) -> None:
    older = _add_run(instance, "intervals", "a" * 32)
    newer = _add_run(instance, "intervals", "a" * 32)
    bam = _add_run(instance, "alignments", "b" * 32)
    _add_run(instance, "intervals", "c" * 32, status=DagsterRunStatus.FAILURE)
    _add_run(instance, "intervals", "d" * 32, status=DagsterRunStatus.STARTED)
    _add_run(instance, "intervals", "e" * 32, chain="source1.sorted1.index1")
    _add_run(instance, "alignments", "f" * 32, job="some_other_job")
    work = [(c * 32, f) for c in "abcdef" for f in ("intervals", "alignments")]

    found = successful_chain_runs(tmp_path / "dagster", ["intervals", "alignments"])
    assert found == {("intervals", "a" * 32): newer, ("alignments", "b" * 32): bam}
    assert older not in found.values()
    everything = lambda _key: object()  # noqa: E731 - every artifact in the cache
    assert chains_up_to_date(found, everything, work) == up_to_date(instance, everything, work)


def test_a_missing_artifact_is_not_up_to_date(instance, tmp_path) -> None:
    _add_run(instance, "intervals", "a" * 32)
    found = successful_chain_runs(tmp_path / "dagster", ["intervals"])
    no_index = lambda key: None if key.asset == "index" else object()  # noqa: E731
    assert chains_up_to_date(found, no_index, [("a" * 32, "intervals")]) == {}


def test_another_instance_configuration_is_not_read(instance, tmp_path) -> None:
    _add_run(instance, "intervals", "a" * 32)
    config = tmp_path / "dagster" / "dagster.yaml"
    config.write_text(config.read_text() + "run_monitoring:\n  enabled: true\n")
    assert successful_chain_runs(tmp_path / "dagster", ["intervals"]) is None
    assert successful_chain_runs(tmp_path / "nowhere", ["intervals"]) is None


def test_an_unreadable_run_database_is_no_answer(instance, tmp_path) -> None:
    (tmp_path / "dagster" / "history" / "runs.db").write_bytes(b"not a database" * 100)
    assert successful_chain_runs(tmp_path / "dagster", ["intervals"]) is None


NO_DAGSTER = """
import sys
from genoflow.cli import main
status = main(["run", "--json", sys.argv[1]])
loaded = sorted(name for name in sys.modules if name.split(".")[0] == "dagster")
print("DAGSTER MODULES", len(loaded), file=sys.stderr)
sys.exit(status or (3 if loaded else 0))
"""


def _small_manifest(folder: Path) -> Path:
    folder.mkdir()
    lines = ["name\turi\tmd5\n"]
    for n in range(2):
        bed = folder / f"peaks{n}.bed"
        bed.write_text("".join(f"chr{n + 1}\t{i * 10}\t{i * 10 + 5}\n" for i in range(50, 0, -1)))
        lines.append(f"{bed.name}\t{bed.name}\t{hashlib.md5(bed.read_bytes()).hexdigest()}\n")
    manifest = folder / "manifest.tsv"
    manifest.write_text("".join(lines))
    return manifest


def test_a_built_manifest_runs_again_without_starting_dagster(tmp_path) -> None:
    manifest = _small_manifest(tmp_path / "inputs")
    home = tmp_path / "home"
    first = run_cli(home, "run", str(manifest), "--json")
    assert first.returncode == 0, first.stderr
    env = {"GENOFLOW_HOME": str(home)}
    again = subprocess.run(
        [sys.executable, "-c", NO_DAGSTER, str(manifest)],
        capture_output=True,
        text=True,
        env={**_environ(), **env},
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    records = json.loads(again.stdout)
    assert {r["name"]: r["run_id"] for r in records} == {
        r["name"]: r["run_id"] for r in json.loads(first.stdout)
    }
    assert all(set(r["assets"].values()) == {"cached"} for r in records)


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("GENOFLOW_", "DAGSTER_"))}


def test_on_an_instance_of_the_users_own_dagster_asks_dagster_and_launches_nothing(
    tmp_path,
) -> None:
    manifest = _small_manifest(tmp_path / "inputs")
    home = tmp_path / "home"
    (home / "dagster").mkdir(parents=True)
    (home / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    first = run_cli(home, "run", str(manifest), "--json")
    assert first.returncode == 0, first.stderr
    assert successful_chain_runs(home / "dagster", ["intervals"]) is None  # not genoflow's yaml
    again = run_cli(home, "run", str(manifest), "--json")
    assert again.returncode == 0, again.stderr
    records = json.loads(again.stdout)
    assert all(set(r["assets"].values()) == {"cached"} for r in records)
    assert {r["name"]: r["run_id"] for r in records} == {
        r["name"]: r["run_id"] for r in json.loads(first.stdout)
    }
    assert (home / "dagster" / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"
