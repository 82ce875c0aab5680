"""Issue 12, real files refused and weak answers from the processors.

An unaligned SAM (no @SQ, every read unmapped) is built and checked like samtools does it; a SAM
whose reference BAM cannot hold is refused before sorting, by contig; a damaged bigBed fails with
genoflow's message only; a file with a valid header and no records is built in every family; a
compressed input that expands beyond ``GENOFLOW_MAX_EXPANSION`` is refused and leaves nothing;
a sort that cannot fit in the work folder's free space is refused before it starts.

The end-to-end cases share one ``genoflow run --json`` of one manifest; the reference tools
(Debian samtools, tabix, bcftools) read what it built.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pysam
import pytest

from genoflow.build.steps import key_for
from genoflow.core.errors import ProcessingError
from genoflow.processors import alignments, engine, intervals, native_stderr
from genoflow.processors.alignments import samtools
from genoflow.processors.intervals.bigbed import bigbed_to_bed
from genoflow.processors.intervals.records import LineSource, RecordReader
from genoflow.processors.intervals.sortjob import SortJob
from genoflow.processors.intervals.streamed import sort_streamed
from genoflow.processors.limits import EXPANSION_FLOOR, ExpansionGuard, bgzf_expanded_size
from genoflow.storage.cache import Cache
from genoflow_tests.support.checksums import md5_file

from .conftest import DATA, run_cli

BIGBED = DATA / "manifests" / "demo" / "ccres.bb"
VCF_HEADER = (
    b"##fileformat=VCFv4.2\n##contig=<ID=chr1,length=1000>\n"
    b"#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
)
UNALIGNED = (
    b"@HD\tVN:1.6\tSO:unsorted\n@RG\tID:rg1\tSM:s1\tPL:ILLUMINA\n"
    b"q3\t4\t*\t0\t0\t*\t*\t0\t0\tGGCC\tIIII\tRG:Z:rg1\n"
    b"q1\t77\t*\t0\t0\t*\t*\t0\t0\tACGT\tIIII\tRG:Z:rg1\n"
    b"q1\t141\t*\t0\t0\t*\t*\t0\t0\tTTGA\tIIII\tRG:Z:rg1\n"
)
LONG_REFERENCE = (
    b"@HD\tVN:1.6\n@SQ\tSN:chr1\tLN:1000\n@SQ\tSN:chrBig\tLN:10000000000\n"
    b"r1\t0\tchrBig\t5000000000\t60\t4M\t*\t0\t0\tACGT\tIIII\n"
)
HEADER_ONLY = {
    "header_only.vcf": VCF_HEADER,
    "header_only.vcf.gz": VCF_HEADER,  # bgzipped below
    "header_only.bed": b"track name=nothing\nbrowser position chr1:1-100\n",
    "header_only.narrowPeak": b"track type=narrowPeak name=none\n",
    "header_only.gff3": b"##gff-version 3\n##sequence-region chr1 1 1000\n",
    "header_only.gtf": b"#!genome-build test\n",
    "header_only.sam": b"@HD\tVN:1.6\tSO:coordinate\n@SQ\tSN:chr1\tLN:1000\n",
    "header_only.csv": b"sample,condition\n",
}


@dataclass(frozen=True)
class Ran:
    """One ``genoflow run --json`` over every end-to-end file."""

    home: Path
    folder: Path
    result: subprocess.CompletedProcess[str]
    records: dict[str, dict]

    def index_folder(self, name: str) -> Path:
        record = self.records[name]
        return Cache(self.home / "cache").folder(key_for(record["family"], record["md5"], "index"))


def _manifest(folder: Path, names: list[str]) -> Path:
    lines = ["name\turi\tmd5"] + [f"{n}\t{n}\t{md5_file(folder / n)}" for n in names]
    manifest = folder / "manifest.tsv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def _write_inputs(folder: Path) -> list[str]:
    (folder / "unaligned.sam").write_bytes(UNALIGNED)
    (folder / "long_reference.sam").write_bytes(LONG_REFERENCE)
    for name, data in HEADER_ONLY.items():
        (folder / name).write_bytes(data)
    with pysam.BGZFile(str(folder / "header_only.vcf.gz"), "wb") as out:
        out.write(VCF_HEADER)
    header = {"HD": {"VN": "1.6", "SO": "coordinate"}, "SQ": [{"SN": "chr1", "LN": 1000}]}
    with pysam.AlignmentFile(str(folder / "header_only.bam"), "wb", header=header):
        pass
    data = BIGBED.read_bytes()
    (folder / "cut_short.bb").write_bytes(data[: len(data) // 3])
    middle = slice(len(data) // 2, len(data) // 2 + 200)  # inside the data blocks
    flipped = data[: middle.start] + bytes(b ^ 0xFF for b in data[middle]) + data[middle.stop :]
    (folder / "damaged_data.bb").write_bytes(flipped)
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Ran:
    folder = tmp_path_factory.mktemp("inputs")
    manifest = _manifest(folder, _write_inputs(folder))
    home = tmp_path_factory.mktemp("home")
    result = run_cli(home, "run", "--json", str(manifest))
    records = {record["name"]: record for record in json.loads(result.stdout)}
    return Ran(home, folder, result, records)


def _built_and_checked(ran: Ran, name: str) -> dict:
    record = ran.records[name]
    assert record["error"] is None, record
    assert set(record["assets"].values()) <= {"built", "cached"}, record
    assert record["checks"] and all(record["checks"].values()), record
    return record


# --- 1. an unaligned SAM ----------------------------------------------------------------------


def test_an_unaligned_sam_is_sorted_indexed_and_passes_its_checks(ran: Ran) -> None:
    record = _built_and_checked(ran, "unaligned.sam")
    assert set(record["checks"]) >= {"sorted:records_preserved_and_ordered",
                                     "index:answers_region_queries"}  # fmt: skip


def test_the_unaligned_bam_reads_as_samtools_own_sort_of_the_same_sam(
    ran: Ran, samtools: str, tmp_path: Path
) -> None:
    bam = ran.index_folder("unaligned.sam") / "sorted.bam"
    reference = tmp_path / "reference.bam"
    subprocess.run([samtools, "sort", "--no-PG", "-o", str(reference), str(ran.folder /
                    "unaligned.sam")], check=True)  # fmt: skip
    view = [samtools, "view"]
    ours = subprocess.run([*view, str(bam)], capture_output=True, check=True).stdout
    theirs = subprocess.run([*view, str(reference)], capture_output=True, check=True).stdout
    assert ours == theirs and ours.count(b"\n") == 3
    count = subprocess.run([*view, "-c", str(bam)], capture_output=True, text=True, check=True)
    assert count.stdout.strip() == "3"
    assert subprocess.run([samtools, "quickcheck", "-u", str(bam)]).returncode == 0
    stats = subprocess.run([samtools, "idxstats", str(bam)], capture_output=True, text=True,
                           check=True)  # fmt: skip
    assert stats.stdout == "*\t0\t0\t3\n"


def test_genoflows_own_bad_output_is_named_by_file_name_and_not_blamed_on_the_input(
    tmp_path: Path,
) -> None:
    private = tmp_path / ".v2.tmp.host.1.abc"
    private.mkdir()
    out = private / "sorted.bam"
    with pysam.AlignmentFile(str(out), "wb", header={"HD": {"VN": "1.6"}}):
        pass
    out.write_bytes(out.read_bytes()[:-28])  # no end-of-file block
    with pytest.raises(ProcessingError) as info:
        samtools.quickcheck(out, name="reads.sam", stage="sort")
    message = str(info.value)
    assert message.startswith("[sort] reads.sam: the sorted.bam genoflow wrote failed")
    assert str(private) not in message and "input is malformed" not in message
    assert "not the input" in message


# --- 2. a reference longer than BAM can hold ------------------------------------------------


def test_a_reference_longer_than_bam_can_hold_is_refused_before_sorting_by_name(ran: Ran) -> None:
    record = ran.records["long_reference.sam"]
    assert record["assets"]["sorted"] == "failed"
    assert record["error"].startswith(
        "[sort] long_reference.sam: contig chrBig is 10000000000 bp, longer than BAM can hold "
        "(2^31-1)"
    )
    assert "malformed" not in record["error"] and "later step" in record["error"]


@pytest.mark.parametrize(("length", "refused"), [((1 << 31) - 1, False), (1 << 31, True)])
def test_bam_holds_references_up_to_2_31_minus_1_bp(
    tmp_path: Path, length: int, refused: bool
) -> None:
    src = tmp_path / "edge.sam"
    src.write_bytes(b"@HD\tVN:1.6\n@SQ\tSN:chrEdge\tLN:%d\n" % length
                    + b"r1\t0\tchrEdge\t2000000000\t60\t4M\t*\t0\t0\tACGT\tIIII\n")  # fmt: skip
    out, work = tmp_path / "out", tmp_path / "work"
    out.mkdir(), work.mkdir()
    if not refused:
        result = alignments.sort_alignments(src, out, work_dir=work, memory=1 << 26, threads=1,
                                            name="edge.sam")  # fmt: skip
        assert (result.records_out, result.metadata["index"]) == (1, "csi")
        return
    with pytest.raises(ProcessingError, match=f"contig chrEdge is {length} bp"):
        alignments.sort_alignments(src, out, work_dir=work, memory=1 << 26, threads=1,
                                   name="edge.sam")  # fmt: skip
    assert list(out.iterdir()) == [] and list(work.iterdir()) == []


# --- 3. a bad bigBed ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cut_short.bb", "damaged_data.bb"])
def test_a_bad_bigbed_fails_with_genoflows_message_alone(ran: Ran, name: str) -> None:
    record = ran.records[name]
    assert record["error"].startswith(f"[convert] {name}: not a readable bigBed file"), record
    for line in ran.result.stderr.splitlines():
        assert not line.startswith("Error when opening"), line
        assert "panicked" not in line and "stack backtrace" not in line, line


def test_a_capture_replays_every_line_it_does_not_drop(capfd: pytest.CaptureFixture[str]) -> None:
    with native_stderr.capture(None, drop=lambda line: line.startswith("library:")) as log:
        os.write(2, b"library: noise\nsomebody else's line\n")
    assert log.dropped == ["library: noise\n"]
    assert capfd.readouterr().err == "somebody else's line\n"


# --- 4. a valid header and no records -----------------------------------------------------------


@pytest.mark.parametrize("name", [*HEADER_ONLY, "header_only.bam"])
def test_a_file_with_a_header_and_no_records_is_built_in_every_family(ran: Ran, name: str) -> None:
    _built_and_checked(ran, name)


@pytest.mark.parametrize(
    "name", ["header_only.vcf", "header_only.vcf.gz", "header_only.bed", "header_only.narrowPeak",
             "header_only.gff3", "header_only.gtf"],
)  # fmt: skip
def test_a_header_only_interval_output_keeps_its_header_and_reads_with_tabix(
    ran: Ran, tabix: str, name: str
) -> None:
    data = next(p for p in ran.index_folder(name).iterdir() if p.name.endswith(".gz"))
    assert subprocess.run([tabix, "-l", str(data)], capture_output=True, check=True).stdout == b""
    assert gzip.decompress(data.read_bytes()) == HEADER_ONLY[name]


def test_a_header_only_vcf_reads_as_no_calls_with_bcftools(ran: Ran, bcftools: str) -> None:
    data = ran.index_folder("header_only.vcf") / "sorted.vcf.gz"
    calls = subprocess.run([bcftools, "view", "-H", str(data)], capture_output=True, check=True)
    assert calls.stdout == b""
    region = subprocess.run([bcftools, "view", "-H", "-r", "chr1", str(data)],
                            capture_output=True, check=True)  # fmt: skip
    assert region.stdout == b""


@pytest.mark.parametrize("name", ["header_only.sam", "header_only.bam"])
def test_a_header_only_alignment_output_holds_no_reads_for_samtools(
    ran: Ran, samtools: str, name: str
) -> None:
    bam = ran.index_folder(name) / "sorted.bam"
    count = subprocess.run([samtools, "view", "-c", str(bam)], capture_output=True, text=True,
                           check=True)  # fmt: skip
    assert count.stdout.strip() == "0"
    assert subprocess.run([samtools, "quickcheck", str(bam)]).returncode == 0


def test_a_converted_bigbed_with_no_records_is_sorted_but_an_empty_bed_is_not(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "converted.bed"
    empty.write_bytes(b"")
    job = _job(tmp_path, "bigBed")
    stats = sort_streamed(job, LineSource(empty, name="x.bb", stage="decompress"), empty_ok=True)
    assert (stats.records, stats.header_lines, job.out.is_file()) == (0, 0, True)
    with pytest.raises(ProcessingError, match="no records and no header lines"):
        sort_streamed(_job(tmp_path, "bed"), LineSource(empty, name="x.bed", stage="decompress"))


def _job(tmp_path: Path, fmt: str) -> SortJob:
    folder = tmp_path / fmt
    folder.mkdir()
    tools = engine.choose("bgzip", "tabix", name="x", stage="sort")
    return SortJob(RecordReader(fmt, name="x"), tools, folder / "out.bed.gz", folder, 1 << 24, 1)


# --- 5. the expansion cap and free space --------------------------------------------------------


def _bomb_lines() -> bytes:
    """Repetitive BED past the 16 MiB floor: it gzips about 1000 to 1."""
    return b"chr1\t1\t2\n" * (EXPANSION_FLOOR // 9 + 100_000)


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bomb")
    (folder / "bomb.bed.gz").write_bytes(gzip.compress(_bomb_lines(), compresslevel=9))
    return _manifest(folder, ["bomb.bed.gz"])


def test_an_input_expanding_beyond_the_cap_is_refused_and_leaves_nothing(
    bomb: Path, tmp_path: Path
) -> None:
    result = run_cli(tmp_path / "home", "run", "--json", str(bomb))
    record = json.loads(result.stdout)[0]
    assert result.returncode == 1
    assert record["error"].startswith(
        "[sort] bomb.bed.gz: decompresses to more than 100× its size (GENOFLOW_MAX_EXPANSION=100)"
    )
    assert "Traceback" not in result.stderr
    leftovers = [p for p in (tmp_path / "home" / "work").rglob("*") if p.is_file()]
    assert leftovers == []
    sorted_key = key_for("intervals", record["md5"], "sorted")
    assert not list(Cache(tmp_path / "home" / "cache").folder(sorted_key).rglob("genoflow.json"))


def test_a_cap_of_zero_lets_the_same_input_build(bomb: Path, tmp_path: Path) -> None:
    result = run_cli(tmp_path / "home", "run", "--json", str(bomb),
                     env={"GENOFLOW_MAX_EXPANSION": "0"})  # fmt: skip
    record = json.loads(result.stdout)[0]
    assert record["error"] is None and all(record["checks"].values()), record


@pytest.mark.parametrize("value", ["-1", "lots", "nan"])
def test_an_unusable_cap_is_refused_by_name_without_a_traceback(
    bomb: Path, tmp_path: Path, value: str
) -> None:
    result = run_cli(tmp_path / "home", "run", str(bomb), env={"GENOFLOW_MAX_EXPANSION": value})
    assert result.returncode == 2
    assert f"[config] GENOFLOW_MAX_EXPANSION={value}: is not a ratio" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bgzf_input_whose_blocks_declare_too_much_is_refused_before_decompressing(
    tmp_path: Path,
) -> None:
    src = tmp_path / "bomb.bed.gz"
    with pysam.BGZFile(str(src), "wb") as out:
        out.write(_bomb_lines())
    assert bgzf_expanded_size(src) == len(_bomb_lines())
    out_dir, work = tmp_path / "out", tmp_path / "work"
    out_dir.mkdir()
    with pytest.raises(ProcessingError, match=r"decompresses to more than 10× its size"):
        intervals.sort_intervals(src, out_dir, fmt="bed", work_dir=work, memory=1 << 24,
                                 threads=1, name="bomb.bed.gz", max_expansion=10)  # fmt: skip
    assert list(out_dir.iterdir()) == [] and list(work.iterdir()) == []


def test_a_gzipped_sam_expanding_beyond_the_cap_is_refused_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    read = b"r\t4\t*\t0\t0\t*\t*\t0\t0\t" + b"A" * 200 + b"\t" + b"I" * 200 + b"\n"
    src = tmp_path / "bomb.sam.gz"
    src.write_bytes(gzip.compress(b"@HD\tVN:1.6\n" + read * (EXPANSION_FLOOR // len(read) + 10)))
    out_dir, work = tmp_path / "out", tmp_path / "work"
    out_dir.mkdir(), work.mkdir()
    with pytest.raises(ProcessingError, match=r"\[sort\] bomb.sam.gz: decompresses to more"):
        alignments.sort_alignments(src, out_dir, work_dir=work, memory=1 << 26, threads=1,
                                   name="bomb.sam.gz", max_expansion=20)  # fmt: skip
    assert list(out_dir.iterdir()) == [] and list(work.iterdir()) == []


def test_a_bam_whose_blocks_declare_too_much_is_refused_before_sorting(tmp_path: Path) -> None:
    src = tmp_path / "bomb.bam"
    with pysam.AlignmentFile(str(src), "wb", header={"HD": {"VN": "1.6"}}) as out:
        for i in range(EXPANSION_FLOOR // 1000):  # about 1.5 KiB each, 1.5 times the floor
            read = pysam.AlignedSegment(out.header)
            read.query_name, read.flag = f"r{i % 10}", 4
            read.query_sequence = "A" * 1000
            read.query_qualities = pysam.qualitystring_to_array("I" * 1000)
            out.write(read)
    out_dir, work = tmp_path / "out", tmp_path / "work"
    out_dir.mkdir(), work.mkdir()
    with pytest.raises(ProcessingError, match=r"GENOFLOW_MAX_EXPANSION=5\)"):
        alignments.sort_alignments(src, out_dir, work_dir=work, memory=1 << 26, threads=1,
                                   name="bomb.bam", max_expansion=5)  # fmt: skip
    assert list(out_dir.iterdir()) == [] and list(work.iterdir()) == []


@pytest.fixture
def bigger_than_the_disk(tmp_path: Path) -> Iterator[Path]:
    """A sparse file longer than the free space of tmp_path's filesystem (it uses no blocks)."""
    stats = os.statvfs(tmp_path)
    path = tmp_path / "sparse.bed"
    with open(path, "wb") as handle:
        handle.truncate(stats.f_bavail * stats.f_frsize + (1 << 30))
    yield path
    path.unlink()


def test_an_interval_sort_that_cannot_fit_the_free_space_is_refused_before_it_starts(
    tmp_path: Path, bigger_than_the_disk: Path
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ProcessingError) as info:
        intervals.sort_intervals(bigger_than_the_disk, out_dir, fmt="bed", work_dir=tmp_path /
                                 "work", memory=1 << 24, threads=1, name="big.bed")  # fmt: skip
    assert str(info.value).startswith("[sort] big.bed: the work folder's filesystem has ")
    assert "twice its decompressed size" in str(info.value)
    assert list(out_dir.iterdir()) == []


def test_an_alignment_sort_that_cannot_fit_the_free_space_is_refused_before_it_starts(
    tmp_path: Path, bigger_than_the_disk: Path
) -> None:
    sam = bigger_than_the_disk.rename(tmp_path / "sparse.sam")
    out_dir, work = tmp_path / "out", tmp_path / "work"
    out_dir.mkdir(), work.mkdir()
    with pytest.raises(ProcessingError, match=r"^\[sort\] big.sam: the work folder's filesystem"):
        alignments.sort_alignments(sam, out_dir, work_dir=work, memory=1 << 26, threads=1,
                                   name="big.sam")  # fmt: skip
    sam.rename(bigger_than_the_disk)


def test_bigbed_conversion_counts_against_the_cap(tmp_path: Path) -> None:
    guard = ExpansionGuard(BIGBED, 1e-9, name="ccres.bb", stage="sort")
    guard.limit = 1000  # far below the BED it converts to, as a bigBed bomb's would be
    with pytest.raises(ProcessingError, match="decompresses to more than"):
        bigbed_to_bed(BIGBED, tmp_path / "out.bed", name="ccres.bb", guard=guard)
    assert not (tmp_path / "out.bed").exists()
