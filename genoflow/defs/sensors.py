"""The manifest sensor: drop or edit a manifest in the watched folder and its files get built.

Invariant: one tick reads only manifests whose content the cursor has not seen
(:mod:`genoflow.manifests.watch`), registers their valid rows, adds the md5s new to each family as
partitions and requests exactly one run of the family chain per new md5 — partitions, runs and
cursor together in one :class:`SensorResult`, so they never disagree. An md5 that is already a
partition is never requested again here (its rows are still registered, so a new replica helps
the next build); what is missing or stale is the nightly backfill's job. Run keys are
``family:md5:code version``, so even a lost cursor cannot launch a chain twice.

A tick requests at most ``MAX_NEW_PER_TICK`` md5s, so a manifest of any size stays within
Dagster's bounds on one tick; a manifest with more is marked partial in the cursor and read again
on the next tick, which takes the next md5s (those requested are partitions by then). Each row is
registered in the tick that requests its md5, or in the first tick for an md5 already known.

Once every md5 of a manifest's content is requested, the lines of that content are kept in a
sidecar (:mod:`genoflow.manifests.diff`), so when it changes only its new lines are read: a small
edit to a large manifest costs a tick in proportion to the edit, not to the manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dagster import (
    AssetKey,
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

from genoflow.build.steps import CHAINS, chain_version
from genoflow.core.errors import ManifestError
from genoflow.core.settings import Settings
from genoflow.defs import tags
from genoflow.defs.jobs import job_name
from genoflow.defs.partitions import PARTITIONS
from genoflow.defs.resources import GenoflowResource
from genoflow.manifests.diff import ChangedRead, SidecarStore, read_changed
from genoflow.manifests.reading import ManifestRow, RowError
from genoflow.manifests.watch import LocalManifests, ManifestCursor, Scan, manifest_location, scan
from genoflow.manifests.watch.gcs import GcsManifests
from genoflow.storage.gcs import gs_md5
from genoflow.storage.registry import Registry

SENSOR_NAME = "manifest_sensor"
MAX_LOGGED_ROW_ERRORS = 200  # per tick; the rest are counted, so a broken export cannot flood
# Run requests per tick: ~0.65 kB each on the wire, and Dagster bounds a tick by its gRPC timeout
# (60 s) and message size (100 MB); a bigger manifest is worked through over several ticks.
MAX_NEW_PER_TICK = 10_000
# Up to this many md5s, ask the instance about them alone rather than list whole families.
_FEW_MD5S = 1_000


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
        settings = genoflow.settings()
        try:
            location = manifest_location(copies=settings.home / "manifests" / "gs")
        except ManifestError as exc:
            return SkipReason(str(exc))
        return evaluate(context, settings, location, limit=MAX_NEW_PER_TICK)

    return _manifest_sensor


def evaluate(
    context: SensorEvaluationContext,
    settings: Settings,
    location: LocalManifests | GcsManifests,
    *,
    limit: int,
) -> SensorResult | SkipReason:
    """One tick of the manifest sensor over ``location``, requesting at most ``limit`` md5s.

    A location that cannot be listed (a bucket out of reach) skips the tick with the reason and
    keeps the cursor, so nothing is forgotten.
    """
    try:
        if not location.exists():
            return SkipReason(
                f"manifest folder {location} does not exist: create it, or set GENOFLOW_MANIFESTS"
            )
        listing = location.listing()
    except ManifestError as exc:
        context.log.error(str(exc))
        return SkipReason(str(exc))
    previous = ManifestCursor.parse(context.cursor)
    result = scan(previous, listing)
    for problem in result.problems:
        context.log.warning(problem)
    if not result.changed:
        return SensorResult(
            skip_reason=f"nothing new in {location} ({result.summary()})",
            cursor=result.cursor.dumps(),
        )
    continuing = {n for n in result.changed if previous.continues(n, result.cursor.hashes[n])}
    store = SidecarStore(settings.home / "state" / "manifest-lines")
    reads = _read_changed(context, location, result, previous, store, continuing)
    manifests = {name: read.manifest.rows for name, read in reads.items()}
    batch = _batch(manifests, _known(context, manifests), continuing, limit)
    registry = Registry(settings.registry_target)
    try:
        registry.register(batch.register)
    finally:
        registry.close()
    _remember(context, store, previous, result, reads, batch.unfinished)
    cursor = result.cursor.unfinished(batch.unfinished).dumps()
    if not batch.requested:
        rows = sum(len(rows) for rows in manifests.values())
        return SensorResult(
            skip_reason=f"{rows} valid rows, no md5 new to its family ({result.summary()})",
            cursor=cursor,
        )
    later = f"; {batch.later} more on the next ticks" if batch.later else ""
    context.log.info(f"requesting {len(batch.requested)} new md5s{later} ({result.summary()})")
    return SensorResult(
        run_requests=[_run_request(row) for row in batch.requested],
        dynamic_partitions_requests=[
            PARTITIONS[family].build_add_request(md5s)
            for family, md5s in _by_family(batch.requested).items()
        ],
        cursor=cursor,
    )


def _read_changed(
    context: SensorEvaluationContext,
    location: LocalManifests | GcsManifests,
    result: Scan,
    previous: ManifestCursor,
    store: SidecarStore,
    continuing: set[str],
) -> dict[str, ChangedRead]:
    """Each changed manifest read alone, by its new lines when its sidecar allows; every
    problem is logged. A manifest worked through over ticks is read whole (the rows of its
    later md5s are in no sidecar)."""
    reads: dict[str, ChangedRead] = {}
    errors: list[RowError] = []
    for name in result.changed:
        handled = None if name in continuing else store.load(previous.hashes.get(name))
        try:
            read = read_changed(location.path(name), handled, md5_lookup=gs_md5, base=location.base)
        except ManifestError as exc:
            context.log.error(str(exc))
            continue
        reads[name] = read
        errors.extend(read.manifest.errors)
        for warning in read.manifest.warnings()[:MAX_LOGGED_ROW_ERRORS]:
            context.log.warning(f"row kept with a warning: {warning}")
    for error in errors[:MAX_LOGGED_ROW_ERRORS]:
        context.log.warning(f"invalid row {error}")
    if len(errors) > MAX_LOGGED_ROW_ERRORS:
        context.log.warning(f"… and {len(errors) - MAX_LOGGED_ROW_ERRORS} more invalid rows")
    return reads


def _remember(
    context: SensorEvaluationContext,
    store: SidecarStore,
    previous: ManifestCursor,
    result: Scan,
    reads: dict[str, ChangedRead],
    unfinished: set[str],
) -> None:
    """Keep the lines of each manifest whose md5s are all requested, for its next change.

    The previous cursor's sidecars stay too: should this tick's cursor never be committed, the
    next tick starts from that cursor again.
    """
    for name, read in reads.items():
        digest = result.cursor.hashes[name]
        handled = None if name in unfinished else read.handled()
        if handled is None:
            store.discard(digest)
            continue
        try:
            store.save(digest, handled)
        except OSError as exc:  # only the speed of this manifest's next change depends on it
            store.discard(digest)
            context.log.warning(
                f"cannot keep the lines of {name} ({exc}): its next change is read whole"
            )
    store.prune(
        {*previous.hashes.values(), *previous.partial.values(), *result.cursor.hashes.values()}
    )


def _known(
    context: SensorEvaluationContext, manifests: dict[str, list[ManifestRow]]
) -> dict[str, set[str]]:
    """Of the md5s the manifests name, those already partitions, by family."""
    md5s: dict[str, set[str]] = {}
    for rows in manifests.values():
        for row in rows:
            md5s.setdefault(row.family, set()).add(row.md5)
    known = {}
    for family, wanted in md5s.items():
        name = PARTITIONS[family].name
        if len(wanted) <= _FEW_MD5S:
            existing = context.instance.get_existing_dynamic_partitions(name, sorted(wanted))
            known[family] = set(existing)
        else:
            known[family] = set(context.instance.get_dynamic_partitions(name)) & wanted
    return known


@dataclass(frozen=True)
class _Batch:
    requested: list[ManifestRow]  # the first row of each md5 requested in this tick
    register: list[ManifestRow]
    unfinished: set[str]  # manifests holding md5s left for later ticks
    later: int


def _batch(
    manifests: dict[str, list[ManifestRow]],
    known: dict[str, set[str]],
    continuing: set[str],
    limit: int,
) -> _Batch:
    """Split the new md5s into this tick's (at most ``limit``) and later ones.

    Rows are registered with their md5's run: a row of a later md5 waits for its tick, and a
    manifest read again to continue registers only its rows of this tick's md5s (the rest were
    registered when first read).
    """
    firsts: dict[str, ManifestRow] = {}
    for rows in manifests.values():
        for row in rows:
            if row.md5 not in known[row.family]:
                firsts.setdefault(row.md5, row)
    new = list(firsts)
    now, later = set(new[:limit]), set(new[limit:])
    register = [
        row
        for name, rows in manifests.items()
        for row in rows
        if row.md5 in now or (name not in continuing and row.md5 not in later)
    ]
    unfinished = {name for name, rows in manifests.items() if any(r.md5 in later for r in rows)}
    return _Batch([firsts[md5] for md5 in new[:limit]], register, unfinished, len(later))


def _by_family(rows: list[ManifestRow]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for row in rows:
        grouped.setdefault(row.family, []).append(row.md5)
    return grouped


def _run_request(row: ManifestRow) -> RunRequest:
    # The partition tags are set here, so Dagster takes the request as resolved: resolving it
    # again re-reads every partition added in this tick, once per request (quadratic in rows).
    partition_tags = PARTITIONS[row.family].get_tags_for_partition_key(row.md5)
    return RunRequest(
        run_key=run_key(row.family, row.md5),
        job_name=job_name(row.family),
        partition_key=row.md5,
        # Named explicitly so automation sees that this run builds the whole chain.
        asset_selection=[AssetKey([row.family, asset]) for asset in CHAINS[row.family]],
        tags={
            **partition_tags,
            tags.FAMILY: row.family,
            tags.FORMAT: row.format,
            tags.NAME: row.name,
            tags.MANIFEST: f"{row.manifest.name}:{row.line}",
            tags.LAUNCHED_BY: SENSOR_NAME,
            # A whole-chain run: once it succeeds, `genoflow run` needs no run for this md5.
            tags.CHAIN_TAG: chain_version(row.family),
        },
    )
