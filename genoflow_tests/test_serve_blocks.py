"""The byte ranges behind htsget tickets, checked against samtools and tabix (no server).

Artifacts are built by genoflow's own processors; a ticket's pieces are concatenated as a client
would, indexed, and queried with the same region as the local file: the records must be equal
(the spec allows more records in the pieces, never fewer — the re-query filters the extras).
"""

from __future__ import annotations

import gzip
import random
import subprocess
from pathlib import Path

import pysam
import pytest

from genoflow.processors.alignments import sort_alignments
from genoflow.processors.intervals import sort_intervals
from genoflow.serve.blocks import ByteRange, Region, UnknownReference, plan_for

SHORT = [("chr1", 200_000), ("chr2", 150_000), ("chrM", 16_000), ("chrX", 100_000)]
LONG = [("chr1", 700_000_000), ("chr2", 150_000)]


def _read(header: pysam.AlignmentHeader, rng: random.Random, name: str, contigs, big: bool):
    read = pysam.AlignedSegment(header)
    read.query_name = name
    if rng.random() < 0.05:
        read.flag, read.reference_id, read.reference_start = 4, -1, -1
        length = 100
    else:
        tid = rng.randrange(len(contigs) - 1)  # the last contig stays empty
        read.reference_id = tid
        read.reference_start = _position(rng, contigs[tid][1])
        length = rng.choice([100, 150, 40_000 if big else 1_500])
        gap = f"{rng.randrange(1, 3000)}N" if rng.random() < 0.1 else ""
        read.cigarstring = f"50M{gap}{length - 50}M"
        read.mapping_quality = 30
    read.query_sequence = "".join(rng.choice("ACGT") for _ in range(length))
    read.query_qualities = pysam.qualitystring_to_array(
        "".join(rng.choice("ABCDEFGHI") for _ in range(length))
    )
    return read


def _position(rng: random.Random, length: int) -> int:
    """Uniform, or (half the time, on a long contig) crowded past 2^29 where CSI is needed."""
    if length > 600_300_000 and rng.random() < 0.5:
        return 600_000_000 + rng.randrange(300_000)
    return rng.randrange(max(1, length - 50_000))


def _bam(folder: Path, contigs, count: int, *, big: bool, seed: int) -> Path:
    rng = random.Random(seed)
    header = {"HD": {"VN": "1.6"}, "SQ": [{"SN": n, "LN": ln} for n, ln in contigs]}
    src = folder / "in.bam"
    with pysam.AlignmentFile(str(src), "wb", header=header) as out:
        for i in range(count):
            out.write(_read(out.header, rng, f"r{i}", contigs, big))
    (folder / "out").mkdir()
    result = sort_alignments(
        src, folder / "out", work_dir=folder, memory=64 << 20, threads=1, name="in.bam"
    )
    return result.files[0]


def _vcf(folder: Path, contigs, count: int, *, seed: int) -> Path:
    rng = random.Random(seed)
    lines = ["##fileformat=VCFv4.2", *(f"##contig=<ID={n},length={ln}>" for n, ln in contigs)]
    lines += ['##INFO=<ID=END,Number=1,Type=Integer,Description="end">']
    lines += ['##INFO=<ID=X,Number=1,Type=String,Description="filler">']
    lines += ["#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    for _ in range(count):
        name, length = contigs[rng.randrange(len(contigs))]
        pos = 1 + _position(rng, length)
        filler = "".join(rng.choice("ACGTacgt0123") for _ in range(rng.choice([5, 60, 900])))
        end = f"END={pos + rng.randrange(1, 4000)};" if rng.random() < 0.1 else ""
        lines.append(f"{name}\t{pos}\t.\tA\tC\t50\tPASS\t{end}X={filler}")
    src = folder / "in.vcf"
    src.write_text("\n".join(lines) + "\n")
    (folder / "out").mkdir()
    result = sort_intervals(
        src, folder / "out", fmt="vcf", work_dir=folder, memory=64 << 20, threads=1, name="in.vcf"
    )
    return result.files[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Sorted, indexed artifacts: BAM with a BAI, BAM with a CSI and reads over 64 KiB, VCF with
    a TBI, VCF with a CSI (a contig beyond 2^29)."""
    made = {}
    for key, make in {
        "bai": lambda f: _bam(f, SHORT, 12_000, big=False, seed=1),
        "csi": lambda f: _bam(f, LONG, 3_000, big=True, seed=2),
        "tbi": lambda f: _vcf(f, SHORT, 8_000, seed=3),
        "vcf-csi": lambda f: _vcf(f, LONG, 8_000, seed=4),
    }.items():
        made[key] = make(tmp_path_factory.mktemp(key))
    return made


def _index(data: Path) -> Path:
    return next(p for p in data.parent.iterdir() if p.suffix in (".bai", ".csi", ".tbi"))


def _assemble(data: Path, pieces, dest: Path) -> Path:
    raw = data.read_bytes()
    parts = [raw[p.start : p.end] if isinstance(p, ByteRange) else p.data for p in pieces]
    dest.write_bytes(b"".join(parts))
    return dest


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def _random_region(rng: random.Random, contigs) -> tuple[Region, str]:
    name, length = contigs[rng.randrange(len(contigs))]
    start = _position(rng, length)
    end = min(length, start + rng.choice([1, 100, 5_000, 60_000]))
    return Region(name, start, end), f"{name}:{start + 1}-{end}"


@pytest.mark.parametrize(("key", "contigs"), [("bai", SHORT), ("csi", LONG)])
def test_bam_pieces_hold_every_record_samtools_finds_in_random_regions(
    built, key, contigs, samtools, tmp_path
):
    data, rng = built[key], random.Random(7)
    plan = plan_for(data, _index(data))
    for _ in range(40):
        region, text = _random_region(rng, contigs)
        got = _assemble(data, plan.ranges([region]), tmp_path / "got.bam")
        _run(samtools, "index", "-c", str(got))
        assert _run(samtools, "view", str(got), text) == _run(samtools, "view", str(data), text)


@pytest.mark.parametrize(("key", "contigs"), [("tbi", SHORT), ("vcf-csi", LONG)])
def test_vcf_pieces_hold_every_record_tabix_finds_in_random_regions(
    built, key, contigs, tabix, tmp_path
):
    data, rng = built[key], random.Random(8)
    plan = plan_for(data, _index(data))
    for _ in range(40):
        region, text = _random_region(rng, contigs)
        got = _assemble(data, plan.ranges([region]), tmp_path / "got.vcf.gz")
        _run(tabix, "-f", "-C", "-p", "vcf", str(got))
        assert _run(tabix, str(got), text) == _run(tabix, str(data), text)


def test_unplaced_unmapped_reads_all_come_with_the_star_region(built, samtools, tmp_path):
    data = built["bai"]
    pieces = plan_for(data, _index(data)).ranges([Region("*")])
    got = _assemble(data, pieces, tmp_path / "got.bam")
    _run(samtools, "index", str(got))
    want = _run(samtools, "view", str(data), "*")
    assert want and _run(samtools, "view", str(got), "*") == want


def test_a_whole_reference_and_the_whole_file_are_complete(built, samtools, tmp_path):
    data = built["bai"]
    plan = plan_for(data, _index(data))
    whole = _assemble(data, plan.ranges([Region(None)]), tmp_path / "all.bam")
    assert _run(samtools, "view", str(whole)) == _run(samtools, "view", str(data))
    got = _assemble(data, plan.ranges([Region("chr2")]), tmp_path / "chr2.bam")
    _run(samtools, "index", str(got))
    assert _run(samtools, "view", str(got), "chr2") == _run(samtools, "view", str(data), "chr2")


def test_several_regions_bring_each_record_once_in_file_order(built, samtools, tmp_path):
    data = built["bai"]
    regions = [Region("chr1", 1000, 9000), Region("chr1", 5000, 20000), Region("chr2", 0, 500)]
    got = _assemble(data, plan_for(data, _index(data)).ranges(regions), tmp_path / "got.bam")
    keys = [(r.query_name, r.flag) for r in pysam.AlignmentFile(str(got)).fetch(until_eof=True)]
    assert len(keys) == len(set(keys))
    _run(samtools, "index", str(got))  # refuses a file out of coordinate order


def test_header_only_is_a_valid_file_with_the_header_and_no_body_range(built, tmp_path):
    for key in ("bai", "tbi"):
        data = built[key]
        pieces = plan_for(data, _index(data)).ranges([Region("chr1", 0, 10)], header_only=True)
        assert [p.cls for p in pieces[:-1]] == ["header"] * (len(pieces) - 1)
        assert pieces[-1] == ByteRange(data.stat().st_size - 28, data.stat().st_size, "body")
        got = _assemble(data, pieces, tmp_path / f"h.{key}")
        opened = pysam.AlignmentFile if key == "bai" else pysam.VariantFile
        with opened(str(got)) as handle:
            assert "chr1" in str(handle.header)


def test_text_pieces_join_into_whole_lines_only(built, tmp_path):
    data = built["tbi"]
    regions = [Region("chr1", 50_000, 52_000), Region("chr2", 10, 90_000)]
    got = _assemble(data, plan_for(data, _index(data)).ranges(regions), tmp_path / "got.vcf.gz")
    text = gzip.decompress(got.read_bytes())
    assert text.endswith(b"\n")
    records = [line for line in text.split(b"\n")[:-1] if not line.startswith(b"#")]
    assert records and all(line.split(b"\t")[1].isdigit() for line in records)
    assert all(len(line.split(b"\t")) == 8 for line in records)


def test_an_unknown_bam_reference_is_refused_and_an_absent_vcf_contig_is_empty(built):
    bam, vcf = built["bai"], built["tbi"]
    with pytest.raises(UnknownReference):
        plan_for(bam, _index(bam)).ranges([Region("chr99", 0, 10)])
    pieces = plan_for(vcf, _index(vcf)).ranges([Region("chr99", 0, 10)])
    assert {p.cls for p in pieces[:-1]} == {"header"}


def test_a_plan_is_parsed_once_per_file(built):
    data = built["bai"]
    assert plan_for(data, _index(data)) is plan_for(str(data), str(_index(data)))
