"""What a cluster did, read back from the shared Dagster instance.

Invariant: everything here only reads — runs and their events: which worker ran each step
(dagster-celery's "Celery worker" engine event), whether it built, reused or transferred its
artifact (the materialization's ``cache``), and each check's result — so a report can be made
at any time, by any process that reaches the instance.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dagster import DagsterEvent, DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES, RunsFilter

from genoflow.build.steps import CHAINS
from genoflow.defs.jobs import job_name
from genoflow.manifests.reading import read_manifest

WORKER_KEY = "Celery worker"


@dataclass(frozen=True)
class Step:
    """One executed step: which run, which worker, and what it did to its artifact.

    Attributes:
        cache: for an asset step, ``miss`` (built here), ``hit`` or ``transferred``; empty
            for a check.
        passed: for a check step, whether it passed; None for an asset step.
    """

    run_id: str
    step_key: str
    worker: str = ""
    partition: str = ""
    asset: str = ""
    cache: str = ""
    passed: bool | None = None
    pid: int | None = None


@dataclass
class Outcome:
    """The runs covering a set of partitions, once none of them is waiting or running."""

    runs: list[DagsterRun]
    steps: list[Step] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[DagsterRun]:
        return [run for run in self.runs if run.status != DagsterRunStatus.SUCCESS]

    def built(self) -> dict[tuple[str, str], list[Step]]:
        """(asset, md5) → the steps that built it (cache miss)."""
        found: dict[tuple[str, str], list[Step]] = {}
        for step in self.steps:
            if step.cache == "miss":
                found.setdefault((step.asset, step.partition), []).append(step)
        return found


def partitions_of(manifest: Path) -> dict[str, str]:
    """md5 → family of every valid row of ``manifest``."""
    return {row.md5: row.family for row in read_manifest(manifest).rows}


def names_of(manifest: Path) -> dict[str, str]:
    """md5 → the first name ``manifest`` gives it."""
    names: dict[str, str] = {}
    for row in read_manifest(manifest).rows:
        names.setdefault(row.md5, row.name)
    return names


def expected_artifacts(partitions: Mapping[str, str]) -> set[tuple[str, str]]:
    """Every (``family/asset``, md5) the chains of ``partitions`` publish."""
    return {
        (f"{family}/{asset}", md5) for md5, family in partitions.items() for asset in CHAINS[family]
    }


def runs_for(instance: DagsterInstance, partitions: Mapping[str, str]) -> list[DagsterRun]:
    """Every run of a chain job, or of an automation job, over one of ``partitions``."""
    runs = []
    for md5, family in partitions.items():
        for run in instance.get_runs(RunsFilter(tags={"dagster/partition": md5})):
            if run.job_name == job_name(family) or run.job_name.startswith("__ASSET_JOB"):
                runs.append(run)
    return runs


def wait_for_runs(
    instance: DagsterInstance,
    partitions: Mapping[str, str],
    *,
    timeout: float,
    started: float | None = None,
    poll: float = 1.0,
) -> Outcome:
    """Wait until every partition has a chain run and no run of them waits or runs.

    Raises:
        TimeoutError: not settled within ``timeout`` seconds; the message says what is left.
    """
    began = time.monotonic() if started is None else started
    deadline = began + timeout
    while True:
        runs = runs_for(instance, partitions)
        covered = {run.tags.get("dagster/partition") for run in runs}
        missing = set(partitions) - covered
        busy = [run for run in runs if run.status in NOT_FINISHED_STATUSES]
        if not missing and not busy:
            return Outcome(runs, steps_of(instance, runs), time.monotonic() - began)
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"after {timeout:.0f} s: {len(missing)} partitions without a run, "
                f"{len(busy)} runs still waiting or running"
            )
        time.sleep(poll)


def steps_of(instance: DagsterInstance, runs: Iterable[DagsterRun]) -> list[Step]:
    """The steps of ``runs``, each with the worker that ran it and its cache outcome."""
    steps: list[Step] = []
    for run in runs:
        facts: dict[str, dict] = {}
        for record in instance.all_logs(run.run_id):
            event = record.dagster_event
            if event is not None and event.step_key is not None:
                facts.setdefault(event.step_key, {}).update(_facts(event))
        partition = run.tags.get("dagster/partition", "")
        steps.extend(
            Step(run.run_id, key, partition=partition, **found)
            for key, found in facts.items()
            if "worker" in found
        )
    return steps


def _facts(event: DagsterEvent) -> dict:
    """What one event tells about its step: worker, pid, artifact and cache, or check result."""
    if event.event_type == DagsterEventType.ENGINE_EVENT:
        worker = event.engine_event_data.metadata.get(WORKER_KEY)
        return {} if worker is None else {"worker": str(worker.value)}
    if event.event_type == DagsterEventType.STEP_START:
        return {"pid": event.pid}
    if event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
        materialization = event.step_materialization_data.materialization
        cache = materialization.metadata.get("cache")
        return {
            "asset": materialization.asset_key.to_user_string(),
            "cache": str(cache.value) if cache is not None else "",
        }
    if event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
        evaluation = event.event_specific_data
        return {
            "asset": f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}",
            "passed": evaluation.passed,
        }
    return {}


def failure_of(instance: DagsterInstance, run: DagsterRun) -> str:
    """The reason a run failed, as its last error events tell it."""
    reasons = []
    for record in instance.all_logs(run.run_id):
        event = record.dagster_event
        if event is None:
            continue
        error = None
        if event.event_type == DagsterEventType.STEP_FAILURE:
            error = event.step_failure_data.error
        elif event.event_type in (DagsterEventType.RUN_FAILURE, DagsterEventType.ENGINE_EVENT):
            data = event.event_specific_data
            error = getattr(data, "error", None)
        if error is not None:
            reasons.append(f"{event.step_key or 'run'}: {error.message.strip()}")
        elif event.event_type == DagsterEventType.RUN_FAILURE:
            reasons.append(f"run: {record.message}")
    return "; ".join(reasons[-3:]) or f"run ended {run.status.value}"
