"""Issue 12, failure 3: contig names holding ``:`` and ``-``, and one face for a failed check.

Region queries name a contig in htslib's braces (tabix) or by its id (BAM), so ``chr1:100-200``
beside ``chr1`` and ``HLA-A*01:01:01:01`` build and pass every check; Debian's ``tabix`` and
``samtools`` are the oracles for the counts. A check that genuinely fails (a published artifact
damaged after its build, checked again by a real Dagster run) shows the same everywhere: its
asset ``failed`` with the check named in the table, ``False`` in ``--json``'s ``checks``,
``valid: false`` with ``failed_checks`` in ``status --json``, and a rerun that checks again
and reports the same failure instead of ``cached``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import uuid
from collections import Counter
from pathlib import Path

import pysam
import pytest
from dagster import DagsterInstance, DagsterRunStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.tags import PARTITION_NAME_TAG

from genoflow.build.steps import CHAINS, chain_version, job_name
from genoflow.core.errors import ProcessingError
from genoflow.core.settings import Settings
from genoflow.instance import runner
from genoflow.instance.home import ensure_dagster_home
from genoflow.instance.run_history import (
    CHAIN_TAG,
    chains_up_to_date,
    check_verdicts,
    successful_chain_runs,
)
from genoflow.processors.alignments import checks as alignment_checks
from genoflow.processors.intervals import checks as interval_checks

from .conftest import run_cli

COLON_BED = (
    "chr1:100-200\t5\t10\nchr1:100-200\t150\t160\nchr1\t120\t130\nchr1\t5000\t6000\n"
    "HLA-A*01:01:01:01\t10\t20\n"
)
CONTIGS = {"chr1": 10000, "chr1:100-200": 1000, "HLA-A*01:01:01:01": 3000}
# (contig, 1-based position) of the VCF records and SAM reads, unsorted on purpose.
RECORDS = [
    ("chr1:100-200", 150),
    ("chr1", 5000),
    ("HLA-A*01:01:01:01", 10),
    ("chr1:100-200", 10),
    ("chr1", 150),
]


def _vcf() -> str:
    head = "##fileformat=VCFv4.2\n" + "".join(
        f"##contig=<ID={name},length={length}>\n" for name, length in CONTIGS.items()
    )
    head += "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
    return head + "".join(f"{c}\t{p}\t.\tA\tG\t.\t.\t.\n" for c, p in RECORDS)


def _sam() -> str:
    head = "@HD\tVN:1.6\n" + "".join(f"@SQ\tSN:{n}\tLN:{ln}\n" for n, ln in CONTIGS.items())
    reads = (
        f"r{i}\t0\t{c}\t{p}\t60\t4M\t*\t0\t0\tACGT\tIIII\n" for i, (c, p) in enumerate(RECORDS)
    )
    return head + "".join(reads)


def _manifest(folder: Path, files: dict[str, str]) -> Path:
    """Write ``files`` (name → text) and a manifest listing each with its md5 and size."""
    lines = ["name\turi\tmd5\tsize"]
    for name, text in files.items():
        data = text.encode()
        (folder / name).write_bytes(data)
        lines.append(f"{name}\t{name}\t{hashlib.md5(data).hexdigest()}\t{len(data)}")
    manifest = folder / "m.tsv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def _run_json(home: Path, manifest: Path) -> tuple[subprocess.CompletedProcess[str], list[dict]]:
    done = run_cli(home, "run", str(manifest), "--json")
    return done, json.loads(done.stdout)


def _index_file(home: Path, family: str, suffix: str) -> Path:
    (found,) = (home / "cache" / family).glob(f"*/*/index/v*/sorted.{suffix}")
    return found


def _tool_count(tool: str, *args: str) -> int:
    out = subprocess.run([tool, *args], capture_output=True, text=True, check=True).stdout
    return len(out.splitlines())


def _assert_built_and_checked(record: dict) -> None:
    assert record["error"] is None, record["error"]
    assert set(record["assets"].values()) == {"built"}
    assert record["checks"] and all(record["checks"].values()), record["checks"]
    assert len(record["checks"]) == 3


def test_a_bed_whose_contig_names_hold_colons_builds_and_tabix_finds_every_record(
    tmp_path: Path, tabix: str
) -> None:
    manifest = _manifest(tmp_path, {"colon.bed": COLON_BED})
    done, (record,) = _run_json(tmp_path / "home", manifest)
    assert done.returncode == 0, done.stderr
    _assert_built_and_checked(record)
    assert "Range is ambiguous" not in done.stderr
    gz = _index_file(tmp_path / "home", "intervals", "bed.gz")
    expected = Counter(line.split("\t")[0] for line in COLON_BED.splitlines())
    for contig, records in expected.items():
        assert _tool_count(tabix, str(gz), f"{{{contig}}}") == records
    assert interval_checks.query_index(gz.parent, fmt="bed", name="colon") == dict(expected)


def test_a_vcf_with_hla_and_colon_contigs_declared_in_its_header_builds_and_passes(
    tmp_path: Path, tabix: str
) -> None:
    manifest = _manifest(tmp_path, {"hla.vcf": _vcf()})
    done, (record,) = _run_json(tmp_path / "home", manifest)
    assert done.returncode == 0, done.stderr
    _assert_built_and_checked(record)
    gz = _index_file(tmp_path / "home", "intervals", "vcf.gz")
    expected = Counter(contig for contig, _ in RECORDS)
    for contig, records in expected.items():
        assert _tool_count(tabix, str(gz), f"{{{contig}}}") == records
    assert interval_checks.query_index(gz.parent, fmt="vcf", name="hla") == dict(expected)


def test_a_sam_whose_sq_names_hold_colons_builds_and_samtools_counts_agree(
    tmp_path: Path, samtools: str
) -> None:
    manifest = _manifest(tmp_path, {"hla.sam": _sam()})
    done, (record,) = _run_json(tmp_path / "home", manifest)
    assert done.returncode == 0, done.stderr
    _assert_built_and_checked(record)
    bam = _index_file(tmp_path / "home", "alignments", "bam")
    counts = alignment_checks.query_index(bam.parent, name="hla")
    for contig, records in Counter(contig for contig, _ in RECORDS).items():
        out = subprocess.run(
            [samtools, "view", "-c", str(bam), f"{{{contig}}}"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert int(out.stdout) == records == counts[contig]
    assert counts["*"] == 0


def test_region_strings_name_contigs_holding_braces_colons_and_dashes(tmp_path: Path) -> None:
    names = ["a}b", "x}:1-5", "z:1", "chr1:100-200", "chr1", "HLA-A*01:01:01:01"]
    bed = tmp_path / "odd.bed"
    bed.write_text("".join(f"{name}\t1\t5\n" for name in sorted(names)))
    pysam.tabix_index(str(bed), preset="bed", force=True)
    counts = interval_checks.query_index(f"{bed}.gz", fmt="bed", name="odd")
    assert counts == dict.fromkeys(names, 1)
    assert interval_checks.contig_region("chr1:100-200", name="odd") == "{chr1:100-200}"
    with pytest.raises(ProcessingError, match=r"rename the contig"):
        interval_checks.contig_region("{y}", name="odd")


def _flip_byte(path: Path) -> None:
    """Damage a published file in place, size unchanged (so only a check can notice)."""
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _damaged_chain(tmp_path: Path, asset_file: str) -> tuple[Path, Path]:
    """Build a plain BED, damage one published file, and forget the instance's run history
    (the cache is kept), so the next ``genoflow run`` checks the cached artifacts again."""
    home = tmp_path / "home"
    manifest = _manifest(tmp_path, {"plain.bed": "chr1\t5\t10\nchr2\t1\t9\nchr1\t1\t3\n"})
    done = run_cli(home, "run", str(manifest))
    assert done.returncode == 0, done.stderr
    (target,) = (home / "cache" / "intervals").glob(f"*/*/{asset_file}")
    _flip_byte(target)
    shutil.rmtree(home / "dagster")
    return home, manifest


def _assert_failed_everywhere(home: Path, manifest: Path, asset: str, check: str) -> None:
    table = run_cli(home, "run", str(manifest))
    assert table.returncode == 1
    row = next(line for line in table.stdout.splitlines() if line.startswith("plain"))
    assert " failed " in row and f"FAILED {asset}:{check}" in row
    assert "0 of 1 sources ok" in table.stdout
    assert f"[check] plain.bed: {asset} check {check} failed" in table.stderr
    assert "Traceback" not in table.stderr
    for _ in range(2):  # every rerun checks again and says the same, never "cached" beside it
        done, (record,) = _run_json(home, manifest)
        assert done.returncode == 1
        assert record["assets"][asset] == "failed"
        assert record["checks"][f"{asset}:{check}"] is False
        assert record["error"].startswith(f"[check] plain.bed: {asset} check {check} failed")
    status = run_cli(home, "status", "--json")
    (entry,) = json.loads(status.stdout)
    assert entry["assets"][asset]["valid"] is False
    assert entry["assets"][asset]["failed_checks"] == [check]
    assert entry["assets"][asset]["checks"][check] is False
    plain = run_cli(home, "status")
    assert f"FAILED check {check}" in plain.stdout


def test_a_damaged_index_fails_its_region_check_the_same_way_everywhere(tmp_path: Path) -> None:
    home, manifest = _damaged_chain(tmp_path, "index/v*/sorted.bed.gz.tbi")
    _assert_failed_everywhere(home, manifest, "index", "answers_region_queries")


def test_a_damaged_source_fails_its_md5_check_the_same_way_everywhere(tmp_path: Path) -> None:
    home, manifest = _damaged_chain(tmp_path, "source/v*/source.bed")
    _assert_failed_everywhere(home, manifest, "source", "md5_and_size_match_manifest")
    _, (record,) = _run_json(home, manifest)
    assert record["assets"] == {"source": "failed", "sorted": "skipped", "index": "skipped"}


def test_the_database_and_dagsters_api_read_the_same_check_verdicts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, manifest = _damaged_chain(tmp_path, "index/v*/sorted.bed.gz.tbi")
    run_cli(home, "run", str(manifest))
    settings = Settings.from_env({"GENOFLOW_HOME": str(home)})
    monkeypatch.setenv("DAGSTER_HOME", str(settings.dagster_home))
    recorded = check_verdicts(settings.dagster_home)
    through_api = runner.check_verdicts(DagsterInstance.get(), CHAINS)
    assert recorded == through_api
    (verdicts,) = recorded.values()
    assert verdicts == {
        "source:md5_and_size_match_manifest": True,
        "sorted:records_preserved_and_ordered": True,
        "index:answers_region_queries": False,
    }


def test_a_chain_whose_latest_check_failed_is_not_up_to_date() -> None:
    md5 = "a" * 32
    succeeded = {("intervals", md5): "run-1"}
    work = [(md5, "intervals")]
    failed = {("intervals", md5): {"index:answers_region_queries": False}}
    passed = {("intervals", md5): {"index:answers_region_queries": True}}
    assert chains_up_to_date(succeeded, lambda key: key, work, failed) == {}
    (outcome,) = chains_up_to_date(succeeded, lambda key: key, work, passed).values()
    assert outcome.ok and all(outcome.checks.values()) and len(outcome.checks) == 3


def test_a_failed_chain_run_after_a_success_means_the_chain_must_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings.from_env({"GENOFLOW_HOME": str(tmp_path)})
    monkeypatch.setenv("DAGSTER_HOME", str(ensure_dagster_home(settings)))
    instance = DagsterInstance.get()
    md5 = "b" * 32
    tags = {PARTITION_NAME_TAG: md5, CHAIN_TAG: chain_version("intervals")}
    for status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.STARTED):
        run = DagsterRun(job_name("intervals"), run_id=str(uuid.uuid4()), status=status, tags=tags)
        instance.add_run(run)
    assert successful_chain_runs(settings.dagster_home, ["intervals"]) == {}
    assert runner.up_to_date(instance, lambda key: key, [(md5, "intervals")]) == {}
