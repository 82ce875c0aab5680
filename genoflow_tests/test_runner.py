"""Runs left in progress by a process that died are reported failed, and only those."""

from __future__ import annotations

import subprocess
import sys

from dagster import DagsterInstance, DagsterRunStatus

from genoflow.defs.tags import LAUNCHED_BY, OWNER
from genoflow.instance.runner import fail_abandoned_runs
from genoflow.storage.replicas import owner_id


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _started_run(instance: DagsterInstance, owner: str, *, start: bool = True) -> str:
    run = instance.create_run_for_job(
        job_def=_job(), tags={LAUNCHED_BY: "genoflow run", OWNER: owner}
    )
    if not start:
        return run.run_id
    instance.handle_run_event(run.run_id, _start_event(run))
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED
    return run.run_id


def _job():
    from dagster import job, op

    @op
    def nothing() -> None:
        return None

    @job
    def a_job() -> None:
        nothing()

    return a_job


def _start_event(run):
    from dagster._core.events import DagsterEvent, DagsterEventType

    return DagsterEvent(event_type_value=DagsterEventType.RUN_START.value, job_name=run.job_name)


def test_a_run_whose_owner_died_is_failed_and_the_others_are_left_alone() -> None:
    host = owner_id().rpartition(":")[0]
    with DagsterInstance.ephemeral() as instance:
        dead = _started_run(instance, f"{host}:{_dead_pid()}")
        alive = _started_run(instance, owner_id())
        foreign = _started_run(instance, "another-host.example:1")
        never_started = _started_run(instance, f"{host}:{_dead_pid()}", start=False)

        assert sorted(fail_abandoned_runs(instance)) == sorted([dead, never_started])

        runs = (dead, alive, foreign, never_started)
        statuses = {r: instance.get_run_by_id(r).status for r in runs}
        assert statuses == {
            dead: DagsterRunStatus.FAILURE,
            never_started: DagsterRunStatus.FAILURE,
            alive: DagsterRunStatus.STARTED,
            foreign: DagsterRunStatus.STARTED,
        }
        assert fail_abandoned_runs(instance) == []
