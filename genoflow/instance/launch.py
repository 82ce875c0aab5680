"""Launching one md5's family chain as a Dagster run with a known id, from outside the code
location.

Invariant: a run is created first (``NOT_STARTED``, with the code location's origin, so the UI
shows it and can re-execute it, and the caller knows its id at once), and only then executed:
either by a build process of the caller's own (:func:`run_build`: a child process in its own
process group, killed whole when it outlives its time cap), or by the daemon, when the instance's
run coordinator is a queue (:func:`submit`). Whatever ends a run, the run's own status in the
instance says how it ended: a build process that died or was killed has its run reported failed.

A build process never outlives the server process that started it: it watches its parent (the
forkserver, which exits with the server) and that server's pid, and when either is gone it kills
its own process group (itself and every tool it started), so a SIGKILLed server leaves no orphan
build that could publish after its claim was reclaimed.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dagster import DagsterInstance, DagsterRunStatus
from dagster._core.definitions.selector import JobSubsetSelector
from dagster._core.events import DagsterEventType
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.remote_representation.code_location import CodeLocation
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.tags import MAX_RUNTIME_SECONDS_TAG, PARTITION_NAME_TAG
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

from genoflow.build.steps import chain_version, job_name
from genoflow.core.errors import redact_text
from genoflow.defs.tags import CHAIN_TAG, FAMILY, LAUNCHED_BY, LAUNCHED_BY_SERVE, OWNER
from genoflow.instance.runner import add_partitions, process_instance, quiet_warnings, user_message

# The code location's name in workspace.yaml and [tool.dagster]: the daemon finds a queued run's
# code by it.
LOCATION_NAME = "genoflow"
DEFINITIONS_MODULE = "genoflow.definitions"
_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
# Dagster's run status → the job status the service reports.
JOB_STATUS = {
    DagsterRunStatus.NOT_STARTED: "queued",
    DagsterRunStatus.QUEUED: "queued",
    DagsterRunStatus.STARTING: "running",
    DagsterRunStatus.STARTED: "running",
    DagsterRunStatus.CANCELING: "running",
    DagsterRunStatus.SUCCESS: "succeeded",
    DagsterRunStatus.FAILURE: "failed",
    DagsterRunStatus.CANCELED: "failed",
}
_LOCATIONS: dict[int, CodeLocation] = {}
# How :func:`run_build` ended: the run ended by itself, outlived its cap, or was stopped.
FINISHED, TIMED_OUT, STOPPED = "finished", "timed out", "stopped"
# Seconds between a build process's checks that its server is still there.
WATCH_EVERY = 1.0


def code_location(instance: DagsterInstance) -> CodeLocation:
    """genoflow's code location loaded in this process (once per instance), named as the
    workspace names it."""
    location = _LOCATIONS.get(id(instance))
    if location is None:
        target = LoadableTargetOrigin(
            executable_path=sys.executable,
            module_name=DEFINITIONS_MODULE,
            working_directory=os.getcwd(),
        )
        origin = InProcessCodeLocationOrigin(target, location_name=LOCATION_NAME)
        location = _LOCATIONS[id(instance)] = origin.create_location(instance)
    return location


def uses_queue(instance: DagsterInstance) -> bool:
    """Whether runs go to a queue a daemon drains: the instance's ``dagster.yaml`` names a
    ``QueuedRunCoordinator`` itself (as ``deploy/dagster.yaml`` does).

    Dagster's own default coordinator is a queue too, but an instance that did not ask for one
    (genoflow's embedded instance) has no daemon to drain it, so its runs are built here.
    """
    from dagster._core.instance.config import dagster_instance_config

    if instance.root_directory is None:
        return False
    config, _ = dagster_instance_config(instance.root_directory)
    chosen = config.get("run_coordinator") or {}
    return chosen.get("class") == QueuedRunCoordinator.__name__ and isinstance(
        instance.run_coordinator, QueuedRunCoordinator
    )


def create_run(
    instance: DagsterInstance,
    md5: str,
    family: str,
    run_id: str,
    *,
    owner: str,
    timeout: float = 0.0,
) -> DagsterRun:
    """Create (not start) the run of ``family``'s chain for partition ``md5``, id ``run_id``.

    The md5 is added to the family's partitions first if it is not there yet. A ``timeout``
    above 0 is also put on the run as Dagster's ``dagster/max_runtime``, which the daemon's run
    monitoring enforces for queued runs.
    """
    add_partitions(instance, {family: [md5]})
    location = code_location(instance)
    repository = next(iter(location.get_repositories().values()))
    selector = JobSubsetSelector(
        location_name=location.name,
        repository_name=repository.name,
        job_name=job_name(family),
        op_selection=None,
    )
    remote_job = location.get_job(selector)
    tags = {
        **remote_job.tags,
        PARTITION_NAME_TAG: md5,
        LAUNCHED_BY: LAUNCHED_BY_SERVE,
        OWNER: owner,
        CHAIN_TAG: chain_version(family),
    }
    if timeout > 0:
        tags[MAX_RUNTIME_SECONDS_TAG] = str(int(timeout) or 1)
    plan = location.get_execution_plan(
        remote_job, _RUN_CONFIG, step_keys_to_execute=None, known_state=None, instance=instance
    ).execution_plan_snapshot
    return instance.create_run(
        job_name=remote_job.name,
        run_id=run_id,
        run_config=_RUN_CONFIG,
        status=None,
        tags=tags,
        root_run_id=None,
        parent_run_id=None,
        step_keys_to_execute=plan.step_keys_to_execute,
        execution_plan_snapshot=plan,
        job_snapshot=remote_job.job_snapshot,
        parent_job_snapshot=remote_job.parent_job_snapshot,
        asset_selection=None,
        asset_check_selection=None,
        resolved_op_selection=None,
        op_selection=None,
        remote_job_origin=remote_job.get_remote_origin(),
        job_code_origin=remote_job.get_python_origin(),
        asset_graph=repository.asset_graph,
    )


def submit(instance: DagsterInstance, run_id: str) -> None:
    """Hand a created run to the instance's queue; the daemon launches it from the workspace's
    ``genoflow`` code location. (A ``QueuedRunCoordinator`` reads only the run, so no
    workspace is loaded here.)"""
    instance.submit_run(run_id, workspace=None)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RunState:
    """How one run stands, read from the instance.

    Attributes:
        run_id: the run's id.
        md5: its partition, the source md5.
        family: its family.
        status: the job status (``queued``, ``running``, ``succeeded``, ``failed``).
        tags: the run's tags.
        error: for a failed run, its first failure's message (redacted).
    """

    run_id: str
    md5: str
    family: str
    status: str
    tags: Mapping[str, str]
    error: str | None


def run_state(instance: DagsterInstance, run_id: str) -> RunState | None:
    """The state of run ``run_id``, or None when the instance has no such run."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        return None
    status = JOB_STATUS[run.status]
    error = run_error(instance, run_id) if status == "failed" else None
    tags = dict(run.tags)
    family = tags.get(FAMILY, "")
    return RunState(run_id, tags.get(PARTITION_NAME_TAG, ""), family, status, tags, error)


def run_error(instance: DagsterInstance, run_id: str) -> str:
    """A failed run's reason, one redacted line: the first failed step's genoflow error, else
    the run's failure message."""
    kinds = {DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE}
    records = instance.all_logs(run_id, of_type=kinds)
    for record in records:
        event = record.dagster_event
        if event and event.event_type == DagsterEventType.STEP_FAILURE:
            return redact_text(user_message(event.step_failure_data.error))
    for record in records:
        if record.dagster_event and record.dagster_event.message:
            return redact_text(record.dagster_event.message)
    return "the run failed"


def steps(instance: DagsterInstance, run_id: str) -> list[dict[str, Any]]:
    """The run's steps with their status and start and end times (epoch seconds), in order."""
    found = []
    for stats in instance.get_run_step_stats(run_id):
        status = stats.status.value.lower() if stats.status else "in_progress"
        found.append(
            {
                "step": stats.step_key,
                "status": status,
                "started": stats.start_time,
                "ended": stats.end_time,
            }
        )
    return sorted(found, key=lambda step: step["started"] or float("inf"))


def fail_run(instance: DagsterInstance, run_id: str, message: str) -> None:
    """Report run ``run_id`` failed with ``message``, unless it already ended."""
    run = instance.get_run_by_id(run_id)
    if run is not None and not run.is_finished:
        instance.report_run_failed(run, message=redact_text(message))


def cancel_run(instance: DagsterInstance, run_id: str, message: str) -> None:
    """Report run ``run_id`` canceled (it never started), unless it already ended."""
    run = instance.get_run_by_id(run_id)
    if run is not None and not run.is_finished:
        instance.report_run_canceled(run, message=message)


def run_build(
    instance: DagsterInstance,
    run_id: str,
    *,
    timeout: float,
    environ: Mapping[str, str],
    stop: threading.Event | None = None,
) -> str:
    """Execute a created run in a child build process and wait for it, at most ``timeout``.

    Args:
        instance: the instance the run was created in.
        run_id: the run.
        timeout: seconds before the whole process group is killed and the run failed; 0 waits
            without a cap.
        environ: the child's whole environment (GENOFLOW_HOME, DAGSTER_HOME, its thread and
            memory share…): a forkserver child would otherwise inherit the forkserver's.
        stop: when set (the server's shutdown grace is over), the build is killed and its run
            failed, saying a new request builds it again.

    Returns:
        :data:`FINISHED`, :data:`TIMED_OUT` or :data:`STOPPED`.
    """
    args = (run_id, dict(environ), os.getpid())
    process = start_build_process(_execute, args, preload=["genoflow.instance.runner"])
    outcome = _wait(process, timeout, stop)
    if outcome == TIMED_OUT:
        message = (
            f"the build ran longer than GENOFLOW_JOB_TIMEOUT={timeout:g} s and was ended; "
            "nothing was published"
        )
    elif outcome == STOPPED:
        message = (
            "genoflow serve shut down while this build ran and ended it; nothing was "
            "published, and a new request builds it again"
        )
    else:
        message = f"the build process ended with exit code {process.exitcode}"
    fail_run(instance, run_id, message)  # only when the run itself did not say how it ended
    return outcome


def start_build_process(
    target: Callable[..., None], args: tuple[Any, ...], *, preload: list[str]
) -> Any:
    """Start ``target(*args)`` in a process forked from this process's forkserver (started
    with ``preload`` imported, so a build costs a fork, not an interpreter start and its
    imports); ``target`` begins with :func:`become_build_process`.

    Returns:
        The started ``multiprocessing`` process (not daemonic: a build may start processes).
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(preload)  # no effect once this process's forkserver runs
    process = context.Process(target=target, args=args, daemon=False)
    process.start()
    return process


def _wait(process: Any, timeout: float, stop: threading.Event | None) -> str:
    """Wait for the build process; kill its group at the cap or when ``stop`` is set."""
    deadline = time.monotonic() + timeout if timeout > 0 else None
    outcome = FINISHED
    while process.is_alive():
        if stop is not None and stop.is_set():
            outcome = STOPPED
        elif deadline is not None and time.monotonic() >= deadline:
            outcome = TIMED_OUT
        if outcome != FINISHED:
            kill_group(process.pid)
            break
        left = deadline - time.monotonic() if deadline is not None else 0.5
        process.join(max(0.0, min(0.5, left)))
    process.join()
    return outcome


def kill_group(pid: int | None) -> None:
    """SIGKILL the build process and every tool it started (its own process group)."""
    if pid is None:
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:  # it had not made its group yet
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _watch(server: int) -> None:
    """Kill this build process's group once its server is gone: its parent (the forkserver,
    which exits with the server) changed, or the server's pid no longer exists."""
    parent = os.getppid()
    while True:
        time.sleep(WATCH_EVERY)
        try:
            os.kill(server, 0)
            gone = os.getppid() != parent
        except ProcessLookupError:
            gone = True
        except PermissionError:  # the pid now belongs to another user's process
            gone = True
        if gone:
            os.killpg(0, signal.SIGKILL)


def become_build_process(environ: Mapping[str, str], server: int) -> None:
    """Make this forked process a build process: its own process group, killed whole once the
    process ``server`` that started it is gone (:func:`_watch`), with ``environ`` as its whole
    environment (a forkserver child would otherwise have the forkserver's)."""
    os.setpgrp()
    threading.Thread(target=_watch, args=(server,), name="genoflow-watch", daemon=True).start()
    os.environ.clear()
    os.environ.update(environ)
    quiet_warnings()


def _execute(run_id: str, environ: dict[str, str], server: int) -> None:
    """The build process: run ``run_id`` in this process, as its own process group, for as
    long as the server process ``server`` lives."""
    from dagster._core.execution.api import execute_run
    from dagster._utils.hosted_user_process import recon_job_from_origin

    become_build_process(environ, server)
    instance = process_instance()
    run = instance.get_run_by_id(run_id)
    if run is None or run.job_code_origin is None:
        raise SystemExit(f"run {run_id} is not in the instance at {os.environ['DAGSTER_HOME']}")
    execute_run(recon_job_from_origin(run.job_code_origin), run, instance)
