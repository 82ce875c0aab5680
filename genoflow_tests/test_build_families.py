"""One object per family says its chain, its versions and which processor sorts, indexes and checks.

The dispatch cases build real artifacts from the demo data through a real cache, so the processor
named in each marker is the one whose output is on disk.
"""

from __future__ import annotations

from pathlib import Path

import pysam
import pytest

from genoflow.build import families, steps
from genoflow.build.families import FAMILIES, family_named
from genoflow.core.errors import FormatError, ProcessingError
from genoflow.core.settings import Settings
from genoflow.manifests.reading import read_manifest
from genoflow.processors import alignments, intervals
from genoflow.storage.cache import Artifact, Cache

from .conftest import DATA

DEMO = DATA / "manifests" / "demo.tsv"
SORTED_CHAIN = ("source", "sorted", "index")
PROCESSORS = {
    "alignments": {
        "sorted": "genoflow.processors.alignments.sort_alignments",
        "index": "genoflow.processors.alignments.index_alignments",
    },
    "intervals": {
        "sorted": "genoflow.processors.intervals.sort_intervals",
        "index": "genoflow.processors.intervals.index_intervals",
    },
}


def _settings(home: Path) -> Settings:
    environ = {"GENOFLOW_HOME": str(home), "GENOFLOW_SORT_MEMORY": "64M", "GENOFLOW_THREADS": "1"}
    return Settings.from_env(environ)


def _publish(cache: Cache, built: Artifact | steps.Built) -> Artifact:
    assert isinstance(built, steps.Built), "a fresh cache must build, not hit"
    return steps.publish(cache, built)


def _chain(home: Path, name: str) -> tuple[Artifact, Artifact, Artifact]:
    """Stage, sort and index one demo file through ``genoflow.build.steps``."""
    settings = _settings(home)
    cache = Cache(settings.cache_root)
    rows = [row for row in read_manifest(DEMO).rows if row.name == name]
    source = _publish(cache, steps.build_source(cache, rows, md5=rows[0].md5, settings=settings))
    sorted_ = _publish(cache, steps.build_sorted(cache, source, settings))
    index = _publish(cache, steps.build_index(cache, sorted_, settings))
    return source, sorted_, index


def test_there_is_one_family_object_per_family_and_the_chains_derive_from_them() -> None:
    assert set(FAMILIES) == {"alignments", "intervals", "passthrough"}
    assert steps.CHAINS == {
        "alignments": SORTED_CHAIN,
        "intervals": SORTED_CHAIN,
        "passthrough": ("source",),
    }
    for name, family in FAMILIES.items():
        assert family.name == name
        assert steps.CHAINS[name] == family.chain
        assert set(family.versions) == set(family.chain) == set(family.descriptions)


def test_each_family_keeps_the_code_versions_it_had_before_the_move() -> None:
    assert steps.chain_version("alignments") == (
        f"source1.sorted{alignments.SORT_VERSION}.index{alignments.INDEX_VERSION}"
    )
    assert steps.chain_version("intervals") == (
        f"source1.sorted{intervals.SORT_VERSION}.index{intervals.INDEX_VERSION}"
    )
    assert steps.chain_version("passthrough") == "source1"
    for name, family in FAMILIES.items():
        for asset in family.chain:
            assert steps.version_of(name, asset) == family.version(asset)
            assert steps.key_for(name, "0" * 32, asset).version == family.version(asset)
    assert steps.job_name("intervals") == "intervals_chain"


def test_the_processor_names_recorded_in_markers_are_unchanged() -> None:
    for name, processors in PROCESSORS.items():
        assert dict(FAMILIES[name].processors) == processors
    assert dict(FAMILIES["passthrough"].processors) == {}


def test_every_family_describes_its_source_the_same_way_and_its_own_sorted_asset() -> None:
    sources = {family.descriptions["source"] for family in FAMILIES.values()}
    assert sources == {"The source file staged from its best replica, md5- and size-verified."}
    assert FAMILIES["alignments"].descriptions["sorted"].startswith("Coordinate-sorted BAM")
    assert "tabix" in FAMILIES["intervals"].descriptions["index"]


def test_an_alignments_chain_is_sorted_indexed_and_checked_by_the_alignment_processors(
    tmp_path,
) -> None:
    source, sorted_, index = _chain(tmp_path, "sample3.bam")
    assert sorted_.marker.processor == PROCESSORS["alignments"]["sorted"]
    assert index.marker.processor == PROCESSORS["alignments"]["index"]
    assert source.marker.processor == "genoflow.storage.staging.stage"
    with pysam.AlignmentFile(str(sorted_.main), "rb") as bam:
        assert bam.header.to_dict()["HD"]["SO"] == "coordinate"
    check = steps.check_order(sorted_)
    assert check.ordered and check.records == sorted_.marker.records_in
    assert sum(steps.query_regions(index).values()) == index.marker.records_out


def test_an_intervals_chain_is_sorted_indexed_and_checked_by_the_interval_processors(
    tmp_path,
) -> None:
    _, sorted_, index = _chain(tmp_path, "trio.vcf")
    assert sorted_.marker.processor == PROCESSORS["intervals"]["sorted"]
    assert index.marker.processor == PROCESSORS["intervals"]["index"]
    assert sorted_.main.name.endswith(".vcf.gz")
    assert any(path.name.endswith((".tbi", ".csi")) for path in index.files)
    check = steps.check_order(sorted_)
    assert check.ordered and check.records == sorted_.marker.records_in
    assert sum(steps.query_regions(index).values()) == index.marker.records_out


def test_an_intervals_file_is_refused_by_the_alignments_family(tmp_path) -> None:
    _, sorted_, _ = _chain(tmp_path, "enhancers.bed")
    with pytest.raises(ProcessingError, match=r"^\[check\] enhancers.bed: "):
        FAMILIES["alignments"].check_order(sorted_.main, fmt="bed", name="enhancers.bed")
    assert FAMILIES["intervals"].check_order(sorted_.main, fmt="bed", name="enhancers.bed").ordered


def test_the_passthrough_family_refuses_to_sort_index_or_check(tmp_path) -> None:
    passthrough = FAMILIES["passthrough"]
    settings = _settings(tmp_path)
    csv = DATA / "manifests" / "demo" / "samples.csv"
    with pytest.raises(ProcessingError, match="passthrough family has no sorted asset") as raised:
        passthrough.sort(csv, tmp_path, fmt="csv", work_dir=tmp_path, settings=settings, name="s")
    assert str(raised.value).startswith("[sort] s: ")
    with pytest.raises(ProcessingError, match="no index asset"):
        passthrough.index(csv, tmp_path, fmt="csv", settings=settings, name="s")
    with pytest.raises(ProcessingError, match="no sorted asset"):
        passthrough.check_order(csv, fmt="csv", name="s")
    with pytest.raises(ProcessingError, match="no index asset"):
        passthrough.query_regions(tmp_path, fmt="csv", name="s")
    assert not list(tmp_path.iterdir())


def test_an_unknown_family_name_is_refused_with_the_known_ones_named() -> None:
    with pytest.raises(FormatError) as raised:
        family_named("genomes")
    message = str(raised.value)
    assert message.startswith("[build] unknown family 'genomes'")
    assert "known families: alignments, intervals, passthrough" in message
    with pytest.raises(FormatError, match="unknown family 'genomes'"):
        steps.version_of("genomes", "source")
    with pytest.raises(FormatError, match="unknown family 'genomes'"):
        families.key_for("genomes", "0" * 32, "source")
