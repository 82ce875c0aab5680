"""Interval sorting and indexing, checked against tabix, bgzip, bcftools and GNU sort."""

from __future__ import annotations

import gzip
import io
import os
import random
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pybigtools
import pysam
import pytest

from genoflow.core.errors import ProcessingError
from genoflow.processors.base import Result, SortCheck
from genoflow.processors.intervals import (
    CSI_THRESHOLD,
    check_sorted,
    chunks,
    index_intervals,
    query_index,
    sort_intervals,
)
from genoflow.processors.intervals.bigbed import bigbed_to_bed
from genoflow.processors.intervals.chunks import ChunkValidator, Irregular
from genoflow.processors.intervals.order import OrderCheck
from genoflow.processors.intervals.records import RecordReader
from genoflow.processors.intervals.reorder import reorder_blocks
from genoflow.processors.intervals.sortjob import SortJob

from .conftest import require_tool

CONTIGS = ["chr1", "chr2", "chr10", "chrX", "chr1_random"]
VCF_HEADER = (
    b"##fileformat=VCFv4.2\n"
    b"##contig=<ID=chr2,length=1000>\n"
    b"##contig=<ID=chr10,length=1000>\n"
    b"##contig=<ID=chr1,length=1000>\n"
    b'##INFO=<ID=DP,Number=1,Type=Integer,Description="Depth">\n'
    b'##INFO=<ID=NOTE,Number=1,Type=String,Description="Free text">\n'
    b"#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
)
BED6_AUTOSQL = """table bed6
"BED6"
(
string chrom; "Reference sequence"
uint chromStart; "Start"
uint chromEnd; "End"
string name; "Name"
uint score; "Score"
char[1] strand; "Strand"
)
"""


# ---------------------------------------------------------------- engines and paths


@pytest.fixture(params=["htslib-cli", "pysam"])
def engine(request, monkeypatch) -> str:
    """Run the test once with bgzip and tabix on PATH, once with pysam's htslib only."""
    if request.param == "htslib-cli":
        require_tool("bgzip")
        require_tool("tabix")
    monkeypatch.setenv("GENOFLOW_ENGINE", request.param)
    return request.param


@pytest.fixture(params=["by line", "by chunk"])
def validation(request, monkeypatch) -> str:
    """Validate records line by line (small files), or a chunk at a time with numpy."""
    if request.param == "by chunk":
        monkeypatch.setattr(chunks, "VECTORISE_ABOVE", 0)
        monkeypatch.setattr(chunks, "MIN_FRAME", 0)
    return request.param


def fake_tool(folder: Path, tool: str, *, says: str, reads_input: bool) -> Path:
    """A ``tool`` reporting version 1.16 that fails everything else with ``says`` on stderr."""
    folder.mkdir(exist_ok=True)
    script = folder / tool
    drain = "cat > /dev/null\n" if reads_input else ""
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = --version ]; then echo "{tool} (htslib) 1.16"; exit 0; fi\n'
        f"{drain}echo '{says}' >&2\nexit 2\n"
    )
    script.chmod(0o755)
    return folder


# ---------------------------------------------------------------- input generators


def bed_lines(rng: random.Random, n: int, extra: int = 3) -> list[bytes]:
    """BED records with many ties (same contig and start) and unsorted order."""
    lines = []
    for i in range(n):
        start = rng.randrange(0, 60)
        fields = [rng.choice(CONTIGS), str(start), str(start + rng.randrange(1, 30))]
        fields += [f"f{i % 7}", str(rng.randrange(1000)), rng.choice("+-.")][:extra]
        fields += [str(rng.randrange(100)) for _ in range(extra - 3)]
        lines.append("\t".join(fields).encode())
    return lines


def gff_lines(rng: random.Random, n: int, *, gtf: bool) -> list[bytes]:
    lines = []
    for i in range(n):
        start = rng.randrange(1, 60)
        attrs = f'gene_id "g{i % 5}"; transcript_id "t{i}";' if gtf else f"ID=f{i};Name=n{i % 5}"
        # Column 2 (source) is random so that sorting on it instead of column 4 would show.
        fields = [rng.choice(CONTIGS), rng.choice(["zeta", "alpha", "mid"]), "exon"]
        fields += [str(start), str(start + rng.randrange(0, 40)), ".", "+", ".", attrs]
        lines.append("\t".join(fields).encode())
    return lines


def vcf_lines(rng: random.Random, n_per_contig: int) -> list[bytes]:
    lines = []
    for contig in ["chr1", "chr2", "chr10"]:
        for pos in rng.sample(range(1, 900), n_per_contig):
            info = f"DP={rng.randrange(100)}"
            lines.append(f"{contig}\t{pos}\t.\tA\tG\t50\tPASS\t{info}".encode())
    rng.shuffle(lines)
    return lines


def text(header: bytes, lines: list[bytes]) -> bytes:
    return header + b"".join(line + b"\n" for line in lines)


def write(path: Path, data: bytes, how: str = "plain") -> Path:
    if how == "gzip":
        path.write_bytes(gzip.compress(data))
    elif how == "bgzf":
        with pysam.BGZFile(str(path), "wb") as out:
            out.write(data)
    else:
        path.write_bytes(data)
    return path


def run(argv: list[str], stdin: bytes | None = None) -> bytes:
    env = {**os.environ, "LC_ALL": "C"}
    return subprocess.run(argv, input=stdin, capture_output=True, check=True, env=env).stdout


def reference_sort(lines: list[bytes], start_field: int) -> list[bytes]:
    keys = ["-k1,1", f"-k{start_field},{start_field}n"]
    return run(["sort", *keys], stdin=text(b"", lines)).splitlines()


def sort_file(tmp_path: Path, src: Path, fmt: str, **kwargs: int) -> Result:
    out_dir, work_dir = tmp_path / "out", tmp_path / "work"
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(exist_ok=True)
    options = {"memory": 1 << 24, "threads": 2, **kwargs}
    return sort_intervals(src, out_dir, fmt=fmt, work_dir=work_dir, name=src.name, **options)


def sort_and_index(tmp_path: Path, src: Path, fmt: str) -> Result:
    sorted_gz = sort_file(tmp_path, src, fmt).files[0]
    index_dir = tmp_path / "index"
    index_dir.mkdir()
    return index_intervals(sorted_gz, index_dir, fmt=fmt, name=src.name)


def tabix_records(tabix: str, gz: Path) -> list[bytes]:
    """Every record, fetched contig by contig in the order ``tabix -l`` lists them."""
    contigs = run([tabix, "-l", str(gz)]).decode().split()
    return [line for c in contigs for line in run([tabix, str(gz), c]).splitlines()]


def data_lines(gz: Path) -> list[bytes]:
    with gzip.open(gz, "rb") as handle:
        return [line for line in handle.read().splitlines() if not line.startswith(b"#")]


def write_bigbed(path: Path, records: list[tuple[str, int, int, str]]) -> Path:
    writer = pybigtools.open(str(path), "w")
    writer.write({"chr1": 10_000, "chr2": 10_000, "chr10": 10_000}, iter(records), BED6_AUTOSQL)
    return path


# ---------------------------------------------------------------- oracle tests


@pytest.mark.parametrize(
    ("fmt", "header", "make", "start_field"),
    [
        ("bed", b"track name=t\n", lambda r: bed_lines(r, 400), 2),
        ("narrowPeak", b"", lambda r: bed_lines(r, 400, extra=10), 2),
        ("broadPeak", b"browser hide all\n", lambda r: bed_lines(r, 400, extra=9), 2),
        ("gff3", b"##gff-version 3\n", lambda r: gff_lines(r, 400, gtf=False), 4),
        ("gtf", b"#!genome-build test\n", lambda r: gff_lines(r, 400, gtf=True), 4),
    ],
)
def test_tabix_returns_the_reference_sort_for_every_contig(
    tmp_path, tabix, fmt, header, make, start_field, engine, validation
):
    lines = make(random.Random(fmt))
    src = write(tmp_path / f"in.{fmt}.gz", text(header, lines), "gzip")
    result = sort_and_index(tmp_path, src, fmt)
    assert tabix_records(tabix, result.files[0]) == reference_sort(lines, start_field)


@pytest.mark.parametrize("fmt", ["bed", "narrowPeak", "broadPeak", "gff3", "gtf", "vcf"])
def test_tabix_lists_the_contigs_of_every_format(tmp_path, tabix, fmt):
    rng = random.Random(7)
    inputs = {
        "bed": (b"", bed_lines(rng, 50)),
        "narrowPeak": (b"", bed_lines(rng, 50, extra=10)),
        "broadPeak": (b"", bed_lines(rng, 50, extra=9)),
        "gff3": (b"##gff-version 3\n", gff_lines(rng, 50, gtf=False)),
        "gtf": (b"", gff_lines(rng, 50, gtf=True)),
        "vcf": (VCF_HEADER, vcf_lines(rng, 5)),
    }
    header, lines = inputs[fmt]
    result = sort_and_index(tmp_path, write(tmp_path / "in", text(header, lines)), fmt)
    listed = run([tabix, "-l", str(result.files[0])]).decode().split()
    assert sorted(listed) == sorted({line.split(b"\t")[0].decode() for line in lines})


def test_vcf_matches_bcftools_sort_and_keeps_the_header(
    tmp_path, tabix, bcftools, engine, validation
):
    lines = vcf_lines(random.Random(3), 40)
    src = write(tmp_path / "in.vcf", text(VCF_HEADER, lines))
    result = sort_and_index(tmp_path, src, "vcf")
    expected = run([bcftools, "sort", "-Ov", "-T", str(tmp_path / "bcf"), str(src)])
    expected_records = [line for line in expected.splitlines() if not line.startswith(b"#")]
    assert tabix_records(tabix, result.files[0]) == expected_records
    assert run([tabix, "-H", str(result.files[0])]) == VCF_HEADER


def test_vcf_follows_the_header_contig_order(tmp_path, tabix, engine):
    src = write(tmp_path / "in.vcf", text(VCF_HEADER, vcf_lines(random.Random(4), 3)))
    result = sort_and_index(tmp_path, src, "vcf")
    assert run([tabix, "-l", str(result.files[0])]).split() == [b"chr2", b"chr10", b"chr1"]


def test_vcf_in_genome_contig_order_stays_in_it_and_bcftools_and_tabix_index_it(
    tmp_path, tabix, bcftools, engine, validation
):
    # Genome order, not byte order: chr10..chr12 and chr1_random arrive early from a byte-order
    # sort and must wait; chrM and chrX come after chrY in the header.
    contigs = [f"chr{n}" for n in range(1, 13)] + ["chrY", "chrX", "chrM", "chr1_random"]
    header = b"".join(b"##contig=<ID=%s,length=99999>\n" % c.encode() for c in contigs)
    header = b"##fileformat=VCFv4.2\n" + header + VCF_HEADER.splitlines(keepends=True)[-1]
    rng = random.Random(29)
    lines = [
        f"{rng.choice(contigs)}\t{rng.randrange(1, 99999)}\t.\tA\tG\t50\tPASS\tDP={i}".encode()
        + b"\tGT" * 20
        for i in range(8000)
    ]
    src = write(tmp_path / "in.vcf", text(header, lines))
    result = sort_file(tmp_path, src, "vcf", memory=64 << 10)  # sort spills to disk
    rank = {c.encode(): r for r, c in enumerate(contigs)}
    fields = [line.split(b"\t", 2) for line in lines]
    expected = [b"\t".join(f) for f in sorted(fields, key=lambda f: (rank[f[0]], int(f[1]), f))]
    assert result.metadata["sort_path"] == "direct"
    assert data_lines(result.files[0]) == expected
    for argv in ([bcftools, "index", "-f"], [tabix, "-f", "-p", "vcf"]):
        copy = shutil.copy(result.files[0], tmp_path / "copy.vcf.gz")
        run([*argv, str(copy)])
    assert run([tabix, "-l", str(copy)]).split() == [c.encode() for c in contigs]


def test_vcf_without_contig_lines_sorts_contigs_bytewise(tmp_path):
    header = b"##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
    lines = [
        b"chr2\t5\t.\tA\tC\t.\t.\t.",
        b"chr10\t9\t.\tA\tC\t.\t.\t.",
        b"chr1\t7\t.\tA\tC\t.\t.\t.",
    ]
    result = sort_file(tmp_path, write(tmp_path / "in.vcf", text(header, lines)), "vcf")
    assert [line.split(b"\t")[0] for line in data_lines(result.files[0])] == [
        b"chr1",
        b"chr10",
        b"chr2",
    ]


def test_gtf_is_sorted_on_column_four(tmp_path):
    lines = [
        b'chr1\tzeta\texon\t5\t9\t.\t+\t.\tgene_id "a";',
        b'chr1\talpha\texon\t30\t40\t.\t+\t.\tgene_id "b";',
        b'chr1\tmid\texon\t100\t120\t.\t+\t.\tgene_id "c";',
    ]
    shuffled = [lines[2], lines[1], lines[0]]
    result = sort_file(tmp_path, write(tmp_path / "in.gtf", text(b"", shuffled)), "gtf")
    assert data_lines(result.files[0]) == lines


def test_outputs_pass_bgzip_integrity_test(tmp_path, bgzip, engine):
    src = write(tmp_path / "in.bed", text(b"", bed_lines(random.Random(1), 3000)))
    result = sort_file(tmp_path, src, "bed")
    subprocess.run([bgzip, "-t", str(result.files[0])], check=True)


def test_bed_with_track_and_browser_lines_is_queryable(tmp_path, tabix):
    header = b"browser position chr1:1-100\n#comment\ntrack name=peaks\n"
    lines = [b"chr2\t5\t9\tb", b"chr1\t20\t30\ta", b"chr1\t1\t4\tc"]
    result = sort_and_index(tmp_path, write(tmp_path / "in.bed", text(header, lines)), "bed")
    assert result.metadata["line_skip"] == 3
    assert run([tabix, str(result.files[0]), "chr1:21-25"]) == b"chr1\t20\t30\ta\n"


def test_positions_beyond_2_29_get_a_queryable_csi(tmp_path, tabix, engine):
    far = CSI_THRESHOLD + 70_000_000
    lines = [f"chr1\t{far}\t{far + 50}\tfar".encode(), b"chr1\t10\t20\tnear"]
    result = sort_and_index(tmp_path, write(tmp_path / "in.bed", text(b"", lines)), "bed")
    assert result.files[1].name.endswith(".csi")
    region = f"chr1:{far + 10}-{far + 20}"
    assert run([tabix, str(result.files[0]), region]) == lines[0] + b"\n"


# ---------------------------------------------------------------- bytes and streaming


def test_gzip_bgzf_and_plain_inputs_give_identical_bytes(tmp_path):
    data = text(b"track name=t\n", bed_lines(random.Random(5), 500))
    outputs = []
    for how, suffix in [("plain", "bed"), ("gzip", "bgz"), ("bgzf", "bed.gz")]:
        run_dir = tmp_path / how
        run_dir.mkdir()
        src = write(run_dir / f"in.{suffix}", data, how)
        outputs.append(sort_file(run_dir, src, "bed").files[0].read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]


def test_output_bytes_are_identical_across_runs(tmp_path, engine):
    src = write(tmp_path / "in.bed", text(b"", bed_lines(random.Random(6), 2000)))
    first = sort_file(tmp_path / "a", src, "bed").files
    second = sort_file(tmp_path / "b", src, "bed").files
    assert [f.read_bytes() for f in first] == [f.read_bytes() for f in second]


def test_chunked_validation_writes_the_same_bytes_as_line_validation(tmp_path, monkeypatch):
    src = write(tmp_path / "in.vcf", text(VCF_HEADER, vcf_lines(random.Random(16), 300)))
    by_line = sort_file(tmp_path / "a", src, "vcf")
    monkeypatch.setattr(chunks, "VECTORISE_ABOVE", 0)
    monkeypatch.setattr(chunks, "MIN_FRAME", 0)
    by_chunk = sort_file(tmp_path / "b", src, "vcf")
    assert by_chunk.files[0].read_bytes() == by_line.files[0].read_bytes()
    assert by_chunk.metadata == by_line.metadata


def test_both_engines_write_the_same_records(tmp_path, tabix, bgzip, monkeypatch):
    src = write(tmp_path / "in.vcf.gz", text(VCF_HEADER, vcf_lines(random.Random(17), 50)), "bgzf")
    monkeypatch.setenv("GENOFLOW_ENGINE", "htslib-cli")
    cli = sort_file(tmp_path / "cli", src, "vcf")
    monkeypatch.setenv("GENOFLOW_ENGINE", "pysam")
    wheel = sort_file(tmp_path / "pysam", src, "vcf")
    assert run([tabix, "-h", str(cli.files[0]), "chr1"]) == run(
        [tabix, "-h", str(wheel.files[0]), "chr1"]
    )
    assert gzip.decompress(cli.files[0].read_bytes()) == gzip.decompress(
        wheel.files[0].read_bytes()
    )


def test_records_the_engine_and_its_tool_versions(tmp_path, engine):
    src = write(tmp_path / "in.bed", b"chr1\t1\t2\n")
    meta = sort_file(tmp_path, src, "bed").metadata
    assert meta["engine"] == engine
    tools = ["bgzip", "tabix"] if engine == "htslib-cli" else ["pysam", "htslib"]
    assert sorted(meta["engine_versions"]) == sorted(tools)


def test_auto_engine_falls_back_to_pysam_without_htslib_tools(tmp_path, monkeypatch):
    only_sort = tmp_path / "bin"
    only_sort.mkdir()
    (only_sort / "sort").symlink_to(shutil.which("sort") or "sort")
    monkeypatch.setenv("PATH", str(only_sort))
    monkeypatch.delenv("GENOFLOW_ENGINE", raising=False)
    src = write(tmp_path / "in.bed", b"chr1\t1\t2\n")
    assert sort_file(tmp_path, src, "bed").metadata["engine"] == "pysam"


def test_sorts_plain_records_directly_and_irregular_files_line_by_line(tmp_path):
    lines = bed_lines(random.Random(18), 100)
    plain = sort_file(tmp_path / "a", write(tmp_path / "a.bed", text(b"", lines)), "bed")
    mixed = [*lines[:50], b"#note", *lines[50:]]
    moved = sort_file(tmp_path / "b", write(tmp_path / "b.bed", text(b"", mixed)), "bed")
    assert (plain.metadata["sort_path"], moved.metadata["sort_path"]) == ("direct", "streamed")
    assert data_lines(plain.files[0]) == data_lines(moved.files[0])


def test_keeps_latin1_bytes_unchanged(tmp_path, tabix):
    record = b"chr1\t5\t.\tA\tG\t50\tPASS\tNOTE=caf\xe9_cr\xe8me"
    src = write(tmp_path / "in.vcf", text(VCF_HEADER, [record]))
    result = sort_and_index(tmp_path, src, "vcf")
    assert run([tabix, str(result.files[0]), "chr1"]) == record + b"\n"
    assert query_index(result.files[0], fmt="vcf", name="in.vcf") == {"chr1": 1}


def test_spills_under_a_tiny_memory_cap_and_stays_correct(tmp_path, validation):
    lines = bed_lines(random.Random(8), 20_000)
    src = write(tmp_path / "in.bed", text(b"", lines))
    result = sort_file(tmp_path, src, "bed", memory=64 << 10)
    assert data_lines(result.files[0]) == reference_sort(lines, 2)
    assert result.records_in == result.records_out == 20_000


def test_leaves_work_dir_empty_after_sorting(tmp_path):
    sort_file(tmp_path, write_bigbed(tmp_path / "in.bb", [("chr1", 1, 2, "a\t0\t+")]), "bigBed")
    assert list((tmp_path / "work").iterdir()) == []


def child_processes() -> set[int]:
    """This process's children, running or unreaped (zombies are listed too)."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while being listed
            continue
        if int(fields[1]) == os.getpid():
            children.add(int(stat.parent.name))
    return children


def test_kills_and_reaps_sort_when_a_record_is_invalid(tmp_path):
    lines = [*bed_lines(random.Random(15), 20_000), b"chr1\tbad\t5"]
    before = child_processes()
    with pytest.raises(ProcessingError):
        sort_file(tmp_path, write(tmp_path / "in.bed", text(b"", lines)), "bed")
    assert child_processes() <= before


def test_rejects_a_non_positive_memory_cap(tmp_path):
    with pytest.raises(ValueError, match="positive"):
        sort_file(tmp_path, write(tmp_path / "in.bed", b"chr1\t1\t2\n"), "bed", memory=0)


# ---------------------------------------------------------------- header handling


def test_moves_comments_found_among_records_into_the_header(tmp_path):
    data = b"#first\nchr2\t1\t2\n#second\nchr1\t1\t2\n"
    result = sort_file(tmp_path, write(tmp_path / "in.bed", data), "bed")
    with gzip.open(result.files[0], "rb") as handle:
        assert handle.read() == b"#first\n#second\nchr1\t1\t2\nchr2\t1\t2\n"
    assert result.metadata["moved_comment_lines"] == 1


def test_moves_vcf_comments_found_among_records_above_the_chrom_line(tmp_path, bcftools):
    lines = [
        b"chr1\t5\t.\tA\tG\t50\tPASS\tDP=1",
        b"##note=late",
        b"chr2\t5\t.\tA\tG\t50\tPASS\tDP=2",
    ]
    result = sort_file(tmp_path, write(tmp_path / "in.vcf", text(VCF_HEADER, lines)), "vcf")
    header = run([bcftools, "view", "-h", "--no-version", str(result.files[0])])
    assert header.splitlines()[-2:] == [b"##note=late", VCF_HEADER.splitlines()[-1]]


def test_strips_the_gff3_fasta_section_and_reports_it(tmp_path):
    features = gff_lines(random.Random(9), 5, gtf=False)
    fasta = b"##FASTA\n>chr1\nACGT\nACGT\n"
    src = write(tmp_path / "in.gff3", text(b"##gff-version 3\n", features) + fasta)
    result = sort_file(tmp_path, src, "gff3")
    assert result.metadata["fasta_stripped"] is True
    assert result.metadata["fasta_lines"] == 4
    assert data_lines(result.files[0]) == reference_sort(features, 4)


def test_normalises_crlf_line_endings(tmp_path):
    lines = bed_lines(random.Random(10), 50)
    crlf = write(tmp_path / "crlf.bed", text(b"track a\n", lines).replace(b"\n", b"\r\n"))
    lf = write(tmp_path / "lf.bed", text(b"track a\n", lines))
    from_crlf = sort_file(tmp_path / "crlf", crlf, "bed")
    from_lf = sort_file(tmp_path / "lf", lf, "bed")
    assert from_crlf.metadata["crlf_normalised"] is True
    assert from_crlf.files[0].read_bytes() == from_lf.files[0].read_bytes()


def test_streamed_and_direct_paths_write_identical_bytes(tmp_path, engine):
    lines = vcf_lines(random.Random(19), 30)
    crlf = text(VCF_HEADER, lines).replace(b"\n", b"\r\n")
    direct = sort_file(tmp_path / "lf", write(tmp_path / "lf.vcf", text(VCF_HEADER, lines)), "vcf")
    streamed = sort_file(tmp_path / "crlf", write(tmp_path / "crlf.vcf", crlf), "vcf")
    assert (direct.metadata["sort_path"], streamed.metadata["sort_path"]) == ("direct", "streamed")
    assert [f.read_bytes() for f in direct.files] == [f.read_bytes() for f in streamed.files]


# ---------------------------------------------------------------- bigBed


def test_converts_bigbed_to_a_sorted_bed_with_every_field(tmp_path, tabix):
    records = [("chr1", 10, 20, "a\t5\t+"), ("chr10", 1, 5, "c\t0\t."), ("chr2", 3, 9, "b\t7\t-")]
    src = write_bigbed(tmp_path / "in.bb", records)
    result = sort_and_index(tmp_path, src, "bigBed")
    assert result.files[0].name == "sorted.bed.gz"
    expected = [f"{c}\t{s}\t{e}\t{rest}".encode() for c, s, e, rest in records]
    assert tabix_records(tabix, result.files[0]) == sorted(expected)


def test_reports_bigbed_conversion_in_metadata(tmp_path):
    src = write_bigbed(tmp_path / "in.bb", [("chr1", 10, 20, "a\t5\t+")])
    assert sort_file(tmp_path, src, "bigBed").metadata["converted_from"] == "bigBed"


def test_rejects_bigbed_fields_that_pybigtools_would_split(tmp_path):
    src = write_bigbed(tmp_path / "in.bb", [("chr1", 10, 20, "two words\t5\t+")])
    with pytest.raises(ProcessingError) as info:
        bigbed_to_bed(src, tmp_path / "out.bed", name="in.bb")
    assert info.value.stage == "convert"
    assert not (tmp_path / "out.bed").exists()


# ---------------------------------------------------------------- bad inputs


def truncated_bgzf(path: Path) -> None:
    write(path, text(b"", bed_lines(random.Random(11), 5000)), "bgzf")
    path.write_bytes(path.read_bytes()[:-28])


def truncated_gzip(path: Path) -> None:
    data = gzip.compress(text(b"", bed_lines(random.Random(12), 5000)))
    path.write_bytes(data[: len(data) // 2])


BAD_INPUTS = [
    ("bed", truncated_bgzf, "decompress", "truncated BGZF"),
    ("bed", truncated_gzip, "decompress", "decompress"),
    ("bed", b"chr1\t1\t5\nchr1 1 5\n", "parse", "line 2"),
    ("bed", b"chr1\tten\t20\n", "parse", "not an integer"),
    ("bed", b"chr1\t-5\t20\n", "parse", "negative start"),
    ("bed", b"chr1\t30\t20\n", "parse", "before start"),
    ("gff3", b"chr1\ts\texon\t0\t5\t.\t+\t.\tID=a\n", "parse", "below 1"),
    ("narrowPeak", b"chr1\t1\t5\tp\t0\t.\t1\t2\t3\n", "parse", "at least 10"),
    ("vcf", VCF_HEADER + b"chrZ\t5\t.\tA\tG\t.\t.\t.\n", "parse", "##contig"),
    ("vcf", b"##fileformat=VCFv4.2\nchr1\t5\t.\tA\tG\t.\t.\t.\n", "parse", "#CHROM"),
    ("vcf", b"chr1\t5\t.\tA\tG\t.\t.\n", "parse", "at least 8"),
    ("bed", b"", "parse", "no records"),
    ("bed", b"chr1\t1\t5\nchr1\t+5\t20\n", "parse", "line 2: start is not an integer"),
    ("bed", b"chr1\t 5\t20\n", "parse", "start is not an integer"),
    ("bed", b"chr1\t5\t2e1\n", "parse", "end is not an integer"),
    ("bed", b"chr1\t5.0\t20\n", "parse", "start is not an integer"),
    ("bed", b"chr1\t5\t99999999999999999999\n", "parse", "end is not an integer"),
    ("bed", b"chr1\t5\t9\n\tr\t5\t9\n", "parse", "line 2: invalid contig"),
    ("gtf", b"chr1\ts\texon\t3\t5\t.\t+\n", "parse", "at least 9"),
    ("vcf", VCF_HEADER + b"chr1\t0x5\t.\tA\tG\t.\t.\t.\n", "parse", "line 8: start is not"),
]


@pytest.mark.parametrize(("fmt", "content", "stage", "reason"), BAD_INPUTS)
def test_rejects_bad_input_naming_file_and_stage_and_leaves_nothing(
    tmp_path, fmt, content, stage, reason, engine, validation
):
    src = tmp_path / "bad.input"
    if callable(content):
        content(src)
    else:
        src.write_bytes(content)
    with pytest.raises(ProcessingError) as info:
        sort_file(tmp_path, src, fmt)
    assert (info.value.file, info.value.stage) == ("bad.input", stage)
    assert reason in str(info.value)
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("mixed", [False, True], ids=["direct", "streamed"])
def test_reports_a_failing_sort_with_its_own_message(tmp_path, monkeypatch, mixed):
    real_argv = SortJob.sort_argv
    monkeypatch.setattr(SortJob, "sort_argv", lambda job, keys: [*real_argv(job, keys), "--bogus"])
    lines = bed_lines(random.Random(13), 100)
    src = write(tmp_path / "in.bed", text(b"", [*lines, b"#late"] if mixed else lines))
    with pytest.raises(ProcessingError) as info:
        sort_file(tmp_path, src, "bed")
    assert info.value.stage == "sort"
    assert "GNU sort failed" in info.value.message
    assert "bogus" in info.value.message
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("reads_input", [True, False], ids=["after reading", "at once"])
def test_a_failing_bgzip_fails_the_step_with_its_message_and_leaves_nothing(
    tmp_path, monkeypatch, reads_input
):
    require_tool("tabix")
    fake = fake_tool(
        tmp_path / "bin", "bgzip", says="bgzip: quota exceeded", reads_input=reads_input
    )
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("GENOFLOW_ENGINE", "htslib-cli")
    src = write(tmp_path / "in.bed", text(b"", bed_lines(random.Random(20), 20_000)))
    with pytest.raises(ProcessingError) as info:
        sort_file(tmp_path, src, "bed")
    assert (info.value.file, info.value.stage) == ("in.bed", "sort")
    assert "bgzip failed" in info.value.message
    assert "quota exceeded" in info.value.message
    assert list((tmp_path / "out").iterdir()) == list((tmp_path / "work").iterdir()) == []


def test_a_failing_tabix_fails_the_sort_with_its_message_and_leaves_nothing(tmp_path, monkeypatch):
    require_tool("bgzip")
    fake = fake_tool(tmp_path / "bin", "tabix", says="tabix: cannot write", reads_input=False)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("GENOFLOW_ENGINE", "htslib-cli")
    src = write(tmp_path / "in.bed", b"chr1\t1\t2\n")
    with pytest.raises(ProcessingError, match="cannot write") as info:
        sort_file(tmp_path, src, "bed")
    assert info.value.stage == "sort"
    assert list((tmp_path / "out").iterdir()) == []


def test_a_failing_bgzip_fails_decompression_with_its_message(tmp_path, monkeypatch):
    require_tool("tabix")
    fake = fake_tool(tmp_path / "bin", "bgzip", says="bgzip: read error", reads_input=False)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("GENOFLOW_ENGINE", "htslib-cli")
    src = write(tmp_path / "in.bed.gz", b"chr1\t1\t2\n", "bgzf")
    with pytest.raises(ProcessingError, match="read error") as info:
        sort_file(tmp_path, src, "bed")
    assert info.value.stage == "decompress"
    assert list((tmp_path / "out").iterdir()) == list((tmp_path / "work").iterdir()) == []


def test_index_failure_carries_htslib_reason_and_leaves_nothing(tmp_path, engine):
    src = write(tmp_path / "unsorted.bed.gz", b"chr1\t50\t60\nchr1\t1\t5\n", "bgzf")
    out_dir = tmp_path / "index"
    out_dir.mkdir()
    with pytest.raises(ProcessingError) as info:
        index_intervals(src, out_dir, fmt="bed", name="unsorted.bed")
    assert info.value.stage == "index"
    assert "nsorted positions" in info.value.message
    assert list(out_dir.iterdir()) == []


def test_index_refuses_a_plain_gzip_file(tmp_path):
    src = write(tmp_path / "plain.bed.gz", b"chr1\t1\t5\n", "gzip")
    out_dir = tmp_path / "index"
    out_dir.mkdir()
    with pytest.raises(ProcessingError, match="not BGZF") as info:
        index_intervals(src, out_dir, fmt="bed", name="plain.bed")
    assert info.value.stage == "index"
    assert list(out_dir.iterdir()) == []


# ---------------------------------------------------------------- checks


def test_check_sorted_accepts_a_sorted_output(tmp_path, validation):
    src = write(tmp_path / "in.vcf", text(VCF_HEADER, vcf_lines(random.Random(14), 20)))
    result = sort_file(tmp_path, src, "vcf")
    assert check_sorted(result.files[0], fmt="vcf", name="in.vcf") == SortCheck(60, True)


def test_check_sorted_reports_a_decreasing_start(tmp_path, validation):
    src = write(tmp_path / "x.bed.gz", b"chr1\t50\t60\nchr1\t1\t5\n", "bgzf")
    check = check_sorted(src, fmt="bed", name="x.bed")
    assert (check.ordered, check.problem) == (False, "line 2: 'chr1':1 after 'chr1':50")


def test_check_sorted_reports_a_split_contig_block(tmp_path, validation):
    src = write(tmp_path / "x.bed.gz", b"chr1\t1\t2\nchr2\t1\t2\nchr1\t5\t6\n", "bgzf")
    check = check_sorted(src, fmt="bed", name="x.bed")
    assert not check.ordered
    assert "appears again" in (check.problem or "")


def test_check_sorted_reports_contigs_out_of_header_order(tmp_path, validation):
    lines = [b"chr1\t5\t.\tA\tG\t.\t.\t.", b"chr2\t5\t.\tA\tG\t.\t.\t."]
    src = write(tmp_path / "x.vcf.gz", text(VCF_HEADER, lines), "bgzf")
    assert not check_sorted(src, fmt="vcf", name="x.vcf").ordered


def test_check_sorted_reports_a_header_line_after_records(tmp_path, validation):
    src = write(tmp_path / "x.bed.gz", b"chr1\t1\t2\ntrack name=late\nchr1\t5\t6\n", "bgzf")
    check = check_sorted(src, fmt="bed", name="x.bed")
    assert (check.ordered, check.problem) == (False, "line 2: header line after records")


@pytest.mark.parametrize("damage", ["none", "split block", "decreasing start"])
def test_check_sorted_by_many_chunks_agrees_with_the_line_by_line_check(
    tmp_path, monkeypatch, damage
):
    rng = random.Random(damage)
    contigs = [b"chr1", b"chr2", b"chr10", b"chrUn_KI270302v1", b"chrUn_KI270303v1"]
    lines = sorted(
        (b"%s\t%d\t%d" % (c, s, s + 5) for c in contigs for s in rng.sample(range(10**6), 300)),
        key=lambda line: (line.split(b"\t")[0], int(line.split(b"\t")[1])),
    )
    if damage == "split block":
        lines.append(lines[0])
    elif damage == "decreasing start":
        lines[700], lines[701] = lines[701], lines[700]
    src = write(tmp_path / "x.bed.gz", text(b"", lines), "bgzf")
    by_line = check_sorted(src, fmt="bed", name="x.bed")
    for name, value in [("VECTORISE_ABOVE", 0), ("MIN_FRAME", 0), ("CHUNK", 2000)]:
        monkeypatch.setattr(chunks, name, value)
    assert check_sorted(src, fmt="bed", name="x.bed") == by_line
    assert by_line.ordered == (damage == "none")


def test_query_index_reads_a_csi_index(tmp_path):
    far = CSI_THRESHOLD + 5
    lines = [f"chr1\t{far}\t{far + 50}".encode(), b"chr1\t10\t20", b"chr2\t1\t2"]
    result = sort_and_index(tmp_path, write(tmp_path / "in.bed", text(b"", lines)), "bed")
    assert result.metadata["index"] == "csi"
    assert query_index(tmp_path / "index", fmt="bed", name="in.bed") == {"chr1": 2, "chr2": 1}


def test_query_index_counts_records_per_contig(tmp_path):
    lines = [b"chr2\t1\t2", b"chr1\t1\t2", b"chr1\t3\t4", b"chr10\t0\t9"]
    result = sort_and_index(tmp_path, write(tmp_path / "in.bed", text(b"", lines)), "bed")
    counts = query_index(tmp_path / "index", fmt="bed", name="in.bed")
    assert counts == {"chr1": 2, "chr10": 1, "chr2": 1}
    assert (result.metadata["index"], result.metadata["preset"]) == ("tbi", "bed")


def test_sort_writes_the_index_and_index_adopts_it(tmp_path, engine):
    src = write(tmp_path / "in.bed", text(b"track t\n", bed_lines(random.Random(21), 50)))
    result = sort_and_index(tmp_path, src, "bed")
    sorted_index = tmp_path / "out" / "sorted.bed.gz.tbi"
    assert result.metadata["index_built_by"] == "sort"
    assert result.files[1].read_bytes() == sorted_index.read_bytes()
    assert (result.records_out, result.metadata["line_skip"]) == (50, 1)


def test_index_rebuilds_an_index_older_than_its_data(tmp_path, tabix, engine):
    src = write(tmp_path / "in.bed", text(b"track t\n", bed_lines(random.Random(22), 50)))
    gz, built = sort_file(tmp_path, src, "bed").files
    stale = built.stat().st_mtime_ns - 10**9
    os.utime(built, ns=(stale, stale))
    (tmp_path / "index").mkdir()
    result = index_intervals(gz, tmp_path / "index", fmt="bed", name="in.bed")
    assert result.metadata["index_built_by"] == "index"
    assert (result.records_out, result.metadata["line_skip"]) == (50, 1)
    assert tabix_records(tabix, result.files[0]) == tabix_records(tabix, gz)


# ---------------------------------------------------------------- chunked validation


def validate(fmt: str, data: bytes, *, vectorised: bool, pieces: int = 1) -> tuple[int, int, int]:
    """Validate ``data`` fed as ``pieces`` chunks of whole lines to one validator."""
    reader = RecordReader(fmt, name="x")
    if fmt == "vcf":
        for number, line in enumerate(VCF_HEADER.splitlines(), 1):
            reader.observe_header(number, line)
    validator = ChunkValidator(reader, vectorised=vectorised)
    lines = data.splitlines(keepends=True)
    step = -(-len(lines) // pieces)
    number = 1
    for begin in range(0, len(lines), step):
        chunk = b"".join(lines[begin : begin + step])
        validator.feed(chunk, number, len(lines[begin : begin + step]))
        number += step
    return validator.records, validator.max_end, len(reader.seen_contigs)


@pytest.mark.parametrize(
    ("fmt", "lines"),
    [
        ("bed", bed_lines(random.Random(23), 500)),
        ("narrowPeak", bed_lines(random.Random(24), 500, extra=10)),
        ("gff3", gff_lines(random.Random(25), 500, gtf=False)),
        ("vcf", vcf_lines(random.Random(26), 100)),
        (
            "vcf",
            [
                b"chr1\t5\t.\tACGT\t<DEL>\t.\t.\tSVTYPE=DEL;END=900",
                *vcf_lines(random.Random(27), 5),
            ],
        ),
    ],
)
def test_chunk_validation_counts_like_line_validation_without_reading_lines(
    monkeypatch, fmt, lines
):
    monkeypatch.setattr(chunks, "MIN_FRAME", 0)
    data = text(b"", lines)
    expected = validate(fmt, data, vectorised=False)

    def no_line_by_line(*args: object) -> None:
        raise AssertionError("the chunk was validated line by line")

    monkeypatch.setattr(ChunkValidator, "_lines", no_line_by_line)
    assert validate(fmt, data, vectorised=True) == expected


@pytest.mark.parametrize("line", [b"#late comment", b"", b"chr1\t5\t9\r", b"track name=x"])
def test_chunk_validation_flags_lines_that_are_not_plain_records(monkeypatch, line):
    monkeypatch.setattr(chunks, "MIN_FRAME", 0)
    data = text(b"", [b"chr1\t1\t2", line, b"chr2\t1\t2"])
    with pytest.raises(Irregular) as info:
        validate("bed", data, vectorised=True)
    assert info.value.lineno == 2


def outcome(fmt: str, data: bytes, *, vectorised: bool, pieces: int = 1) -> object:
    """What validating ``data`` gives: counts, or the error's message, or the irregular line."""
    try:
        return validate(fmt, data, vectorised=vectorised, pieces=pieces)
    except ProcessingError as exc:
        return str(exc)
    except Irregular as exc:
        return ("irregular", exc.lineno)


MUTATIONS = [
    b"", b"0", b"007", b"+5", b" 5", b"5 ", b"-3", b"1e3", b"5.0", b"nan", b"\xe9",
    b"123456789012345678", b"1234567890123456789", b"99999999999999999999", b"chr\x01",
    b"track", b"browser", b"#x", b"chr1 x", b"a\tb", b"\t",
]  # fmt: skip


@pytest.mark.parametrize("fmt", ["bed", "narrowPeak", "gff3", "vcf"])
def test_chunk_validation_agrees_with_line_validation_on_damaged_records(monkeypatch, fmt):
    monkeypatch.setattr(chunks, "MIN_FRAME", 0)
    rng = random.Random(fmt)
    make = {
        "bed": lambda: bed_lines(rng, 40),
        "narrowPeak": lambda: bed_lines(rng, 40, extra=10),
        "gff3": lambda: gff_lines(rng, 40, gtf=False),
        "vcf": lambda: vcf_lines(rng, 8),
    }[fmt]
    for _ in range(300):
        lines = make()
        for _ in range(rng.randrange(3)):
            row = rng.randrange(len(lines))
            fields = lines[row].split(b"\t")
            column = rng.randrange(min(len(fields), 9))
            fields[column] = rng.choice(MUTATIONS)
            lines[row] = b"\t".join(fields[: rng.choice([len(fields)] * 5 + [2, 3, 8])])
        data = text(b"", lines)
        if rng.random() < 0.2:
            data = data[:-1]  # a file's last line may lack its newline
        expected = outcome(fmt, data, vectorised=False)
        assert outcome(fmt, data, vectorised=True) == expected, data
        # Later chunks meet contigs the validator already knows, and some new ones.
        assert outcome(fmt, data, vectorised=True, pieces=3) == expected, data


# ---------------------------------------------------------------- contig block order


def reorder_through_pipes(
    tmp_path: Path, data: bytes, order: list[bytes], sizes: dict[bytes, int], *, into: str
) -> bytes:
    """What :func:`reorder_blocks` makes of ``data`` read from a pipe, as sort would write it.

    ``into`` is ``pipe`` (bytes are spliced into a pipe, as into bgzip) or ``sink`` (written to
    a Python sink, as into pysam's BGZF writer).
    """
    source, feed = os.pipe()
    drain, sink = os.pipe() if into == "pipe" else (-1, -1)
    out = io.BytesIO()

    def write_then_close() -> None:
        with open(feed, "wb") as pipe:
            pipe.write(data)

    def read_all() -> bytes:
        with open(drain, "rb") as pipe:
            return pipe.read()

    with ThreadPoolExecutor(2) as pool, open(tmp_path / "spill", "w+b") as spill:
        fed = pool.submit(write_then_close)
        drained = pool.submit(read_all) if into == "pipe" else None
        try:
            reorder_blocks(source, sizes, order, sink if into == "pipe" else out, spill.fileno())
        finally:
            os.close(source)
            if into == "pipe":
                os.close(sink)
            fed.exception()
        return out.getvalue() if drained is None else drained.result()


def sort_output(lines: list[bytes]) -> tuple[bytes, dict[bytes, int]]:
    """Lines in byte order as sort writes them, and the bytes each contig's block takes."""
    data = b"".join(line + b"\n" for line in sorted(lines))
    sizes: dict[bytes, int] = {}
    for line in lines:
        contig = line.split(b"\t")[0]
        sizes[contig] = sizes.get(contig, 0) + len(line) + 1
    return data, sizes


@pytest.mark.parametrize("into", ["pipe", "sink"])
def test_reorder_blocks_puts_byte_ordered_blocks_in_header_order(tmp_path, into):
    rng = random.Random(28)
    contigs = [b"chr1", b"chr2", b"chr10", b"chrX", b"chr1_random", b"chrM"]
    lines = [
        b"%s\t%d\t%s" % (rng.choice(contigs), rng.randrange(99), b"x" * 500) for _ in range(9000)
    ]
    data, sizes = sort_output(lines)
    out = reorder_through_pipes(tmp_path, data, contigs, sizes, into=into)
    expected = [
        line for contig in contigs for line in sorted(lines) if line.startswith(contig + b"\t")
    ]
    assert out == b"".join(line + b"\n" for line in expected)


@pytest.mark.parametrize("into", ["pipe", "sink"])
def test_reorder_blocks_refuses_a_block_that_does_not_start_with_its_contig(tmp_path, into):
    data = b"chr1\t5\nchr3\t1\n"
    sizes = {b"chr1": 7, b"chr2": 7}
    with pytest.raises(ValueError, match="chr2"):
        reorder_through_pipes(tmp_path, data, [b"chr2", b"chr1"], sizes, into=into)


@pytest.mark.parametrize("into", ["pipe", "sink"])
def test_reorder_blocks_refuses_sort_output_shorter_than_its_records(tmp_path, into):
    data, sizes = sort_output([b"chr1\t5", b"chr2\t1", b"chr2\t9"])
    with pytest.raises(ValueError, match="ended early"):
        reorder_through_pipes(tmp_path, data[:-3], [b"chr2", b"chr1"], sizes, into=into)


# ---------------------------------------------------------------- order checks


def order_verdicts(rows: list[tuple[bytes, int]], split: int) -> tuple[bool, bool]:
    """(record-by-record verdict, verdict with the rows after ``split`` checked as one block)."""
    reader = RecordReader("bed", name="x")
    one_by_one = OrderCheck(reader)
    by_record = all(one_by_one.add(contig, start) is None for contig, start in rows)
    blockwise = OrderCheck(reader)
    head = all(blockwise.add(contig, start) is None for contig, start in rows[:split])
    names = sorted({contig for contig, _ in rows[split:]})
    codes = np.array([names.index(contig) for contig, _ in rows[split:]])
    starts = np.array([start for _, start in rows[split:]])
    return by_record, head and blockwise.add_block(codes, names, starts)


@pytest.mark.parametrize("seed", range(40))
def test_order_check_of_a_block_agrees_with_record_by_record(seed):
    rng = random.Random(seed)
    rows = sorted((rng.choice([b"chr1", b"chr10", b"chr2"]), rng.randrange(50)) for _ in range(30))
    if seed % 2:
        i, j = rng.randrange(30), rng.randrange(30)
        rows[i], rows[j] = rows[j], rows[i]
    verdicts = order_verdicts(rows, rng.randrange(1, 29))
    assert verdicts[0] == verdicts[1]
