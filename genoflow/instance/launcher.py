"""genoflow's run queue and run launcher for the embedded instance: a run that ``dagster-daemon``
(or the UI) launches costs a fork of a process that already imported Dagster and genoflow's
definitions, not an interpreter start and its imports.

Invariant: every run this launcher launches is executed by one worker process, forked from the
launching process's forkserver (:func:`genoflow.instance.launch.start_build_process`), in its own
process group, that dies with the process that launched it. The worker records itself on its run
(``genoflow/worker`` = ``host:pid``) before the run starts, then runs it the way ``dagster api
execute_run`` does, so Dagster's own events say how the run ended (success, failure, or canceled
after :meth:`ForkRunLauncher.terminate`). A worker that ends before its run did (killed, out of
memory) has its run reported failed at once by the launcher that forked it; when that launcher is
gone too (the daemon was killed or stopped), Dagster's run monitoring in the next daemon probes
the recorded pid (:meth:`ForkRunLauncher.check_run_worker_health`) and fails the run. A pid is
only ever signalled after it was checked to be that worker (same host, started before the run).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from dagster import Field
from dagster._core.errors import DagsterLaunchFailedError
from dagster._core.launcher.base import (
    CheckRunHealthResult,
    LaunchRunContext,
    RunLauncher,
    WorkerStatus,
)
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
from dagster._serdes import ConfigurableClass, ConfigurableClassData

from genoflow.core.settings import Settings, daemon_runs
from genoflow.defs.tags import OWNER, WORKER

# What the forkserver imports once, so that each worker forked from it starts with them loaded.
PRELOAD = ["genoflow.instance.warm", "genoflow.instance.launcher", "dagster._cli.api"]
# Seconds between passes of the run queue (``dagster.yaml`` can only give whole seconds; Dagster's
# default is 5). Its daemon waits in steps of 0.5 s, so a pass comes about every 0.5 s. A pass is a
# few indexed queries, and a forked run starts in milliseconds, so the poll was the wait: at 1 s,
# two runs in flight waited ~0.5 s on average before each next pair started.
DEQUEUE_SECONDS = 0.25
# Seconds a terminated worker has to stop by itself before its process group is killed.
STOP_GRACE = 10.0
# The smallest sort memory share a run is given (as ``genoflow run --jobs`` gives its workers).
MIN_SORT_MEMORY = 1 << 26


class RunQueue(QueuedRunCoordinator):
    """Dagster's run queue whose ``max_concurrent_runs``, when ``dagster.yaml`` leaves it out,
    is ``GENOFLOW_DAEMON_RUNS`` (read when the instance is opened), not Dagster's 10, and which
    is polled every :data:`DEQUEUE_SECONDS` unless it sets ``dequeue_interval_seconds``."""

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> RunQueue:
        config = dict(config_value)
        if config.get("max_concurrent_runs") is None:
            config["max_concurrent_runs"] = daemon_runs()
        return super().from_config_value(inst_data, config)

    @property
    def dequeue_interval_seconds(self) -> float:  # type: ignore[override]
        """:data:`DEQUEUE_SECONDS`, unless ``dagster.yaml`` sets ``dequeue_interval_seconds``."""
        configured = (self.inst_data.config_dict if self.inst_data else {}).get(
            "dequeue_interval_seconds"
        )
        return DEQUEUE_SECONDS if configured is None else configured


class ForkRunLauncher(RunLauncher, ConfigurableClass):
    """Launches each run in a worker forked from a pre-imported forkserver (module docstring)."""

    def __init__(
        self, inst_data: ConfigurableClassData | None = None, stop_grace_seconds: float = STOP_GRACE
    ) -> None:
        self._inst_data = inst_data
        self._grace = stop_grace_seconds
        self._workers: dict[str, Any] = {}  # run id → its live worker process
        self._lock = threading.Lock()
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, Field]:
        grace = Field(float, is_required=False, default_value=STOP_GRACE)
        return {"stop_grace_seconds": grace}

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> ForkRunLauncher:
        return cls(inst_data=inst_data, **config_value)

    def launch_run(self, context: LaunchRunContext) -> None:
        """Fork the run's worker and a thread that reports the run failed if the worker ends
        before its run did.

        Raises:
            DagsterLaunchFailedError: the run has no code origin, or its code lives in another
                Python environment than this process's (a fork would run the wrong one).
        """
        from genoflow.instance.launch import start_build_process

        run = context.dagster_run
        origin = run.job_code_origin
        if origin is None:
            raise DagsterLaunchFailedError(f"run {run.run_id} has no code origin to execute")
        python = origin.repository_origin.executable_path
        if python and os.path.dirname(python) != os.path.dirname(sys.executable):
            raise DagsterLaunchFailedError(
                f"run {run.run_id}: its code location runs {python}, not this process's "
                f"{sys.executable}; genoflow's run launcher forks this environment only — use "
                "Dagster's DefaultRunLauncher in dagster.yaml for that location"
            )
        pointer = origin.repository_origin.code_pointer
        directory = getattr(pointer, "working_directory", None) or os.getcwd()
        args = (run.run_id, self._instance.get_ref(), self._environ(), os.getpid(), directory)
        process = start_build_process(_work, args, preload=PRELOAD)
        with self._lock:
            self._workers[run.run_id] = process
        threading.Thread(
            target=self._reap, args=(run.run_id, process), name="genoflow-reap", daemon=True
        ).start()

    def _environ(self) -> dict[str, str]:
        """This process's environment for a worker, with its share of threads and sort memory
        (``GENOFLOW_THREADS`` and ``GENOFLOW_SORT_MEMORY`` over the runs in flight at once)."""
        environ = dict(os.environ)
        settings = Settings.from_env(environ)
        coordinator = self._instance.run_coordinator
        runs = 1
        if isinstance(coordinator, QueuedRunCoordinator):
            runs = max(1, coordinator.get_run_queue_config().max_concurrent_runs)
        environ["GENOFLOW_THREADS"] = str(max(1, settings.threads // runs))
        environ["GENOFLOW_SORT_MEMORY"] = str(max(MIN_SORT_MEMORY, settings.sort_memory // runs))
        if self._instance.root_directory:
            environ["DAGSTER_HOME"] = self._instance.root_directory
        return environ

    def _reap(self, run_id: str, process: Any) -> None:
        """Wait for a worker; if its run has not ended, end it (canceled when it was being
        terminated, else failed) and kill what the worker left in its process group."""
        from genoflow.instance.launch import fail_run

        process.join()
        with self._lock:
            self._workers.pop(run_id, None)
        if process.exitcode != 0:
            _kill_group_of_dead(process.pid)
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return
        how = _exit_text(process.exitcode)
        if run.status == DagsterRunStatus.CANCELING:
            self._instance.report_run_canceled(run, f"its run worker {how} when terminated")
        else:
            fail_run(
                self._instance,
                run_id,
                f"the run worker (pid {process.pid}) {how} before its run finished (killed, or "
                "out of memory); nothing was published — launch the run again",
            )

    def terminate(self, run_id: str) -> bool:
        """Stop run ``run_id``: mark it canceling, ask its worker to stop (SIGTERM, which
        Dagster turns into an interrupt that ends the run CANCELED) and kill the worker's
        process group if it still runs after the grace period.

        Returns:
            False when the run is unknown or already ended, or its worker is not one this
            launcher recorded on this host; True otherwise.
        """
        if not self.has_instance:
            return False
        instance = self._instance
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        pid = self._worker_pid(run)
        if pid is None:
            instance.report_engine_event(
                "genoflow's run launcher cannot terminate this run: no worker of it is "
                "recorded on this host",
                run,
                cls=self.__class__,
            )
            return False
        instance.report_run_canceling(run)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        threading.Thread(
            target=self._escalate, args=(run_id, pid), name="genoflow-terminate", daemon=True
        ).start()
        return True

    def _worker_pid(self, run: DagsterRun) -> int | None:
        """The pid of ``run``'s live worker on this host: forked here, or recorded on the run."""
        with self._lock:
            process = self._workers.get(run.run_id)
        if process is not None and process.pid is not None:
            return process.pid
        worker = run.tags.get(WORKER, "")
        if _alive(self._instance, run, worker):
            return int(worker.rpartition(":")[2])
        return None

    def _escalate(self, run_id: str, pid: int) -> None:
        """After the grace period, kill a worker that did not stop; a run no reaper of this
        process watches is then reported canceled here."""
        deadline = time.monotonic() + self._grace
        while time.monotonic() < deadline and _pid_alive(pid):
            time.sleep(0.1)
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        with self._lock:
            reaped_here = run_id in self._workers
        run = self._instance.get_run_by_id(run_id)
        if not reaped_here and run is not None and not run.is_finished:
            self._instance.report_run_canceled(
                run, f"its run worker (pid {pid}) was stopped by genoflow's run launcher"
            )

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        """Whether ``run``'s worker (``genoflow/worker``, else the ``genoflow/owner`` process
        that executes it in process) still runs: FAILED when that process is gone, so run
        monitoring fails the run; RUNNING when it lives, runs on another host (it cannot be
        probed from here) or the run names no genoflow process (launched by another launcher).
        """
        worker = run.tags.get(WORKER) or run.tags.get(OWNER) or ""
        alive = _alive(self._instance, run, worker)
        if alive is False:
            return CheckRunHealthResult(
                WorkerStatus.FAILED,
                f"its run worker {worker} is gone (killed, or the process that launched it "
                "stopped); nothing more of the run will be published — launch it again",
            )
        if alive is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"worker {worker!r} not probed")
        return CheckRunHealthResult(WorkerStatus.RUNNING, f"worker {worker} runs")

    def dispose(self) -> None:
        """Kill the workers still running (a worker never outlives its launcher); run
        monitoring of the next daemon reports their runs failed."""
        with self._lock:
            workers = list(self._workers.values())
        for process in workers:
            if process.pid is not None and process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)


def _alive(instance: Any, run: DagsterRun, worker: str) -> bool | None:
    """Whether ``worker`` (``host:pid``) still runs (:func:`local_owner_gone`, a pid started
    after the run did is not the worker); None when it cannot be told (another host, no
    worker recorded)."""
    from genoflow.storage.replicas import local_owner_gone

    if not worker:
        return None
    record = instance.get_run_record_by_id(run.run_id)
    since = record.start_time if record is not None else None
    gone = local_owner_gone(worker, since=since)
    return None if gone is None else not gone


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_group_of_dead(pid: int | None) -> None:
    """SIGKILL what a dead worker left in its process group (the tools it started). The group
    id outlives the worker only while members remain, so no other process is hit."""
    if pid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def _exit_text(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"was killed by {signal.Signals(-exitcode).name}"
    return f"ended with exit code {exitcode}"


def _drop(_event: object) -> None:
    """Events are in the instance already; the worker has no stream to copy them to."""


def _work(
    run_id: str, instance_ref: Any, environ: dict[str, str], launcher: int, directory: str
) -> None:
    """The worker: become a build process of ``launcher`` (its own group, dying with it),
    record itself on the run, and execute the run as ``dagster api execute_run`` would, with
    SIGTERM and SIGINT turned into Dagster's run interrupt."""
    from dagster import DagsterInstance
    from dagster._cli.api import _execute_run_command_body
    from dagster._utils.interrupts import capture_interrupts

    from genoflow.instance.launch import become_build_process
    from genoflow.storage.replicas import owner_id

    become_build_process(environ, launcher)
    os.chdir(directory)
    with capture_interrupts(), DagsterInstance.from_ref(instance_ref) as instance:
        instance.add_run_tags(run_id, {WORKER: owner_id()})
        _execute_run_command_body(run_id, instance, _drop, set_exit_code_on_failure=False)
