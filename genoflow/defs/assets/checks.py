"""Partitioned asset checks: each artifact proves what it must, from what its build observed.

An artifact this process has just built and published, unchanged since (sealed, see
:mod:`genoflow.build.observed`), is proved from the facts its build saw (the md5 of the bytes
staging wrote, the index htslib wrote by reading the whole output) plus cheap probes (one
region query per contig, one BGZF block each); any other artifact is re-read in full, as
before. The proofs live in :mod:`genoflow.build.steps` (``prove_*``); each verdict says which
way it was proved (``proved_by``: ``observed`` or ``re-read``).

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

from genoflow.build.steps import CHAINS, CHECKS, Proof, prove_index, prove_sorted, prove_source
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


def _verdict_of(artifact: Artifact, check: str, proof: Proof) -> AssetCheckResult:
    """A proof's verdict; lists and mappings it measured are shown as JSON."""
    measured = {
        key: MetadataValue.json(value) if isinstance(value, (list, dict)) else value
        for key, value in proof.measured.items()
    }
    return verdict(artifact, check, proof.problem, {**measured, "proved_by": proof.how})


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
        try:
            proof = prove_source(source, genoflow.registry().rows(source.key.md5))
        except (GenoflowError, OSError) as exc:
            return verdict(source, SOURCE_CHECK, getattr(exc, "message", str(exc)), {})
        return _verdict_of(source, SOURCE_CHECK, proof)

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
            proof = prove_sorted(sorted)
        except GenoflowError as exc:
            return verdict(sorted, SORTED_CHECK, exc.message, {})
        return _verdict_of(sorted, SORTED_CHECK, proof)

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
            proof = prove_index(index)
        except GenoflowError as exc:
            return verdict(index, INDEX_CHECK, exc.message, {})
        return _verdict_of(index, INDEX_CHECK, proof)

    return index_check


_CHECK_OF_ASSET = {"source": _source_check, "sorted": _sorted_check, "index": _index_check}


def family_checks(family: str) -> list[AssetChecksDefinition]:
    """The checks of one family's chain: one per asset, in chain order."""
    return [_CHECK_OF_ASSET[asset](family) for asset in CHAINS[family]]
