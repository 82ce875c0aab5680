"""Partitioned asset checks: each artifact proves itself by re-reading what was published.

Invariant: a check always answers with an evaluation when genoflow can say why it fails. A
:class:`~genoflow.core.errors.GenoflowError` while re-reading (a file that no longer reads, a region
query htslib refuses) is a failed evaluation, never a crashed step with no verdict. A failed
evaluation carries ``problem`` (what is wrong) and ``error`` (the one-line message the CLI
prints: ``[check] NAME: ASSET check CHECK failed: PROBLEM — hint``). Every check is blocking:
nothing is built on an artifact that failed one.
"""

# No `from __future__ import annotations` here: Dagster reads these annotations at runtime
# to find the context, resources and inputs of nested asset functions.

from typing import Any

from dagster import AssetCheckResult, AssetChecksDefinition, MetadataValue, asset_check

from genoflow.build.steps import CHAINS, CHECKS, check_order, query_regions
from genoflow.core.checksums import md5_file
from genoflow.core.errors import GenoflowError, ProcessingError
from genoflow.defs.partitions import PARTITIONS
from genoflow.defs.resources import GenoflowResource
from genoflow.storage.cache import Artifact

SOURCE_CHECK = CHECKS["source"]
SORTED_CHECK = CHECKS["sorted"]
INDEX_CHECK = CHECKS["index"]
_HINT = (
    "`genoflow verify --repair` rebuilds a damaged artifact from its input; "
    "if the check still fails after that, report this message"
)


def verdict(
    artifact: Artifact, check: str, problem: str, metadata: dict[str, Any]
) -> AssetCheckResult:
    """A check's evaluation: passed when there is no ``problem``, else failed and explained.

    Args:
        artifact: the artifact checked.
        check: the check's name.
        problem: what is wrong, in a sentence; empty when the check passed.
        metadata: what the check measured.
    """
    metadata = {**metadata, "problem": problem}
    if problem:
        name = (artifact.marker.names or [artifact.key.md5])[0]
        error = ProcessingError(
            f"{artifact.key.asset} check {check} failed: {problem}",
            file=name,
            stage="check",
            hint=_HINT,
        )
        metadata["error"] = str(error)
    return AssetCheckResult(passed=not problem, metadata=metadata)


def _source_check(family: str) -> AssetChecksDefinition:
    @asset_check(
        asset=[family, "source"],
        name=SOURCE_CHECK,
        partitions_def=PARTITIONS[family],
        blocking=True,
        description="The staged bytes hash to the partition's md5 and have the size every "
        "manifest row declares.",
    )
    def source_check(source: Artifact, genoflow: GenoflowResource) -> AssetCheckResult:
        actual = md5_file(source.main)
        size = source.main.stat().st_size
        rows = genoflow.registry().rows(source.key.md5)
        declared = sorted({row.size for row in rows if row.size is not None})
        wrong = [f"{row.manifest}:{row.line}" for row in rows if row.size not in (None, size)]
        problems = []
        if actual != source.key.md5:
            problems.append(f"the staged copy hashes to {actual}, not to the source's md5")
        if wrong:
            problems.append(f"rows declare another size than {size} bytes: {', '.join(wrong)}")
        measured = {
            "md5": actual,
            "expected_md5": source.key.md5,
            "size_bytes": size,
            "declared_sizes": MetadataValue.json(declared),
            "rows_with_another_size": MetadataValue.json(wrong),
        }
        return verdict(source, SOURCE_CHECK, "; ".join(problems), measured)

    return source_check


def _sorted_check(family: str) -> AssetChecksDefinition:
    @asset_check(
        asset=[family, "sorted"],
        name=SORTED_CHECK,
        partitions_def=PARTITIONS[family],
        blocking=True,
        description="Re-reading the output finds every input record, in sorted order.",
    )
    def sorted_check(sorted: Artifact) -> AssetCheckResult:
        try:
            result = check_order(sorted)
        except GenoflowError as exc:
            return verdict(sorted, SORTED_CHECK, exc.message, {})
        expected = sorted.marker.records_in
        problem = ""
        if not result.ordered:
            problem = result.problem or "not in sorted order"
        elif result.records != expected:
            problem = f"re-reading found {result.records} records, the build wrote {expected}"
        measured = {"records": result.records, "records_in": expected, "ordered": result.ordered}
        return verdict(sorted, SORTED_CHECK, problem, measured)

    return sorted_check


def _index_check(family: str) -> AssetChecksDefinition:
    @asset_check(
        asset=[family, "index"],
        name=INDEX_CHECK,
        partitions_def=PARTITIONS[family],
        blocking=True,
        description="A region query per contig through the index finds every record.",
    )
    def index_check(index: Artifact) -> AssetCheckResult:
        try:
            counts = query_regions(index)
        except GenoflowError as exc:
            return verdict(index, INDEX_CHECK, exc.message, {})
        expected = index.marker.records_out
        found = sum(counts.values())
        problem = "" if found == expected else f"region queries found {found} of {expected} records"
        measured = {
            "records": expected,
            "records_found": found,
            "contigs_queried": len(counts),
            "per_contig": MetadataValue.json(counts),
        }
        return verdict(index, INDEX_CHECK, problem, measured)

    return index_check


_CHECK_OF_ASSET = {"source": _source_check, "sorted": _sorted_check, "index": _index_check}


def family_checks(family: str) -> list[AssetChecksDefinition]:
    """The checks of one family's chain: one per asset, in chain order."""
    return [_CHECK_OF_ASSET[asset](family) for asset in CHAINS[family]]
