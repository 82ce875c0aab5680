"""A declared sha256 (C2M2's ``sha256`` column, or a plain manifest's) is verified while staging.

Staging hashes sha256 in the same pass as md5, as it copies; a copy whose sha256 is not the one
declared fails its source at stage ``stage``, naming the file and both digests, and leaves
nothing: no staged copy, no published artifact. The verified sha256 is kept in the source's
marker beside its md5.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest

from genoflow.core.errors import ChecksumError
from genoflow.manifests import c2m2
from genoflow.manifests.reading import read_manifest
from genoflow.storage import staging
from genoflow_tests.conftest import run_cli

NS = "cfde_sha"
BED_GOOD = b"chr1\t100\t200\tpeak1\nchr1\t10\t50\tpeak0\n"
BED_BAD = b"chr2\t5\t9\tpeak2\nchr1\t1\t4\tpeak3\n"
PLAIN = b"chr3\t7\t70\tpeak4\nchr3\t2\t20\tpeak5\n"
WRONG = "ab" * 32


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _c2m2_row(local_id: str, path: Path, sha256: str) -> dict[str, str]:
    data = path.read_bytes()
    return {
        "id_namespace": NS,
        "local_id": local_id,
        "project_id_namespace": NS,
        "project_local_id": "sha_project",
        "filename": path.name,
        "file_format": "format:3003",
        "access_url": path.as_uri(),
        "md5": _md5(data),
        "sha256": sha256,
        "size_in_bytes": str(len(data)),
    }


@pytest.fixture(scope="module")
def sha_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    """One ``genoflow run`` over a C2M2 table (a right and a wrong sha256) and a plain manifest
    whose sha256 column is wrong."""
    folder = tmp_path_factory.mktemp("sha256")
    good, bad, plain = folder / "good.bed", folder / "bad.bed", folder / "plain.bed"
    good.write_bytes(BED_GOOD)
    bad.write_bytes(BED_BAD)
    plain.write_bytes(PLAIN)
    table = folder / "file.tsv"
    with table.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, c2m2.C2M2_COLUMNS, delimiter="\t", restval="")
        writer.writeheader()
        writer.writerow(_c2m2_row("GOOD", good, _sha256(BED_GOOD)))
        writer.writerow(_c2m2_row("BAD", bad, WRONG.upper()))  # case does not matter
    manifest = folder / "plain.tsv"
    manifest.write_text(f"name\turi\tmd5\tsha256\nplain.bed\t{plain}\t{_md5(PLAIN)}\t{WRONG}\n")
    home = folder / "home"
    result = run_cli(home, "run", str(table), str(manifest), "--json")
    records = {record["name"]: record for record in json.loads(result.stdout)}
    return home, records, result.stderr


def _artifacts(home: Path, md5: str) -> list[Path]:
    return sorted(path for path in home.rglob(f"{md5}/*") if path.is_dir())


def test_a_c2m2_row_whose_sha256_matches_builds_and_keeps_it_in_the_marker(sha_run) -> None:
    home, records, stderr = sha_run
    record = records[f"{NS}:GOOD good.bed"]
    assert record["error"] is None, (record, stderr)
    assert set(record["assets"].values()) == {"built"}, record
    (marker,) = home.rglob(f"{_md5(BED_GOOD)}/source/*/genoflow.json")
    details = json.loads(marker.read_text())["details"]
    assert details["sha256"] == _sha256(BED_GOOD)
    # ... and in the lineage the Dagster UI shows for the source asset
    from genoflow.build.steps import key_for
    from genoflow.defs.io_manager import artifact_metadata
    from genoflow.storage.cache import Cache

    artifact = Cache(home / "cache").lookup(key_for("intervals", _md5(BED_GOOD), "source"))
    assert artifact is not None
    assert artifact_metadata(artifact)["sha256"] == _sha256(BED_GOOD)


def test_a_c2m2_row_whose_sha256_is_wrong_fails_at_stage_naming_both_digests(sha_run) -> None:
    home, records, _ = sha_run
    record = records[f"{NS}:BAD bad.bed"]
    assert record["assets"]["source"] == "failed", record
    error = record["error"]
    assert f"[stage] {NS}:BAD bad.bed: sha256 is {_sha256(BED_BAD)}" in error
    assert f"the manifest says {WRONG}" in error
    assert "correct the manifest's sha256" in error
    assert _artifacts(home, _md5(BED_BAD)) == []  # nothing published, nothing half-written
    assert not [path for path in home.rglob("*") if ".tmp." in path.name]


def test_a_plain_manifest_sha256_column_is_verified_too(sha_run) -> None:
    home, records, _ = sha_run
    record = records["plain.bed"]
    assert record["assets"]["source"] == "failed", record
    assert f"sha256 is {_sha256(PLAIN)}, the manifest says {WRONG}" in record["error"]
    assert _artifacts(home, _md5(PLAIN)) == []


def test_a_wrong_sha256_deletes_the_staged_copy(tmp_path: Path) -> None:
    source = tmp_path / "a.bed"
    source.write_bytes(BED_BAD)
    dest = tmp_path / "staged"
    with pytest.raises(ChecksumError) as caught:
        staging.copy_verified(
            str(source), dest, md5=_md5(BED_BAD), size=None, name="a.bed", sha256=WRONG
        )
    assert caught.value.stage == "stage"
    assert _sha256(BED_BAD) in caught.value.message and WRONG in caught.value.message
    assert not dest.exists()


def test_a_right_sha256_stages_the_copy(tmp_path: Path) -> None:
    source = tmp_path / "a.bed"
    source.write_bytes(BED_GOOD)
    dest = tmp_path / "staged"
    staging.copy_verified(
        str(source), dest, md5=_md5(BED_GOOD), size=None, name="a.bed", sha256=_sha256(BED_GOOD)
    )
    assert dest.read_bytes() == BED_GOOD


def test_a_malformed_sha256_is_a_row_error(tmp_path: Path) -> None:
    bed = tmp_path / "a.bed"
    bed.write_bytes(BED_GOOD)
    manifest = tmp_path / "m.tsv"
    manifest.write_text(f"name\turi\tmd5\tsha256\na.bed\t{bed}\t{_md5(BED_GOOD)}\tnot-a-digest\n")
    read = read_manifest(manifest)
    assert read.rows == []
    assert "malformed sha256 'not-a-digest' (need 64 hex digits" in read.errors[0].reason


def test_rows_of_one_md5_declaring_two_sha256s_fail_before_reading(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first, second = tmp_path / "a.bed", tmp_path / "copy.bed"
    first.write_bytes(BED_GOOD)
    second.write_bytes(BED_GOOD)  # a replica of the same file
    manifest = tmp_path / "m.tsv"
    manifest.write_text(
        "name\turi\tmd5\tsha256\n"
        f"a.bed\t{first}\t{_md5(BED_GOOD)}\t{_sha256(BED_GOOD)}\n"
        f"a.bed\t{second}\t{_md5(BED_GOOD)}\t{WRONG}\n"
    )
    result = run_cli(home, "run", str(manifest), "--json")
    (record,) = json.loads(result.stdout)
    assert record["assets"]["source"] == "failed", (record, result.stderr)
    assert "declare different sha256s" in record["error"]
    assert f"{WRONG} at {manifest}:3" in record["error"]


def test_a_sha256_corrected_in_the_manifest_builds_on_the_next_run(tmp_path: Path) -> None:
    home = tmp_path / "home"
    bed = tmp_path / "a.bed"
    bed.write_bytes(BED_GOOD)
    manifest = tmp_path / "m.tsv"
    line = f"name\turi\tmd5\tsha256\na.bed\t{bed}\t{_md5(BED_GOOD)}\t"
    manifest.write_text(line + WRONG + "\n")
    (failed,) = json.loads(run_cli(home, "run", str(manifest), "--json").stdout)
    assert failed["assets"]["source"] == "failed"
    manifest.write_text(line + _sha256(BED_GOOD) + "\n")
    result = run_cli(home, "run", str(manifest), "--json")
    (record,) = json.loads(result.stdout)
    assert record["error"] is None, (record, result.stderr)
    assert set(record["assets"].values()) == {"built"}


def test_the_demo_c2m2_table_carries_sha256s_that_verify() -> None:
    """The shipped example must keep building now that its sha256s are checked."""
    table = Path(__file__).resolve().parents[1] / "data" / "c2m2" / "file.tsv"
    rows = read_manifest(table).rows
    assert rows
    for row in rows:
        assert _sha256(Path(row.uri).read_bytes()) == row.extra["sha256"], row.name
