"""On-demand builds: a request that misses starts its md5's family chain as one Dagster run.

Invariants:

- **The run is the job.** A job's id is its Dagster run's id, chosen before the run exists and
  written into the md5's claim (:mod:`genoflow.storage.claims`); the run is created at once
  (``NOT_STARTED``), so the id is known and the UI shows the run while it waits.
- **One build per md5.** Only the request that wins the claim's compare-and-swap creates a
  run; every other request, in any endpoint, thread, worker process or machine sharing the
  registry, answers with the winner's job id.
- **Stale claims are reclaimed, late finishers fenced.** A claim held by this server's own
  build pool is stale when its owner process is gone or has not beaten for ``stale_after``
  seconds; a claim handed to the daemon's queue lives as long as its run. A reclaim fails the
  old run; whatever the old builder reports afterwards is refused by the claim's fence.
- **Bounded.** Embedded, at most ``GENOFLOW_SERVE_BUILDERS`` build processes run at once and
  further jobs wait in this process's queue; nothing forks beyond that. When the instance's
  run coordinator is a queue (a daemon), runs are submitted to it instead.
- **A cap, then nothing published.** A build over ``GENOFLOW_JOB_TIMEOUT`` is killed with every
  tool it started and its job fails; the cache's atomic rename means no artifact appears.
- **Back-off.** After a failure, requests get the failed job until ``retry_at``.
- **A bounded drain.** :meth:`Builds.close` starts nothing more, releases the jobs still waiting,
  and gives builds in flight ``grace`` seconds (:data:`DRAIN_GRACE`, as uvicorn's graceful
  shutdown) to finish; a build still running then is killed with its tools (nothing published:
  the cache publishes by rename) and its claim released, so the next request, on any server,
  builds it again. A build process also ends itself when its server process dies (SIGKILL): the
  claim's owner is then gone and the next request reclaims it at once.
- **Dagster only when a job exists.** Opening :class:`Builds` and looking up an md5 that has no
  claim read only the registry; Dagster is imported on the first build or the first claim whose
  run must be read.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from genoflow.build.steps import CHAINS, key_for
from genoflow.core.errors import GenoflowError, StorageError, redact_text
from genoflow.core.settings import ServeSettings, Settings
from genoflow.defs.tags import LAUNCHED_BY, LAUNCHED_BY_SERVE
from genoflow.serve.catalog import Source
from genoflow.storage.cache import Cache
from genoflow.storage.claims import FAILED, QUEUED, RUNNING, SUCCEEDED, Claim, Claims
from genoflow.storage.registry import Registry
from genoflow.storage.replicas import local_owner_gone, owner_id

log = logging.getLogger(__name__)
# The owner recorded on a claim whose run went to the daemon's queue: its run's status decides.
QUEUE_OWNER = "dagster-queue"
FINISHED = (SUCCEEDED, FAILED)
# Seconds without a heartbeat after which another process may reclaim a pool's claim.
STALE_AFTER = 60.0
# Seconds :meth:`Builds.close` lets builds in flight run before killing them (uvicorn's
# ``timeout_graceful_shutdown`` in ``genoflow serve``).
DRAIN_GRACE = 30.0


@dataclass(frozen=True)
class Job:
    """One on-demand build, as the service reports it.

    Attributes:
        id: the Dagster run id.
        md5: the source md5 it builds.
        family: the source's family.
        status: ``queued``, ``running``, ``succeeded`` or ``failed``.
        error: a failed job's reason, one redacted line.
        retry_at: after a failure, when (epoch seconds) a request may start a new attempt.
    """

    id: str
    md5: str
    family: str
    status: str
    error: str | None
    retry_at: float | None


class UnknownJob(GenoflowError):
    """No job of this server has that id."""

    default_stage = "serve"


class BuildsClosed(GenoflowError):
    """The server is shutting down and starts no more builds."""

    default_stage = "serve"


class Builds:
    """The server's on-demand builds, on the instance and registry ``genoflow run`` uses.

    Args:
        settings: where the home, registry and Dagster instance are.
        serve: the service's settings (builders, job timeout, retry back-off).
        stale_after: seconds without a heartbeat before another process may reclaim a claim.
    """

    def __init__(
        self, settings: Settings, serve: ServeSettings, *, stale_after: float = STALE_AFTER
    ) -> None:
        self.settings, self.serve, self.stale_after = settings, serve, stale_after
        self.registry = Registry(settings.registry_target)
        self.claims = Claims(self.registry)
        self.cache = Cache(settings.cache_root)
        self.owner = owner_id()
        self._pending: queue.Queue[Claim | None] = queue.Queue()
        self._mine: dict[str, Claim] = {}  # job id → claim this process runs or will run
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._stopped = threading.Event()
        self._abort = threading.Event()  # set when the drain's grace is over: kill the builds
        self._opening = threading.Lock()
        self._instance: Any = None
        self._queued = False
        self._threads: list[threading.Thread] = []

    @property
    def instance(self) -> Any:
        """The Dagster instance (``genoflow run``'s and the UI's), opened on first use."""
        return self._dagster()

    @property
    def queued(self) -> bool:
        """Whether runs go to the daemon's queue instead of this server's build pool."""
        self._dagster()
        return self._queued

    def _dagster(self) -> Any:
        """Open the instance and, unless runs go to a queue, start the build pool (once)."""
        with self._opening:
            if self._instance is not None:
                return self._instance
            from genoflow.instance.runner import open_instance

            instance = open_instance(self.settings)
            self._queued = _launch().uses_queue(instance)
            workers = 0 if self._queued else self.serve.builders
            self._threads = [
                threading.Thread(target=self._work, name=f"genoflow-builder-{n}", daemon=True)
                for n in range(workers)
            ]
            self._threads.append(
                threading.Thread(target=self._beat, name="genoflow-heartbeat", daemon=True)
            )
            if not self._closed.is_set():
                for thread in self._threads:
                    thread.start()
            self._instance = instance
            return instance

    # -- the interface the HTTP layer calls -------------------------------------------------

    def request(self, source: Source) -> Job:
        """The job building ``source``: the one in flight, the failed one within its back-off,
        or a new one (exactly one, however many processes ask at once).

        Raises:
            BuildsClosed: the server is shutting down.
        """
        if self._closed.is_set():
            raise BuildsClosed("the server is shutting down", file=source.md5, hint="ask again")
        claim: Claim | None = None
        for _ in range(8):  # each lost race re-reads the winner's claim, which then answers
            claim = self._refresh(self.claims.get(source.md5))
            current = self._current(claim, source)
            if current is not None:
                return _job(current)
            job_id = str(uuid.uuid4())  # a Dagster run id
            owner = QUEUE_OWNER if self.queued else self.owner
            won = self.claims.take(source.md5, source.family, job_id, owner, replacing=claim)
            if won.job_id == job_id:
                if claim is not None and claim.active:
                    self._fail_replaced(claim, job_id)
                return _job(self._start(won))
            claim = won
        assert claim is not None
        return _job(claim)

    def job(self, job_id: str) -> Job | None:
        """The job with that id, or None when this server never started it."""
        claim = self.claims.by_job(job_id)
        if claim is not None:
            claim = self._refresh(claim)
            if claim is not None and claim.job_id == job_id:
                return _job(claim)
        state = _launch().run_state(self.instance, job_id)
        if state is None or state.tags.get(LAUNCHED_BY) != LAUNCHED_BY_SERVE:
            return None
        return Job(job_id, state.md5, state.family, state.status, state.error, None)

    def jobs_of(self, md5s: Iterable[str]) -> dict[str, Job]:
        """The current job of each md5 that has one (in flight, or the last one that ended),
        by md5, from the claim table in one query.

        Dagster is read (and imported) only for a claim still in flight that another process
        runs, to bring it in line with its run; an md5 with no claim costs no Dagster at all.
        """
        found: dict[str, Job] = {}
        for claim in self.claims.of(md5s):
            current = self._refresh(claim)
            if current is not None:
                found[current.md5] = _job(current)
        return found

    def job_of(self, md5: str) -> Job | None:
        """The current job of one md5 (see :meth:`jobs_of`), or None when it has none."""
        return self.jobs_of([md5]).get(md5)

    def wait(self, job_id: str, timeout: float) -> Job:
        """The job once it has ended, or as it stands after ``timeout`` seconds.

        Raises:
            UnknownJob: no job has that id.
        """
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job is None:
                raise UnknownJob("no build job has this id", file=job_id)
            left = deadline - time.monotonic()
            if job.status in FINISHED or left <= 0:
                return job
            time.sleep(min(0.25, left))

    def steps(self, job_id: str) -> list[dict[str, Any]]:
        """The job's steps, from its run's events: name, status, start and end (epoch s)."""
        return _launch().steps(self.instance, job_id)

    def close(self, grace: float = DRAIN_GRACE) -> None:
        """Drain: start nothing more; jobs still waiting are released (their runs canceled);
        builds in flight get ``grace`` seconds to finish and publish. A build still running
        then is killed with every tool it started, its run failed and its claim released, so
        the next request, here or on another server, builds it again: never half-published."""
        if self._closed.is_set():
            return
        self._closed.set()
        while True:
            try:
                waiting = self._pending.get_nowait()
            except queue.Empty:
                break
            if waiting is not None:
                self._release(waiting)
        workers = [thread for thread in self._threads[:-1] if thread.is_alive()]
        for _worker in workers:
            self._pending.put(None)
        deadline = time.monotonic() + grace
        for thread in workers:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in workers):
            log.warning("builds still running after %g s of shutdown: ending them", grace)
            self._abort.set()
            for thread in workers:
                thread.join()
        self._stopped.set()
        if self._threads and self._threads[-1].is_alive():
            self._threads[-1].join()
        self.registry.close()

    # -- claims -------------------------------------------------------------------------------

    def _current(self, claim: Claim | None, source: Source) -> Claim | None:
        """The claim that answers the request, or None when a new build must take it over."""
        if claim is None:
            return None
        if claim.active:
            return None if self._stale(claim) else claim
        if claim.status == FAILED:
            return claim if (claim.retry_at or 0) > time.time() else None
        final = key_for(source.family, source.md5, CHAINS[source.family][-1])
        return claim if self.cache.lookup(final) is not None else None

    def _stale(self, claim: Claim) -> bool:
        if claim.owner == QUEUE_OWNER:
            return False  # the daemon's run monitoring ends a run whose worker died
        if local_owner_gone(claim.owner, since=claim.claimed_at or None):
            return True
        return time.time() - claim.heartbeat_at > self.stale_after

    def _refresh(self, claim: Claim | None) -> Claim | None:
        """``claim`` brought in line with its run (another process's, or the daemon's): a run
        that ended or started moves its claim, fenced."""
        if claim is None or not claim.active or claim.job_id in self._mine:
            return claim
        state = _launch().run_state(self.instance, claim.job_id)
        if state is None or state.status == claim.status:
            return claim
        if state.status == QUEUED:
            return claim
        moved = self.claims.advance(
            claim, state.status, error=state.error, retry_backoff=self.serve.retry_backoff
        )
        return moved or self.claims.get(claim.md5)

    def _fail_replaced(self, old: Claim, job_id: str) -> None:
        message = (
            f"its builder {old.owner} stopped answering (no heartbeat for {self.stale_after:g} s,"
            f" or its process is gone); job {job_id} took over the build"
        )
        _launch().fail_run(self.instance, old.job_id, message)

    # -- the build pool -------------------------------------------------------------------------

    def _start(self, claim: Claim) -> Claim:
        """Create the claim's run, then queue it in the pool or submit it to the daemon."""
        from dagster._core.errors import DagsterError

        launch = _launch()
        try:
            launch.create_run(
                self.instance,
                claim.md5,
                claim.family,
                claim.job_id,
                owner=self.owner,
                timeout=self.serve.job_timeout,
            )
            if self.queued:
                launch.submit(self.instance, claim.job_id)
                return claim
        except (DagsterError, GenoflowError, OSError) as exc:
            error = redact_text(f"[serve] {claim.md5}: the build could not be started: {exc}")
            failed = self.claims.advance(
                claim, FAILED, error=error, retry_backoff=self.serve.retry_backoff
            )
            return failed or self.claims.get(claim.md5) or claim
        with self._lock:
            self._mine[claim.job_id] = claim
        self._pending.put(claim)
        return claim

    def _work(self) -> None:
        from dagster._core.errors import DagsterError

        while True:
            claim = self._pending.get()
            if claim is None:
                return
            if self._closed.is_set():
                self._release(claim)
                continue
            try:
                self._build(claim)
            except (DagsterError, GenoflowError, OSError):
                log.exception("build %s of %s failed to report", claim.job_id, claim.md5)
            finally:
                with self._lock:
                    self._mine.pop(claim.job_id, None)

    def _build(self, claim: Claim) -> None:
        """Run one claimed job in a build process; every claim write is fenced, so a build
        whose claim was reclaimed meanwhile (a late finisher) changes nothing."""
        launch = _launch()
        running = self.claims.advance(claim, RUNNING)
        if running is None:
            launch.cancel_run(self.instance, claim.job_id, "its claim was taken over")
            return
        with self._lock:
            self._mine[claim.job_id] = running
        outcome = launch.run_build(
            self.instance,
            claim.job_id,
            timeout=self.serve.job_timeout,
            environ=self._environ(),
            stop=self._abort,
        )
        if outcome != launch.FINISHED:
            self.cache.sweep()  # the killed build's temp folders: its owner is dead
        if outcome == launch.STOPPED:
            self.claims.release(running)  # fenced: the next request builds it again
            return
        state = launch.run_state(self.instance, claim.job_id)
        status = state.status if state and state.status in FINISHED else FAILED
        error = (state.error if state else None) or "the build ended without a result"
        self.claims.advance(
            running,
            status,
            error=error if status == FAILED else None,
            retry_backoff=self.serve.retry_backoff,
        )

    def _environ(self) -> dict[str, str]:
        """A build process's environment: this server's, its home and instance, and its share
        of the threads and sort memory."""
        share = max(1, self.serve.builders)
        environ = {
            **os.environ,
            "GENOFLOW_HOME": str(self.settings.home),
            "DAGSTER_HOME": str(self.settings.dagster_home),
            "GENOFLOW_THREADS": str(max(1, self.settings.threads // share)),
            "GENOFLOW_SORT_MEMORY": str(max(1 << 26, self.settings.sort_memory // share)),
        }
        if self.settings.registry_url:
            environ["GENOFLOW_REGISTRY_URL"] = self.settings.registry_url
        return environ

    def _release(self, claim: Claim) -> None:
        with self._lock:
            self._mine.pop(claim.job_id, None)
        if self.claims.release(claim):
            message = "genoflow serve stopped before this build started; a new request starts it"
            _launch().cancel_run(self.instance, claim.job_id, message)

    def _beat(self) -> None:
        while not self._stopped.wait(self.stale_after / 4):
            with self._lock:
                mine = list(self._mine.values())
            if not mine:
                continue
            try:
                self.claims.heartbeat(mine)
            except StorageError:  # a busy or unreachable registry: the next beat tries again
                log.warning("heartbeat of %d build claims failed", len(mine), exc_info=True)


def _launch() -> ModuleType:
    """:mod:`genoflow.instance.launch`, imported on first use (it imports Dagster)."""
    from genoflow.instance import launch

    return launch


def _job(claim: Claim) -> Job:
    retry_at = claim.retry_at if claim.status == FAILED else None
    return Job(claim.job_id, claim.md5, claim.family, claim.status, claim.error, retry_at)
