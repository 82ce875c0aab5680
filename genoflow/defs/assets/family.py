"""The asset chain of one family: ``source`` → ``sorted`` → ``index`` (passthrough: ``source``).

Each body is a few lines: it asks :mod:`genoflow.build.steps` for a cache hit or a built draft and
returns it with the artifact's content checksum as its data version.
"""

# No `from __future__ import annotations` here: Dagster reads these annotations at runtime
# to find the context, resources and inputs of nested asset functions.

import time

from dagster import AssetExecutionContext, AssetIn, AssetsDefinition, DataVersion, Output, asset

from genoflow.build.steps import (
    CHAINS,
    FAMILIES,
    Built,
    build_index,
    build_sorted,
    build_source,
    version_of,
)
from genoflow.core.errors import SourceError
from genoflow.defs import tags
from genoflow.defs.assets.lineage import (
    family_formats,
    output_tags,
    source_metadata,
    viewer_metadata,
)
from genoflow.defs.automation import chain_condition
from genoflow.defs.partitions import PARTITIONS
from genoflow.defs.resources import GenoflowResource
from genoflow.storage.cache import Artifact
from genoflow.storage.node import Node


def _output(
    result: Artifact | Built, started: float, node: Node, extra: dict | None = None
) -> Output:
    if isinstance(result, Built):
        cache, key, details = "miss", result.draft.key, result.details
    else:
        cache = "transferred" if result.key in node.transferred else "hit"
        key, details = result.key, result.marker.details
    return Output(
        result,
        data_version=DataVersion(result.checksum),
        metadata={
            "cache": cache,
            "seconds": round(time.perf_counter() - started, 3),
            "family": key.family,
            **viewer_metadata(key.family, key.md5),
            **(extra or {}),
        },
        tags=output_tags(details, key.family),
    )


def _spec(family: str, asset_name: str) -> dict:
    return {
        "key": [family, asset_name],
        "partitions_def": PARTITIONS[family],
        "group_name": family,
        "io_manager_key": "artifact_io_manager",
        "code_version": version_of(family, asset_name),
        "description": FAMILIES[family].descriptions[asset_name],
        # Formats are kinds (tags the UI filters by, as `kind:vcf`); one asset holds several.
        "tags": {tags.FAMILY: family, tags.ASSET: asset_name},
        "kinds": set(family_formats(family)),
        "automation_condition": chain_condition() if asset_name != "source" else None,
    }


def family_assets(family: str) -> list[AssetsDefinition]:
    """The assets of one family's chain, keyed ``[family, asset]`` in group ``family``."""

    @asset(**_spec(family, "source"))
    def source(context: AssetExecutionContext, genoflow: GenoflowResource) -> Output:
        started = time.perf_counter()
        md5 = context.partition_key
        rows = genoflow.registry().rows(md5)
        if not rows:
            raise SourceError(
                "no manifest row names this md5",
                file=md5,
                hint="add the file to a manifest and run `genoflow run MANIFEST`",
            )
        with genoflow.node() as node:
            built = build_source(node, rows, md5=md5, settings=node.settings)
            return _output(built, started, node, source_metadata(rows))

    if CHAINS[family] == ("source",):
        return [source]

    @asset(ins={"source": AssetIn(key=[family, "source"])}, **_spec(family, "sorted"))
    def sorted_(genoflow: GenoflowResource, source: Artifact) -> Output:
        started = time.perf_counter()
        with genoflow.node() as node:
            return _output(build_sorted(node, source, node.settings), started, node)

    @asset(ins={"sorted_": AssetIn(key=[family, "sorted"])}, **_spec(family, "index"))
    def index(genoflow: GenoflowResource, sorted_: Artifact) -> Output:
        started = time.perf_counter()
        with genoflow.node() as node:
            return _output(build_index(node, sorted_, node.settings), started, node)

    return [source, sorted_, index]
