"""The manifest sensor: drop or edit a manifest in the watched folder and its files get built.

Invariant: one tick reads only manifests whose content the cursor has not seen
(:mod:`genoflow.watch`), registers their valid rows, adds the md5s new to each family as
partitions and requests exactly one run of the family chain per new md5 — partitions, runs and
cursor together in one :class:`SensorResult`, so they never disagree. An md5 that is already a
partition is never requested again here (its rows are still registered, so a new replica helps
the next build); what is missing or stale is the nightly backfill's job. Run keys are
``family:md5:code version``, so even a lost cursor cannot launch a chain twice.
"""

from __future__ import annotations

from collections.abc import Sequence

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition,
)

from genoflow.config import Settings
from genoflow.errors import ManifestError
from genoflow.jobs import job_name
from genoflow.manifest import ManifestRow, RowError, read_manifest
from genoflow.partitions import PARTITIONS
from genoflow.pipeline import CHAINS, version_of
from genoflow.resources import GenoflowResource
from genoflow.storage.gcs import gs_md5
from genoflow.storage.registry import Registry
from genoflow.watch import LocalManifests, ManifestCursor, Scan, manifest_location, scan

SENSOR_NAME = "manifest_sensor"
MAX_LOGGED_ROW_ERRORS = 200  # per tick; the rest are counted, so a broken export cannot flood


def chain_version(family: str) -> str:
    """The code versions of a family's chain, e.g. ``source1.sorted1.index1``."""
    return ".".join(f"{asset}{version_of(family, asset)}" for asset in CHAINS[family])


def run_key(family: str, md5: str) -> str:
    """The deterministic run key of one chain run: family, md5 and the chain's code version."""
    return f"{family}:{md5}:{chain_version(family)}"


def manifest_sensor(
    jobs: Sequence[UnresolvedAssetJobDefinition], *, minimum_interval_seconds: int
) -> SensorDefinition:
    """The sensor over ``GENOFLOW_MANIFESTS``, launching the chain ``jobs``; on by default."""

    @sensor(
        name=SENSOR_NAME,
        jobs=list(jobs),
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=minimum_interval_seconds,
        description="Reads new or changed manifests in GENOFLOW_MANIFESTS, registers their rows, "
        "adds new md5 partitions and runs each new md5's chain.",
    )
    def _manifest_sensor(
        context: SensorEvaluationContext, genoflow: GenoflowResource
    ) -> SensorResult | SkipReason:
        return evaluate(context, genoflow.settings(), manifest_location())

    return _manifest_sensor


def evaluate(
    context: SensorEvaluationContext, settings: Settings, location: LocalManifests
) -> SensorResult | SkipReason:
    """One tick of the manifest sensor over ``location``."""
    if not location.exists():
        return SkipReason(
            f"manifest folder {location} does not exist: create it, or set GENOFLOW_MANIFESTS"
        )
    result = scan(ManifestCursor.parse(context.cursor), location.listing())
    for problem in result.problems:
        context.log.warning(problem)
    cursor = result.cursor.dumps()
    if not result.changed:
        return SensorResult(
            skip_reason=f"nothing new in {location} ({result.summary()})", cursor=cursor
        )
    rows = _read_changed(context, location, result)
    registry = Registry(settings.registry_target)
    try:
        registry.register(rows)
    finally:
        registry.close()
    firsts = _new_md5s(context, rows)
    if not firsts:
        return SensorResult(
            skip_reason=f"{len(rows)} valid rows, no md5 new to its family ({result.summary()})",
            cursor=cursor,
        )
    context.log.info(f"{len(firsts)} new md5s from {len(rows)} valid rows ({result.summary()})")
    return SensorResult(
        run_requests=[_run_request(row) for row in firsts],
        dynamic_partitions_requests=[
            PARTITIONS[family].build_add_request(md5s)
            for family, md5s in _by_family(firsts).items()
        ],
        cursor=cursor,
    )


def _read_changed(
    context: SensorEvaluationContext, location: LocalManifests, result: Scan
) -> list[ManifestRow]:
    """Valid rows of the changed manifests, each read alone; every problem is logged."""
    rows: list[ManifestRow] = []
    errors: list[RowError] = []
    for name in result.changed:
        try:
            manifest = read_manifest(location.path(name), md5_lookup=gs_md5)
        except ManifestError as exc:
            context.log.error(str(exc))
            continue
        rows.extend(manifest.rows)
        errors.extend(manifest.errors)
    for error in errors[:MAX_LOGGED_ROW_ERRORS]:
        context.log.warning(f"invalid row {error}")
    if len(errors) > MAX_LOGGED_ROW_ERRORS:
        context.log.warning(f"… and {len(errors) - MAX_LOGGED_ROW_ERRORS} more invalid rows")
    return rows


def _new_md5s(context: SensorEvaluationContext, rows: list[ManifestRow]) -> list[ManifestRow]:
    """The first row of each md5 that is not yet a partition of its family."""
    firsts: dict[str, ManifestRow] = {}
    for row in rows:
        firsts.setdefault(row.md5, row)
    known = {
        family: set(context.instance.get_dynamic_partitions(PARTITIONS[family].name))
        for family in {row.family for row in firsts.values()}
    }
    return [row for md5, row in firsts.items() if md5 not in known[row.family]]


def _by_family(rows: list[ManifestRow]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for row in rows:
        grouped.setdefault(row.family, []).append(row.md5)
    return grouped


def _run_request(row: ManifestRow) -> RunRequest:
    return RunRequest(
        run_key=run_key(row.family, row.md5),
        job_name=job_name(row.family),
        partition_key=row.md5,
        tags={
            "genoflow/family": row.family,
            "genoflow/format": row.format,
            "genoflow/name": row.name,
            "genoflow/manifest": f"{row.manifest.name}:{row.line}",
            "genoflow/launched_by": SENSOR_NAME,
        },
    )
