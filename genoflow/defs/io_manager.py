"""The IO manager: publishes built artifacts into the cache and loads them for downstream steps.

An asset returns either a cache hit (:class:`Artifact`) or a draft (:class:`Built`); only here
does a draft become visible, through the cache's atomic publish.
"""

from __future__ import annotations

from typing import Any

from dagster import ConfigurableIOManager, InputContext, MetadataValue, OutputContext

from genoflow.build.steps import Built, key_for, publish
from genoflow.core.errors import StorageError, redact
from genoflow.defs.resources import GenoflowResource
from genoflow.storage.cache import Artifact


class ArtifactIOManager(ConfigurableIOManager):
    """Publishes each asset's files atomically under ``$GENOFLOW_HOME/cache``."""

    genoflow: GenoflowResource

    def handle_output(self, context: OutputContext, obj: Artifact | Built) -> None:
        with self.genoflow.node() as node:
            if isinstance(obj, Built):
                artifact = publish(node, obj)
            else:
                artifact = obj
                node.register(artifact)  # completes replication a failed run left undone
            metadata = artifact_metadata(artifact)
            metadata["replicas"] = MetadataValue.json(
                [
                    {"uri": redact(r.uri), "type": str(r.data_type), "deployment": r.deployment}
                    for r in node.replicas_of(artifact.key)
                ]
            )
        context.add_output_metadata(metadata)

    def load_input(self, context: InputContext) -> Artifact:
        family, asset = context.asset_key.path
        md5 = context.asset_partition_key
        with self.genoflow.node() as node:
            artifact = node.obtain(key_for(family, md5, asset))
        if artifact is None:
            raise StorageError(
                f"{family}/{asset} is not in the cache for this md5",
                file=md5,
                stage="load",
                hint=f"materialize {family}/{asset} for this partition first",
            )
        return artifact


def artifact_metadata(artifact: Artifact) -> dict[str, Any]:
    """What a person inspecting lineage wants to see about one published artifact."""
    marker = artifact.marker
    details = marker.details
    files = [
        {"name": e.name, "size": e.size, "md5": e.md5, "path": str(artifact.path / e.name)}
        for e in artifact.entries
    ]
    metadata: dict[str, Any] = {
        "path": MetadataValue.path(str(artifact.main)),
        "folder": MetadataValue.path(str(artifact.path)),
        "files": MetadataValue.json(files),
        "size_bytes": artifact.size,
        "checksum": artifact.checksum,
        "format": marker.format,
        "names": ", ".join(marker.names),
        "processor": marker.processor,
        "processor_version": artifact.key.version,
        "tools": MetadataValue.json(dict(marker.tools)),
        "created_at": marker.created_at,
    }
    for field in ("records_in", "records_out", "index", "preset", "container", "sha256"):
        if field in details:
            metadata[field] = details[field]
    if "manifest_rows" in details:
        metadata["manifest_rows"] = MetadataValue.json(details["manifest_rows"])
    return metadata
