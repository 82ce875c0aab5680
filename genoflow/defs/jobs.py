"""One job per family: the whole chain, with its checks, for one md5 partition per run."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job
from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition,
)

from genoflow.build.steps import job_name
from genoflow.defs.tags import FAMILY

__all__ = ["family_job", "job_name"]


def family_job(family: str) -> UnresolvedAssetJobDefinition:
    """Materialize every asset of ``family`` (and run its checks) for one md5."""
    return define_asset_job(
        job_name(family),
        selection=AssetSelection.groups(family),
        description=f"Stage, sort and index one {family} source (one md5 per run).",
        tags={FAMILY: family},
    )
