"""The nightly backfill: one schedule per family builds whatever is missing or stale.

Invariant: a tick requests one run per partition of :func:`genoflow.defs.backfill.plan` — never one
that a queued or running run already covers — selecting only the assets from the first missing
or stale one to the end of the chain. Run keys are ``backfill:day:family:md5:code version``, so
a second tick on the same day (a daemon restart, a cron that fires twice) launches nothing new.
"""

from __future__ import annotations

import datetime as dt

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition,
)

from genoflow.build.steps import chain_version
from genoflow.defs import tags
from genoflow.defs.backfill import Pending, plan

# One answer of 10,000 run requests is ~7 MB and ~1 s; 100,000 would be ~66 MB, near the
# 100 MB that Dagster's gRPC allows a code server's answer.
MAX_PER_TICK = 10_000


def schedule_name(family: str) -> str:
    return f"{family}_backfill"


def backfill_run_key(day: str, pending: Pending) -> str:
    """``backfill:{day}:{family}:{md5}:{chain code version}``: one run per partition per day."""
    return f"backfill:{day}:{pending.family}:{pending.md5}:{chain_version(pending.family)}"


def backfill_schedule(
    family: str, job: UnresolvedAssetJobDefinition, *, cron: str
) -> ScheduleDefinition:
    """The nightly backfill of one family's chain ``job``, on ``cron`` (UTC); on by default."""

    @schedule(
        name=schedule_name(family),
        job=job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING,
        description=f"Builds every {family} md5 whose chain is missing or stale (code version "
        "changed), skipping those already in progress.",
    )
    def _backfill(context: ScheduleEvaluationContext) -> list[RunRequest] | SkipReason:
        return requests(context, family)

    return _backfill


def requests(
    context: ScheduleEvaluationContext, family: str, *, limit: int = MAX_PER_TICK
) -> list[RunRequest] | SkipReason:
    """The run requests of one backfill tick for ``family``: at most ``limit`` partitions.

    A larger backlog is worked through on the following ticks: the runs this tick launches
    count as in progress, so the next tick requests the next ``limit``.
    """
    pending = plan(context.instance, [family])
    if not pending:
        return SkipReason(f"every {family} partition is up to date or already in progress")
    when = context.scheduled_execution_time or dt.datetime.now(dt.UTC)
    day = when.date().isoformat()
    later = len(pending) - limit
    more = f"; {later} more on the next ticks (or now: genoflow backfill)" if later > 0 else ""
    context.log.info(f"{family}: {len(pending)} partitions missing or stale{more}")
    pending = pending[:limit]
    return [
        RunRequest(
            run_key=backfill_run_key(day, item),
            partition_key=item.md5,
            asset_selection=item.asset_keys,
            tags={
                tags.FAMILY: family,
                tags.LAUNCHED_BY: schedule_name(family),
                tags.REASON: item.describe()[:200],
            },
        )
        for item in pending
    ]
