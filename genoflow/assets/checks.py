"""Partitioned asset checks: each artifact proves itself by re-reading what was published."""

# No `from __future__ import annotations` here: Dagster reads these annotations at runtime
# to find the context, resources and inputs of nested asset functions.

from dagster import AssetCheckResult, AssetChecksDefinition, MetadataValue, asset_check

from genoflow.checksums import md5_file
from genoflow.partitions import PARTITIONS
from genoflow.pipeline import CHAINS, check_order, query_regions
from genoflow.resources import GenoflowResource
from genoflow.storage.cache import Artifact


def family_checks(family: str) -> list[AssetChecksDefinition]:
    """The checks of one family's chain."""
    partitions = PARTITIONS[family]

    @asset_check(
        asset=[family, "source"],
        name="md5_and_size_match_manifest",
        partitions_def=partitions,
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
        return AssetCheckResult(
            passed=actual == source.key.md5 and not wrong,
            metadata={
                "md5": actual,
                "expected_md5": source.key.md5,
                "size_bytes": size,
                "declared_sizes": MetadataValue.json(declared),
                "rows_with_another_size": MetadataValue.json(wrong),
            },
        )

    if CHAINS[family] == ("source",):
        return [source_check]

    @asset_check(
        asset=[family, "sorted"],
        name="records_preserved_and_ordered",
        partitions_def=partitions,
        blocking=True,
        description="Re-reading the output finds every input record, in sorted order.",
    )
    def sorted_check(sorted: Artifact) -> AssetCheckResult:
        result = check_order(sorted)
        expected = sorted.marker["details"]["records_in"]
        return AssetCheckResult(
            passed=result.ordered and result.records == expected,
            metadata={
                "records": result.records,
                "records_in": expected,
                "ordered": result.ordered,
                "problem": result.problem or "",
            },
        )

    @asset_check(
        asset=[family, "index"],
        name="answers_region_queries",
        partitions_def=partitions,
        blocking=True,
        description="A region query per contig through the index finds every record.",
    )
    def index_check(index: Artifact) -> AssetCheckResult:
        counts = query_regions(index)
        expected = index.marker["details"]["records_out"]
        return AssetCheckResult(
            passed=sum(counts.values()) == expected,
            metadata={
                "records": expected,
                "records_found": sum(counts.values()),
                "contigs_queried": len(counts),
                "per_contig": MetadataValue.json(counts),
            },
        )

    return [source_check, sorted_check, index_check]
