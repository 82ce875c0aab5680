"""C2M2 file tables (CFDE's ``file.tsv``) read as manifests: run end to end through
``genoflow run``, with the EDAM ``file_format`` mapped and checked against the vendored EDAM
release."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from genoflow.core.settings import Settings
from genoflow.manifests import c2m2
from genoflow.manifests.reading import read_manifest
from genoflow_tests.conftest import run_cli

NS = "cfde_test"
BED = "chr1\t100\t200\tpeak1\nchr1\t10\t50\tpeak0\nchr2\t5\t9\tpeak2\n"
VCF = (
    "##fileformat=VCFv4.2\n##contig=<ID=chr1,length=1000>\n"
    "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
    "chr1\t30\t.\tA\tC\t50\tPASS\t.\nchr1\t7\t.\tG\tT\t50\tPASS\t.\n"
)
SAM = (
    "@HD\tVN:1.6\tSO:unsorted\n@SQ\tSN:chr1\tLN:1000\n"
    "r2\t0\tchr1\t300\t60\t4M\t*\t0\t0\tACGT\tIIII\n"
    "r1\t0\tchr1\t100\t60\t4M\t*\t0\t0\tTTGA\tIIII\n"
)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _row(local_id: str, path: Path | None, fmt: str, **more: str) -> dict[str, str]:
    row = {
        "id_namespace": NS,
        "local_id": local_id,
        "project_id_namespace": NS,
        "project_local_id": "demo_project",
        "filename": path.name if path else f"{local_id}.bed",
        "file_format": fmt,
        "data_type": "data:1255",
        "mime_type": "text/plain",
    }
    if path is not None:
        row.update(
            access_url=path.as_uri(),
            md5=_md5(path),
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
            size_in_bytes=str(path.stat().st_size),
        )
    row.update(more)
    return row


def _write_table(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, c2m2.C2M2_COLUMNS, delimiter="\t", restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def c2m2_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict, str]:
    """One ``genoflow run`` over a file.tsv with good, warned and bad rows."""
    folder = tmp_path_factory.mktemp("c2m2")
    files = {name: folder / name for name in ("peaks.bed", "calls.vcf", "reads.sam")}
    files["peaks.bed"].write_text(BED)
    files["calls.vcf"].write_text(VCF)
    files["reads.sam"].write_text(SAM)
    bam = folder / "reads.bam"
    subprocess.run(["samtools", "view", "-b", "-o", str(bam), str(files["reads.sam"])], check=True)
    unnamed = folder / "variants.txt"  # no suffix: its format can only come from the term
    unnamed.write_text(VCF.replace("chr1\t7", "chr1\t8"))
    tampered = folder / "other.bed"
    tampered.write_text(BED.replace("peak2", "peakX"))
    odd = folder / "odd.bed"
    odd.write_text(BED.replace("peak1", "peakO"))
    rows = [
        _row("FILE_BED", files["peaks.bed"], "format:3003"),
        _row("FILE_VCF", files["calls.vcf"], "format:3016"),
        _row("FILE_BAM", bam, "format:2572"),
        _row("FILE_TXT", unnamed, "format:3016"),
        _row("FILE_UNMAPPED", odd, "format:1930"),  # FASTQ: not a genoflow format
        _row("FILE_LIAR", files["peaks.bed"], "format:2572"),  # says BAM, holds BED text
        _row("FILE_NOWHERE", None, "format:3003", persistent_id="ark:/99999/fk4nowhere"),
        {**_row("FILE_BADMD5", tampered, "format:3003"), "md5": "0" * 32},
    ]
    table = _write_table(folder / "file.tsv", rows)
    home = folder / "home"
    result = run_cli(home, "run", str(table), "--json")
    records = {record["name"]: record for record in json.loads(result.stdout)}
    return home, table, records, result.stderr


def test_every_mapped_edam_term_carries_its_label_in_the_vendored_edam_release() -> None:
    vendored = Path(c2m2.__file__).with_name("edam_formats.tsv")
    lines = [line for line in vendored.read_text().splitlines() if not line.startswith("#")]
    rows = list(csv.DictReader(lines, delimiter="\t"))
    labels = {
        row["class_id"].replace("http://edamontology.org/format_", "format:"): row for row in rows
    }
    assert f"EDAM release {c2m2.EDAM_RELEASE}" in vendored.read_text()
    for curie, (_fmt, label) in c2m2.EDAM_FORMATS.items():
        assert labels[curie]["preferred_label"] == label, curie
        assert labels[curie]["obsolete"] == "FALSE", curie
    for curie, label in c2m2.EDAM_COMPRESSIONS.items():
        assert labels[curie]["preferred_label"] == label, curie
    mapped = {fmt for fmt, _ in c2m2.EDAM_FORMATS.values()}
    assert mapped == {
        "bam", "sam", "vcf", "bed", "gff3", "gtf", "bigBed", "bigWig", "csv", "tsv",
        "narrowPeak", "broadPeak",
    }  # fmt: skip


def test_a_c2m2_file_table_builds_its_rows_under_their_c2m2_names(c2m2_run) -> None:
    _home, _table, records, stderr = c2m2_run
    for local_id, filename in (
        ("FILE_BED", "peaks.bed"),
        ("FILE_VCF", "calls.vcf"),
        ("FILE_BAM", "reads.bam"),
        ("FILE_TXT", "variants.txt"),
    ):
        record = records[f"{NS}:{local_id} {filename}"]
        assert record["error"] is None, (record, stderr)
        assert set(record["assets"].values()) == {"built"}, record
    assert records[f"{NS}:FILE_BAM reads.bam"]["format"] == "bam"
    assert records[f"{NS}:FILE_TXT variants.txt"]["format"] == "vcf"  # from format:3016 alone


def test_the_other_c2m2_columns_appear_in_the_source_lineage(c2m2_run) -> None:
    from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

    home, table, records, _ = c2m2_run
    md5 = records[f"{NS}:FILE_VCF calls.vcf"]["md5"]
    dagster_home = Settings.from_env({"GENOFLOW_HOME": str(home)}).dagster_home
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        found = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(["intervals", "source"]), asset_partitions=[md5]),
            limit=1,
        ).records
    metadata = found[0].asset_materialization.metadata
    columns = metadata["manifest_columns"].value
    vcf = table.parent / "calls.vcf"
    assert columns["local_id"] == "FILE_VCF"
    assert columns["project_local_id"] == "demo_project"
    assert columns["file_format"] == "format:3016"
    assert columns["sha256"] == hashlib.sha256(vcf.read_bytes()).hexdigest()
    assert columns["data_type"] == "data:1255"
    assert f"{NS}:FILE_VCF calls.vcf" in metadata["manifests"].value


def test_an_unmapped_edam_term_falls_back_to_the_file_name_and_says_so(c2m2_run) -> None:
    _home, table, records, stderr = c2m2_run
    record = records[f"{NS}:FILE_UNMAPPED odd.bed"]
    assert record["format"] == "bed" and record["error"] is None
    assert f"warning {table}:6: file_format 'format:1930' is not an EDAM term" in stderr
    assert "format bed taken from the file name 'odd.bed'" in stderr


def test_a_term_the_content_contradicts_is_a_row_error(c2m2_run) -> None:
    _home, table, records, stderr = c2m2_run
    assert not any("FILE_LIAR" in name for name in records)
    assert f"invalid row {table}:7: C2M2 file {NS}:FILE_LIAR: file_format format:2572" in stderr
    assert "says bam but the content is plain text" in stderr


def test_a_row_without_a_usable_location_is_reported_not_guessed(c2m2_run) -> None:
    _home, table, records, stderr = c2m2_run
    assert not any("FILE_NOWHERE" in name for name in records)
    assert f"invalid row {table}:8: C2M2 file {NS}:FILE_NOWHERE: neither access_url" in stderr
    assert "persistent_id ('ark:/99999/fk4nowhere')" in stderr


def test_a_c2m2_md5_the_bytes_do_not_match_fails_that_row(c2m2_run) -> None:
    _home, _table, records, _stderr = c2m2_run
    record = records[f"{NS}:FILE_BADMD5 other.bed"]
    assert record["md5"] == "0" * 32
    assert record["error"] and "md5" in record["error"], record
    assert record["assets"]["source"] == "failed"


def test_the_c2m2_column_hands_a_drs_persistent_id_through_as_the_uri(tmp_path) -> None:
    row = _row("FILE_DRS", None, "format:3003", persistent_id="drs://example.org/abc123")
    row["md5"] = "1" * 32
    fields = {key.lower(): value for key, value in row.items()}
    record = c2m2.row_converter(tmp_path / "file.tsv")(fields, 2)
    assert isinstance(record, dict)
    assert record["uri"] == "drs://example.org/abc123"
    assert record["name"] == f"{NS}:FILE_DRS FILE_DRS.bed"


def test_a_slash_in_the_namespace_stays_inside_one_file_name(tmp_path) -> None:
    bed = tmp_path / "a.bed"
    bed.write_text(BED)
    table = _write_table(
        tmp_path / "file.tsv",
        [_row("F1", bed, "format:3003", id_namespace="https://example.org/")],
    )
    manifest = read_manifest(table)
    assert manifest.errors == []
    assert manifest.rows[0].name == "https:%2F%2Fexample.org%2F:F1 a.bed"


def test_an_ordinary_manifest_still_needs_name_uri_and_md5(tmp_path) -> None:
    from genoflow.core.errors import ManifestError

    table = tmp_path / "m.tsv"
    table.write_text("id_namespace\tlocal_id\tmd5\nx\ty\t" + "0" * 32 + "\n")
    with pytest.raises(ManifestError, match="lacks required column"):
        read_manifest(table)
