"""Each family's chain materializes through Dagster on one md5 partition; a re-run is a hit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, materialize

from genoflow.defs.assets import family_assets, family_checks
from genoflow.defs.io_manager import ArtifactIOManager
from genoflow.defs.partitions import PARTITIONS
from genoflow.defs.resources import GenoflowResource
from genoflow.manifests.reading import read_manifest
from genoflow.storage.registry import Registry

from .conftest import DATA

DEMO = DATA / "manifests" / "demo.tsv"
ONE_PER_FAMILY = {
    "alignments": "sample3.bam",
    "intervals": "trio.vcf",
    "passthrough": "coverage.bw",
}


def _resources(home: Path) -> dict:
    genoflow = GenoflowResource(home=str(home), sort_memory="64M", threads=1)
    return {"genoflow": genoflow, "artifact_io_manager": ArtifactIOManager(genoflow=genoflow)}


def _register(home: Path, name: str, instance: DagsterInstance) -> tuple[str, str]:
    rows = [row for row in read_manifest(DEMO).rows if row.name == name]
    with Registry(home / "registry.db") as registry:
        registry.register(rows)
    family = rows[0].family
    instance.add_dynamic_partitions(PARTITIONS[family].name, [rows[0].md5])
    return family, rows[0].md5


def _materialize(family: str, md5: str, home: Path, instance: DagsterInstance):
    return materialize(
        [*family_assets(family), *family_checks(family)],
        partition_key=md5,
        resources=_resources(home),
        instance=instance,
    )


@pytest.mark.parametrize("family", sorted(ONE_PER_FAMILY))
def test_family_chain_materializes_and_passes_its_checks(family, tmp_path, instance) -> None:
    family, md5 = _register(tmp_path, ONE_PER_FAMILY[family], instance)
    result = _materialize(family, md5, tmp_path, instance)
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    assert evaluations and all(evaluation.passed for evaluation in evaluations)
    materialized = {event.asset_key for event in result.get_asset_materialization_events()}
    assert AssetKey([family, "source"]) in materialized
    metadata = result.asset_materializations_for_node(f"{family}__source")[0].metadata
    assert metadata["cache"].value == "miss"
    assert Path(metadata["path"].value).is_file()


def test_rematerializing_is_a_cache_hit_with_the_same_data_version(tmp_path, instance) -> None:
    family, md5 = _register(tmp_path, "enhancers.bed", instance)
    first = _materialize(family, md5, tmp_path, instance)
    second = _materialize(family, md5, tmp_path, instance)
    assert second.success
    for asset in ("source", "sorted", "index"):
        before = first.asset_materializations_for_node(f"{family}__{asset}")[0]
        after = second.asset_materializations_for_node(f"{family}__{asset}")[0]
        assert after.metadata["cache"].value == "hit"
        assert after.tags["dagster/data_version"] == before.tags["dagster/data_version"]


def test_a_wrong_md5_fails_the_source_and_publishes_nothing(tmp_path, instance) -> None:
    rows = [row for row in read_manifest(DEMO).rows if row.name == "genes.gtf"]
    wrong = "0" * 32
    with Registry(tmp_path / "registry.db") as registry:
        registry.register([dataclasses.replace(rows[0], md5=wrong)])
    instance.add_dynamic_partitions(PARTITIONS["intervals"].name, [wrong])
    result = materialize(
        [*family_assets("intervals")],
        partition_key=wrong,
        resources=_resources(tmp_path),
        instance=instance,
        raise_on_error=False,
    )
    assert not result.success
    assert not (tmp_path / "cache" / "intervals" / "00" / wrong / "source" / "v1").exists()
    leftovers = list((tmp_path / "cache").rglob("*.tmp.*")) + list((tmp_path / "work").glob("*"))
    assert leftovers == []
