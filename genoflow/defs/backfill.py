"""What a backfill must build: every partition whose chain is missing or stale, and not in progress.

Invariant: a partition (family, md5) is planned when, for some asset of its chain, Dagster holds
no materialization of it, or the latest one carries another code version than the asset's
current one (what the UI shows as stale). The plan starts at the first such asset and runs to
the end of the chain. A partition that a queued or running run, or a backfill still in progress,
already covers is left out, so nothing is built twice at once. Both the nightly schedules and
``genoflow backfill`` use this plan.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from dagster import AssetKey, AssetRecordsFilter, DagsterEventType, DagsterInstance
from dagster._core.definitions.data_version import CODE_VERSION_TAG
from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus
from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES, RunsFilter
from dagster._core.storage.tags import PARTITION_NAME_TAG

from genoflow.build.steps import CHAINS, version_of
from genoflow.defs.jobs import job_name
from genoflow.defs.partitions import PARTITIONS

_BATCH = 1000


@dataclass(frozen=True)
class Pending:
    """One partition to (re)build: its family, md5, the assets to run and why.

    Attributes:
        assets: the chain from the first missing or stale asset to its end.
        reasons: per asset, ``missing`` or ``stale (code version A → B)``.
    """

    family: str
    md5: str
    assets: tuple[str, ...]
    reasons: dict[str, str]

    @property
    def asset_keys(self) -> list[AssetKey]:
        return [AssetKey([self.family, asset]) for asset in self.assets]

    def describe(self) -> str:
        return ", ".join(f"{asset} {self.reasons[asset]}" for asset in self.reasons)


def plan(instance: DagsterInstance, families: Iterable[str] | None = None) -> list[Pending]:
    """Every missing or stale partition of ``families`` (default: all) not already in progress.

    Args:
        instance: the Dagster instance whose partitions and materializations are read.
        families: the families to look at.

    Raises:
        ValueError: an unknown family.
    """
    chosen = list(CHAINS if families is None else families)
    unknown = [family for family in chosen if family not in CHAINS]
    if unknown:
        raise ValueError(f"unknown family {', '.join(unknown)} (known: {', '.join(CHAINS)})")
    busy = in_progress(instance)
    pending: list[Pending] = []
    for family in chosen:
        md5s = instance.get_dynamic_partitions(PARTITIONS[family].name)
        versions = {
            asset: latest_code_versions(instance, AssetKey([family, asset]))
            for asset in CHAINS[family]
        }
        for md5 in md5s:
            if (family, md5) in busy:
                continue
            found = _pending(family, md5, versions)
            if found is not None:
                pending.append(found)
    return pending


def _pending(family: str, md5: str, versions: dict[str, dict[str, str | None]]) -> Pending | None:
    chain = CHAINS[family]
    reasons: dict[str, str] = {}
    for asset in chain:
        current = version_of(family, asset)
        if md5 not in versions[asset]:
            reasons[asset] = "missing"
        elif versions[asset][md5] != current:
            reasons[asset] = f"stale (code version {versions[asset][md5]} → {current})"
    if not reasons:
        return None
    first = min(chain.index(asset) for asset in reasons)
    return Pending(family, md5, chain[first:], reasons)


def latest_code_versions(instance: DagsterInstance, key: AssetKey) -> dict[str, str | None]:
    """Partition → code version of its latest materialization (partitions never built absent).

    One query finds each partition's latest event; the events themselves are read in batches,
    since the code version is not an indexed tag.
    """
    storage = instance.event_log_storage
    latest = storage.get_latest_storage_id_by_partition(key, DagsterEventType.ASSET_MATERIALIZATION)
    ids = sorted(latest.values())
    versions: dict[str, str | None] = {}
    for start in range(0, len(ids), _BATCH):
        batch = ids[start : start + _BATCH]
        found = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=key, storage_ids=batch), limit=len(batch)
        )
        for record in found.records:
            materialization = record.asset_materialization
            if materialization is not None and materialization.partition is not None:
                tags = materialization.tags or {}
                versions[materialization.partition] = tags.get(CODE_VERSION_TAG)
    return versions


def in_progress(instance: DagsterInstance) -> set[tuple[str, str]]:
    """(family, md5) pairs that a queued or running run, or a live backfill, covers."""
    busy: set[tuple[str, str]] = set()
    by_job = {job_name(family): family for family in CHAINS}
    for run in instance.get_runs(filters=RunsFilter(statuses=IN_PROGRESS_RUN_STATUSES)):
        partition = run.tags.get(PARTITION_NAME_TAG)
        if partition is None:
            continue
        if run.asset_selection:
            busy.update((key.path[0], partition) for key in run.asset_selection)
        elif run.job_name in by_job:
            busy.add((by_job[run.job_name], partition))
    live = BulkActionsFilter(statuses=[BulkActionStatus.REQUESTED])
    for backfill in instance.get_backfills(filters=live):
        if backfill.asset_backfill_data is None:
            continue
        target = backfill.asset_backfill_data.target_subset
        busy.update(_families_and_keys(target.iterate_asset_partitions()))
    return busy


def _families_and_keys(partitions: Iterable) -> Iterator[tuple[str, str]]:
    for item in partitions:
        if item.partition_key is not None:
            yield item.asset_key.path[0], item.partition_key


def summary_rows(pending: Sequence[Pending]) -> list[list[str]]:
    """Table rows (family, md5, assets, why) for printing a plan."""
    return [[p.family, p.md5, " → ".join(p.assets), p.describe()] for p in pending]
