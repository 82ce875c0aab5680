"""Running family chains through Dagster, on the instance the UI reads.

One run per source md5 (the family's job, that md5 as its partition). Runs execute in process:
the chain of one md5 is strictly sequential, so a step-per-process executor would only add
interpreter start-ups. ``jobs > 1`` runs several md5s at once in a pool of worker processes,
each with its share of the threads and of the sort memory cap, so the totals stay within the
configured limits. A failed run never stops the others.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import filelock
from dagster import BetaWarning, DagsterInstance, PreviewWarning
from dagster._core.errors import DagsterError
from dagster._utils.error import SerializableErrorInfo

from genoflow.build.steps import CHAINS, CHECKS, chain_version, job_name
from genoflow.core.errors import GenoflowError
from genoflow.core.settings import Settings
from genoflow.defs.partitions import PARTITIONS
from genoflow.defs.tags import CHAIN_TAG, LAUNCHED_BY, OWNER
from genoflow.instance.home import ensure_dagster_home
from genoflow.instance.outcome import Outcome
from genoflow.instance.run_history import (
    FINISHED,
    VERDICT,
    Verdicts,
    chains_up_to_date,
)
from genoflow.storage.replicas import local_owner_gone, owner_id

# Failures reach the user through the summary; the run keeps every event in the instance.
_QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def quiet_warnings() -> None:
    """Hide Dagster's beta/preview notices (data versions, partitioned checks) from CLI output."""
    for category in (BetaWarning, PreviewWarning):
        warnings.filterwarnings("ignore", category=category)


def open_instance(settings: Settings) -> DagsterInstance:
    """The Dagster instance under ``settings.dagster_home`` (created on first use).

    Creating the SQLite storages is not safe when several ``genoflow run`` start at once (each
    stamps the same schema version), so the first use happens under a file lock.
    """
    home = ensure_dagster_home(settings)
    os.environ["DAGSTER_HOME"] = str(home)
    with filelock.FileLock(str(home / ".init.lock")):
        instance = process_instance()
        instance.get_runs(limit=1)
        instance.get_dynamic_partitions(PARTITIONS["passthrough"].name)
        instance.all_instigator_state()
        fail_abandoned_runs(instance)
    return instance


_INSTANCES: dict[str, DagsterInstance] = {}


def process_instance() -> DagsterInstance:
    """This process's instance of ``$DAGSTER_HOME``, opened once and kept.

    Opening an instance reads ``dagster.yaml`` and builds every storage; keeping it also keeps
    the storages' database engines (genoflow/instance/storage.py) from one run to the next.
    """
    home = os.environ.get("DAGSTER_HOME", "")
    instance = _INSTANCES.get(home)
    if instance is None:
        instance = _INSTANCES[home] = DagsterInstance.get()
    return instance


def fail_abandoned_runs(instance: DagsterInstance) -> list[str]:
    """Mark as failed the runs that a killed ``genoflow run`` process left in progress.

    A run executes inside the process that started it; when that process dies (SIGKILL, the
    out-of-memory killer, a reboot) nothing reports the run's end and it stays ``STARTED``
    forever (or ``NOT_STARTED``, killed between creating and starting it), so backfills would
    keep skipping its partition as in progress. A run whose
    ``genoflow/owner`` tag names a process of this host that no longer exists is reported failed.
    Runs owned by another host are left alone: their processes cannot be probed from here.

    Returns:
        The ids of the runs marked failed.
    """
    from dagster import DagsterRunStatus, RunsFilter

    in_progress = [
        DagsterRunStatus.NOT_STARTED,
        DagsterRunStatus.STARTING,
        DagsterRunStatus.STARTED,
    ]
    records = instance.get_run_records(
        RunsFilter(statuses=in_progress, tags={LAUNCHED_BY: "genoflow run"})
    )
    failed = []
    for record in records:
        run, owner = record.dagster_run, record.dagster_run.tags.get(OWNER, "")
        # The owner made the run, so a process with its pid that started later is another one.
        if local_owner_gone(owner, since=record.create_timestamp.timestamp()):
            message = f"the process {owner} running it is gone (killed); run the manifest again"
            instance.report_run_failed(run, message=message)
            failed.append(run.run_id)
    return failed


def up_to_date(
    instance: DagsterInstance, lookup: Callable[[Any], Any], work: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], Outcome]:
    """The chains with nothing left to do (:func:`run_history.chains_up_to_date`), as
    ``cached`` outcomes, from the runs and check verdicts the instance reports through
    Dagster's API.

    Args:
        instance: the Dagster instance.
        lookup: this node's cache lookup (an artifact key → the artifact or None).
        work: ``(md5, family)`` pairs.
    """
    from dagster import DagsterRunStatus, RunsFilter
    from dagster._core.storage.tags import PARTITION_NAME_TAG

    work = list(work)
    families = {family for _, family in work}
    succeeded: dict[tuple[str, str], str] = {}
    for family in families:
        runs = instance.get_runs(
            RunsFilter(
                job_name=job_name(family),
                statuses=[DagsterRunStatus(status) for status in FINISHED],
                tags={CHAIN_TAG: chain_version(family)},
            )
        )
        newest: dict[str, Any] = {}
        for run in runs:  # newest first: the latest finished run of each partition decides
            newest.setdefault(run.tags.get(PARTITION_NAME_TAG, ""), run)
        for md5, run in newest.items():
            if run.status == DagsterRunStatus.SUCCESS:
                succeeded[family, md5] = run.run_id
    return chains_up_to_date(succeeded, lookup, work, check_verdicts(instance, families))


def check_verdicts(instance: DagsterInstance, families: Iterable[str]) -> Verdicts:
    """The latest verdict of every check of every partition of ``families``, through
    Dagster's API (:func:`run_history.check_verdicts` reads the same from the database).

    Args:
        instance: the Dagster instance.
        families: the families whose checks to read.

    Returns:
        ``(family, md5) → {"asset:check": passed}``, None for a check with no verdict yet.
    """
    from dagster import AssetCheckKey, AssetKey

    keys = [
        AssetCheckKey(AssetKey([family, asset]), CHECKS[asset])
        for family in families
        for asset in CHAINS[family]
    ]
    verdicts: Verdicts = {}
    for info in instance.event_log_storage.get_asset_check_partition_info(keys):
        family, asset = info.check_key.asset_key.path
        name = f"{asset}:{info.check_key.name}"
        by_md5 = verdicts.setdefault((family, info.partition_key or ""), {})
        by_md5[name] = VERDICT.get(info.latest_execution_status.value)
    return verdicts


def add_partitions(instance: DagsterInstance, by_family: dict[str, list[str]]) -> int:
    """Add the md5s missing from each family's dynamic partitions; return how many were new."""
    added = 0
    for family, md5s in by_family.items():
        name = PARTITIONS[family].name
        existing = set(instance.get_dynamic_partitions(name))
        new = [md5 for md5 in dict.fromkeys(md5s) if md5 not in existing]
        if new:
            instance.add_dynamic_partitions(name, new)
            added += len(new)
    return added


def run_one(md5: str, family: str) -> Outcome:
    """Materialize one family chain for one md5 in this process; never raises for bad data."""
    from genoflow.defs.location import defs

    quiet_warnings()
    started = time.perf_counter()
    outcome = Outcome(md5, family, dict.fromkeys(CHAINS[family], "skipped"))
    job = defs.resolve_job_def(job_name(family))
    try:
        result = job.execute_in_process(
            partition_key=md5,
            instance=process_instance(),
            raise_on_error=False,
            run_config=_QUIET,
            tags={LAUNCHED_BY: "genoflow run", OWNER: owner_id(), CHAIN_TAG: chain_version(family)},
        )
    except DagsterError as exc:
        outcome.error = f"[dagster] {md5}: {exc}"
        outcome.seconds = time.perf_counter() - started
        return outcome
    outcome.run_id = result.run_id
    read_events(result, outcome)
    outcome.seconds = time.perf_counter() - started
    return outcome


def read_events(result: Any, outcome: Outcome) -> None:
    """Fill ``outcome`` from a finished run's events, by one rule for failed checks.

    An asset whose check failed is ``failed`` (even when its artifact was a cache hit), its
    check is ``False`` in ``checks``, and the outcome's error is the check's message. A check
    step that crashed without an evaluation counts as a failed check with the crash's message.

    Args:
        result: the ``ExecuteInProcessResult`` of one chain run.
        outcome: the outcome to fill; its assets start ``skipped``.
    """
    status = {"hit": "cached", "transferred": "transferred"}
    for event in result.get_asset_materialization_events():
        cache = event.materialization.metadata.get("cache")
        outcome.assets[event.asset_key.path[-1]] = status.get(cache.value if cache else "", "built")
    for evaluation in result.get_asset_check_evaluations():
        asset = evaluation.asset_key.path[-1]
        outcome.checks[f"{asset}:{evaluation.check_name}"] = evaluation.passed
        if not evaluation.passed:
            error = evaluation.metadata.get("error")
            default = f"[check] {outcome.md5}: {asset} check {evaluation.check_name} failed"
            _fail(outcome, asset, error.value if error else default)
    for event in result.get_step_failure_events():
        asset, _, check = event.step_key.split("__")[-1].removesuffix("_").partition("_")
        if check and f"{asset}:{check}" in outcome.checks:
            continue  # a blocking check's failed evaluation, already reported
        if check:
            outcome.checks[f"{asset}:{check}"] = False
        _fail(outcome, asset, user_message(event.step_failure_data.error))


def _fail(outcome: Outcome, asset: str, error: str) -> None:
    if asset in outcome.assets:
        outcome.assets[asset] = "failed"
    outcome.error = outcome.error or error


def user_message(error: SerializableErrorInfo | None) -> str:
    """The innermost genoflow error in a Dagster error chain, else the innermost message."""
    chain = []
    while error is not None:
        chain.append(error)
        error = error.cause or error.context
    ours = _error_names(GenoflowError)
    for info in reversed(chain):
        if info.cls_name in ours:
            return info.message.split(": ", 1)[-1].strip()
    return chain[-1].message.strip() if chain else "unknown failure"


def _error_names(cls: type) -> set[str]:
    return {cls.__name__}.union(*(_error_names(sub) for sub in cls.__subclasses__()))


def _init_worker(threads: int, memory: int) -> None:
    os.environ["GENOFLOW_THREADS"] = str(threads)
    os.environ["GENOFLOW_SORT_MEMORY"] = str(memory)
    quiet_warnings()


def run_all(
    work: Iterable[tuple[str, str]],
    *,
    settings: Settings,
    jobs: int = 1,
    on_done: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Run every ``(md5, family)`` chain, ``jobs`` at a time; return outcomes in input order."""
    work = list(work)
    done = on_done or (lambda _outcome: None)
    if jobs <= 1 or len(work) <= 1:
        outcomes = []
        for md5, family in work:
            outcomes.append(run_one(md5, family))
            done(outcomes[-1])
        return outcomes
    jobs = min(jobs, len(work))
    share = (max(1, settings.threads // jobs), max(1 << 26, settings.sort_memory // jobs))
    context = multiprocessing.get_context("forkserver")
    # Preload Dagster itself; each worker imports the definitions once, after its warning filters.
    context.set_forkserver_preload(["genoflow.instance.runner"])
    results: dict[tuple[str, str], Outcome] = {}
    with concurrent.futures.ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_init_worker, initargs=share
    ) as pool:
        futures = {pool.submit(run_one, md5, family): (md5, family) for md5, family in work}
        for future in concurrent.futures.as_completed(futures):
            md5, family = futures[future]
            try:
                results[md5, family] = future.result()
            except (concurrent.futures.process.BrokenProcessPool, OSError) as exc:
                # A worker that died (killed, out of memory) fails its md5, not the others.
                results[md5, family] = Outcome(
                    md5, family, error=f"[run] {md5}: worker died: {exc}"
                )
            done(results[md5, family])
    return [results[item] for item in work]
