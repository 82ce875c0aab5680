"""Alignment processors: sorting and indexing compared with Debian's samtools as the oracle."""

from __future__ import annotations

import gzip
import os
import random
import subprocess
from functools import partial
from pathlib import Path

import pysam
import pytest

from genoflow.core.errors import ProcessingError
from genoflow.processors.alignments import (
    CSI_THRESHOLD,
    check_sorted,
    count_records,
    index_alignments,
    query_index,
    sort_alignments,
)
from genoflow.processors.base import Result, SortCheck

from .conftest import require_tool

CONTIGS = [("chr1", 50_000), ("chr2", 40_000), ("chrM", 16_569)]
LONG_CONTIGS = [("chr1", 50_000), ("giant", CSI_THRESHOLD + 100_000)]
MEMORY = 64 << 20


def _header(contigs: list[tuple[str, int]], *, order: str | None = None) -> pysam.AlignmentHeader:
    hd = {"VN": "1.6"} | ({"SO": order} if order else {})
    sq = [{"SN": sn, "LN": ln} for sn, ln in contigs]
    return pysam.AlignmentHeader.from_dict({"HD": hd, "SQ": sq})


def _read(header, qname: str, tid: int, pos: int, flag: int = 0) -> pysam.AlignedSegment:
    read = pysam.AlignedSegment(header)
    read.query_name = qname
    read.flag = flag
    read.reference_id = tid
    read.reference_start = pos
    read.query_sequence = "ACGTACGTAC"
    read.query_qualities = pysam.qualitystring_to_array("IIIIIIIIII")
    if flag & 4 == 0:
        read.cigarstring = "10M"
        read.mapping_quality = 60
    return read


def _reads(header, *, count: int = 300, seed: int = 7) -> list[pysam.AlignedSegment]:
    """Shuffled reads on every contig, ties at one position, placed and unplaced unmapped."""
    rng = random.Random(seed)
    lengths = [header.get_reference_length(ref) for ref in header.references]
    reads = []
    for i in range(count):
        tid = rng.randrange(len(lengths))
        start = 1000 if i % 25 == 0 else rng.randrange(lengths[tid] - 20)
        reads.append(_read(header, f"m{i}", tid, start, 16 if i % 3 == 0 else 0))
    for i in range(count // 10):
        reads.append(_read(header, f"p{i}", i % len(lengths), 500 + i, 4))
        reads.append(_read(header, f"u{i}", -1, -1, 4))
    rng.shuffle(reads)
    return reads


def _write(path: Path, header, reads, mode: str = "wb") -> Path:
    with pysam.AlignmentFile(str(path), mode, header=header) as handle:
        for read in reads:
            handle.write(read)
    return path


def _bam(tmp_path: Path, **kwargs) -> Path:
    header = _header(CONTIGS)
    return _write(tmp_path / "input.bam", header, _reads(header, **kwargs))


def _sam_text() -> bytes:
    header = _header(CONTIGS)
    lines = [str(header).encode()]
    lines += [(read.to_string() + "\n").encode() for read in _reads(header)]
    return b"".join(lines)


@pytest.fixture(params=["htslib-cli", "pysam"])
def engine(request, monkeypatch) -> str:
    """Run the test once with Debian's samtools on PATH, once with pysam's samtools only."""
    if request.param == "htslib-cli":
        require_tool("samtools")
    monkeypatch.setenv("GENOFLOW_ENGINE", request.param)
    return request.param


def _fake_samtools(folder: Path, *, sort_says: str, version: str = "1.16.1") -> Path:
    """A samtools that reports ``version`` and fails every other command with a message."""
    folder.mkdir()
    script = folder / "samtools"
    script.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = --version ]; then echo "samtools {version}"; exit 0; fi\n'
        f"echo '{sort_says}' >&2\nexit 1\n"
    )
    script.chmod(0o755)
    return folder


def _sort(src: Path, tmp_path: Path, *, memory: int = MEMORY, threads: int = 1, tag: str = ""):
    out, work = tmp_path / f"out{tag}", tmp_path / f"work{tag}"
    out.mkdir()
    work.mkdir()
    return sort_alignments(src, out, work_dir=work, memory=memory, threads=threads, name=src.name)


def _tool(*args: str | Path) -> str:
    done = subprocess.run([str(a) for a in args], capture_output=True, check=True)
    return done.stdout.decode("utf-8", "surrogateescape")


def _oracle_sorted_records(samtools: str, src: Path, tmp_path: Path) -> str:
    expected = tmp_path / "oracle.bam"
    _tool(samtools, "sort", "--no-PG", "-T", tmp_path / "oracle", "-o", expected, src)
    return _tool(samtools, "view", expected)


def _inputs(tmp_path: Path, container: str) -> Path:
    if container == "bam":
        return _bam(tmp_path)
    text = _sam_text()
    if container == "sam":
        path = tmp_path / "input.sam"
        path.write_bytes(text)
    elif container == "sam.gz":
        path = tmp_path / "input.sam.gz"
        path.write_bytes(gzip.compress(text))
    else:
        plain = tmp_path / "input.sam"
        plain.write_bytes(text)
        pysam.tabix_compress(str(plain), str(tmp_path / "input.bgzf.sam.gz"))
        path = tmp_path / "input.bgzf.sam.gz"
    return path


@pytest.mark.parametrize("container", ["bam", "sam", "sam.gz", "bgzf"])
def test_sorts_records_exactly_as_samtools_sort(samtools, tmp_path, container, engine):
    src = _inputs(tmp_path, container)
    result = _sort(src, tmp_path)
    assert _tool(samtools, "view", result.files[0]) == _oracle_sorted_records(
        samtools, src, tmp_path
    )


def test_counts_records_in_and_out(tmp_path):
    src = _bam(tmp_path)
    result = _sort(src, tmp_path)
    assert result.records_in == result.records_out == 360


def test_output_passes_samtools_quickcheck(samtools, tmp_path):
    result = _sort(_inputs(tmp_path, "sam"), tmp_path)
    subprocess.run([samtools, "quickcheck", "-v", str(result.files[0])], check=True)


def test_output_header_declares_coordinate_order_without_pg(samtools, tmp_path):
    result = _sort(_bam(tmp_path), tmp_path)
    header = _tool(samtools, "view", "-H", "--no-PG", result.files[0])
    assert "SO:coordinate" in header.splitlines()[0]
    assert "@PG" not in header


def test_reports_container_contigs_and_mapping_counts(tmp_path):
    result = _sort(_inputs(tmp_path, "sam.gz"), tmp_path)
    meta = result.metadata
    assert (meta["input_format"], meta["input_compression"]) == ("sam", "gzip")
    assert (meta["contigs"], meta["mapped"], meta["unmapped"]) == (3, 300, 60)
    assert meta["sort_order"] == "coordinate"


def test_two_builds_of_one_input_are_byte_identical(tmp_path, engine):
    src = _bam(tmp_path)
    first = _sort(src, tmp_path, tag="a").files
    second = _sort(src, tmp_path, tag="b").files
    assert [f.read_bytes() for f in first] == [f.read_bytes() for f in second]


def test_both_engines_write_the_same_records(samtools, tmp_path, monkeypatch):
    src = _inputs(tmp_path, "sam.gz")
    monkeypatch.setenv("GENOFLOW_ENGINE", "htslib-cli")
    cli = _sort(src, tmp_path, tag="cli")
    monkeypatch.setenv("GENOFLOW_ENGINE", "pysam")
    wheel = _sort(src, tmp_path, tag="pysam")
    view = (samtools, "view", "-h", "--no-PG")
    assert _tool(*view, cli.files[0]) == _tool(*view, wheel.files[0])


def test_records_the_engine_and_its_tool_versions(tmp_path, engine):
    meta = _sort(_bam(tmp_path), tmp_path).metadata
    assert meta["engine"] == engine
    tool = "samtools" if engine == "htslib-cli" else "pysam"
    assert meta["engine_versions"][tool]


def test_auto_engine_falls_back_to_pysam_without_samtools_on_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("GENOFLOW_ENGINE", raising=False)
    assert _sort(_bam(tmp_path), tmp_path).metadata["engine"] == "pysam"


def test_cli_engine_refuses_to_run_without_samtools(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("GENOFLOW_ENGINE", "htslib-cli")
    with pytest.raises(ProcessingError, match="samtools is not on PATH") as caught:
        _sort(_bam(tmp_path), tmp_path)
    assert caught.value.stage == "sort"


def test_auto_engine_passes_over_a_samtools_older_than_1_10(tmp_path, monkeypatch):
    fake = _fake_samtools(tmp_path / "bin", sort_says="unused", version="1.9")
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("GENOFLOW_ENGINE", raising=False)
    assert _sort(_bam(tmp_path), tmp_path).metadata["engine"] == "pysam"


def test_cli_engine_refuses_a_samtools_older_than_1_10(tmp_path, monkeypatch):
    fake = _fake_samtools(tmp_path / "bin", sort_says="unused", version="1.9")
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("GENOFLOW_ENGINE", "htslib-cli")
    with pytest.raises(ProcessingError, match=r"below 1\.10"):
        _sort(_bam(tmp_path), tmp_path)


def test_rejects_an_unknown_engine_name(tmp_path, monkeypatch):
    monkeypatch.setenv("GENOFLOW_ENGINE", "turbo")
    with pytest.raises(ProcessingError, match="GENOFLOW_ENGINE"):
        _sort(_bam(tmp_path), tmp_path)


def test_a_failing_samtools_fails_the_step_with_its_message_and_leaves_nothing(
    tmp_path, monkeypatch
):
    fake = _fake_samtools(tmp_path / "bin", sort_says="[bam_sort_core] no space left on device")
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("GENOFLOW_ENGINE", "htslib-cli")
    src = _bam(tmp_path)
    with pytest.raises(ProcessingError) as caught:
        _sort(src, tmp_path)
    assert (caught.value.file, caught.value.stage) == (src.name, "sort")
    assert "no space left on device" in caught.value.message
    assert list((tmp_path / "out").iterdir()) == list((tmp_path / "work").iterdir()) == []


def test_writes_the_index_beside_the_sorted_bam(samtools, tmp_path, engine):
    result = _sort(_bam(tmp_path), tmp_path)
    assert [f.name for f in result.files] == ["sorted.bam", "sorted.bam.bai"]
    chr1 = int(_tool(samtools, "view", "-c", result.files[0], "chr1"))
    assert chr1 == query_index(result.files[0], name="x")["chr1"] > 0


def test_tiny_memory_cap_spills_runs_and_keeps_the_same_records(samtools, tmp_path, engine):
    src = _bam(tmp_path, count=30_000)
    spilled = _sort(src, tmp_path, memory=2 << 20, threads=2, tag="small")
    in_memory = _sort(src, tmp_path, memory=512 << 20, tag="large")
    assert spilled.metadata["spill_files"] > 0
    assert in_memory.metadata["spill_files"] == 0
    assert _tool(samtools, "view", spilled.files[0]) == _tool(samtools, "view", in_memory.files[0])


def test_splits_the_memory_cap_between_threads(tmp_path):
    result = _sort(_bam(tmp_path), tmp_path, memory=64 << 20, threads=4)
    assert result.metadata["memory_per_thread"] == 16 << 20
    assert result.metadata["threads"] == 4


def test_drops_threads_rather_than_exceeding_the_cap(tmp_path):
    result = _sort(_bam(tmp_path), tmp_path, memory=3 << 20, threads=8)
    assert result.metadata["threads"] == 3
    assert result.metadata["memory_per_thread"] == 1 << 20


def test_rejects_a_cap_below_one_thread_minimum(tmp_path):
    with pytest.raises(ValueError, match="below"):
        _sort(_bam(tmp_path), tmp_path, memory=512 << 10)


def test_leaves_no_temporary_files_in_work_dir(tmp_path):
    _sort(_bam(tmp_path, count=30_000), tmp_path, memory=1 << 20)
    assert list((tmp_path / "work").iterdir()) == []


def test_accepts_a_header_only_sam_with_no_records(tmp_path):
    src = tmp_path / "empty_records.sam"
    src.write_text(str(_header(CONTIGS)))
    result = _sort(src, tmp_path)
    assert (result.records_in, result.records_out) == (0, 0)


def test_keeps_non_utf8_bytes_in_records(samtools, tmp_path):
    src = tmp_path / "latin1.sam"
    line = b"r1\t0\tchr1\t5\t60\t10M\t*\t0\t0\tACGTACGTAC\tIIIIIIIIII\tCO:Z:caf\xe9\n"
    src.write_bytes(str(_header(CONTIGS)).encode() + line)
    result = _sort(src, tmp_path)
    done = subprocess.run([samtools, "view", result.files[0]], capture_output=True, check=True)
    assert b"CO:Z:caf\xe9" in done.stdout


def _garbled(tmp_path: Path) -> Path:
    path = tmp_path / "garbled.sam"
    path.write_bytes(_sam_text() + b"this is not a SAM line\n")
    return path


def _unknown_contig(tmp_path: Path) -> Path:
    path = tmp_path / "unknown_contig.sam"
    path.write_bytes(_sam_text() + b"x1\t0\tchrX\t5\t60\t10M\t*\t0\t0\tACGTACGTAC\t*\n")
    return path


def _unknown_mate_contig(tmp_path: Path) -> Path:
    path = tmp_path / "unknown_mate.sam"
    path.write_bytes(_sam_text() + b"x1\t1\tchr1\t5\t60\t10M\tchrZ\t9\t0\tACGTACGTAC\t*\n")
    return path


def _bam_without_sq(tmp_path: Path) -> Path:
    bare = tmp_path / "bare_header.sam"
    bare.write_text("@HD\tVN:1.6\n")
    path = tmp_path / "no_sq.bam"
    pysam.reheader(str(bare), str(_bam(tmp_path)), save_stdout=str(path))
    return path


def _truncated_gzip(tmp_path: Path) -> Path:
    data = gzip.compress(_sam_text())
    path = tmp_path / "truncated.sam.gz"
    path.write_bytes(data[: len(data) // 2])
    return path


def _bam_cut_at_block_boundary(tmp_path: Path) -> Path:
    path = tmp_path / "cut.bam"
    path.write_bytes(_bam(tmp_path).read_bytes()[:-28])
    return path


def _bam_cut_mid_block(tmp_path: Path) -> Path:
    data = _bam(tmp_path, count=3000).read_bytes()
    path = tmp_path / "cut_mid.bam"
    path.write_bytes(data[: len(data) // 2] + data[-28:])
    return path


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.bam"
    path.write_bytes(b"")
    return path


def _empty_gzip(tmp_path: Path) -> Path:
    path = tmp_path / "empty.sam.gz"
    path.write_bytes(gzip.compress(b""))
    return path


BAD_INPUTS = {
    "garbled SAM line": (_garbled, "line 365"),
    "RNAME absent from @SQ": (_unknown_contig, "chrX"),
    "RNEXT absent from @SQ": (_unknown_mate_contig, "chrZ"),
    "BAM without @SQ holding mapped reads": (_bam_without_sq, "no @SQ"),
    "truncated gzip": (_truncated_gzip, "truncated"),
    "BAM cut at a block boundary": (_bam_cut_at_block_boundary, "truncated BAM"),
    "BAM cut inside a block": (_bam_cut_mid_block, "failed"),
    "empty file": (_empty, "empty"),
    "empty gzip": (_empty_gzip, "neither a header nor records"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_rejects_bad_input_naming_file_and_stage(tmp_path, case, engine):
    make, words = BAD_INPUTS[case]
    src = make(tmp_path)
    with pytest.raises(ProcessingError) as caught:
        _sort(src, tmp_path)
    assert (caught.value.file, caught.value.stage) == (src.name, "sort")
    assert words in str(caught.value)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_leaves_out_and_work_dirs_empty_after_rejecting(tmp_path, case, engine):
    src = BAD_INPUTS[case][0](tmp_path)
    with pytest.raises(ProcessingError):
        _sort(src, tmp_path)
    assert list((tmp_path / "out").iterdir()) == list((tmp_path / "work").iterdir()) == []


def _long_contig_bam(tmp_path: Path) -> Path:
    """A contig past BAI's 2^29 reach, with reads placed beyond it."""
    header = _header(LONG_CONTIGS)
    reads = _reads(header, count=100)
    reads += [_read(header, f"far{i}", 1, CSI_THRESHOLD + 10 * i) for i in range(5)]
    return _write(tmp_path / "long.bam", header, reads)


def _indexed(tmp_path: Path, kind: str) -> tuple[Path, Result]:
    src = _long_contig_bam(tmp_path) if kind == "csi" else _bam(tmp_path)
    data = _sort(src, tmp_path, tag="-sorted").files[0]
    out = tmp_path / "indexed"
    out.mkdir()
    return data, index_alignments(data, out, threads=2, name=src.name)


def _unordered(tmp_path: Path, *, order: str = "coordinate") -> Path:
    header = _header(CONTIGS, order=order)
    reads = [_read(header, "a", 1, 10), _read(header, "b", 0, 99), _read(header, "c", 0, 20)]
    return _write(tmp_path / "unordered.bam", header, reads)


def _contigs_out_of_header_order(tmp_path: Path) -> Path:
    """Each contig's block is sorted, but chr2's comes first: samtools index accepts it."""
    header = _header(CONTIGS, order="coordinate")
    reads = [_read(header, "a", 1, 10), _read(header, "b", 0, 20), _read(header, "c", 0, 99)]
    return _write(tmp_path / "blocks.bam", header, reads)


UNSORTED_FOR_INDEX = {
    "header SO:unsorted": partial(_unordered, order="unsorted"),
    "positions decrease": _unordered,
    "contigs out of @SQ order": _contigs_out_of_header_order,
}


def test_indexes_short_contigs_with_bai(tmp_path, engine):
    _, result = _indexed(tmp_path, "bai")
    assert [f.name for f in result.files] == ["sorted.bam", "sorted.bam.bai"]
    assert result.metadata["index"] == "bai"


def test_indexes_with_csi_when_a_contig_reaches_two_to_the_29(tmp_path, engine):
    _, result = _indexed(tmp_path, "csi")
    assert [f.name for f in result.files] == ["sorted.bam", "sorted.bam.csi"]
    assert result.metadata["index"] == "csi"


def test_index_adopts_the_index_sort_wrote(tmp_path, engine):
    data, result = _indexed(tmp_path, "bai")
    assert result.metadata["index_built_by"] == "sort"
    assert result.files[1].read_bytes() == Path(f"{data}.bai").read_bytes()


def test_index_rebuilds_an_index_older_than_its_bam(tmp_path, engine):
    data = _sort(_bam(tmp_path), tmp_path, tag="-sorted").files[0]
    stale = Path(f"{data}.bai").stat().st_mtime_ns - 10**9
    os.utime(Path(f"{data}.bai"), ns=(stale, stale))
    out = tmp_path / "indexed"
    out.mkdir()
    result = index_alignments(data, out, threads=1, name="x")
    assert result.metadata["index_built_by"] == "index"
    assert result.records_out == 360


@pytest.mark.parametrize(("length", "kind"), [(CSI_THRESHOLD - 1, "bai"), (CSI_THRESHOLD, "csi")])
def test_switches_to_csi_exactly_at_two_to_the_29(tmp_path, length, kind):
    header = _header([("chr1", length)], order="coordinate")
    bam = _write(tmp_path / "edge.bam", header, [_read(header, "a", 0, 100)])
    out = tmp_path / "out"
    out.mkdir()
    assert index_alignments(bam, out, threads=1, name="edge.bam").metadata["index"] == kind


def test_index_places_the_unchanged_data_beside_it(tmp_path):
    data, result = _indexed(tmp_path, "bai")
    assert result.files[0].read_bytes() == data.read_bytes()


@pytest.mark.parametrize("kind", ["bai", "csi"])
def test_index_counts_every_record_including_unplaced_ones(tmp_path, kind):
    data, result = _indexed(tmp_path, kind)
    assert result.records_in == result.records_out == count_records(data, name="data")


@pytest.mark.parametrize("kind", ["bai", "csi"])
def test_samtools_idxstats_reads_the_index(samtools, tmp_path, kind):
    _, result = _indexed(tmp_path, kind)
    rows = [line.split("\t") for line in _tool(samtools, "idxstats", result.files[0]).splitlines()]
    assert rows[-1][0] == "*"
    assert sum(int(row[2]) + int(row[3]) for row in rows) == result.records_out


@pytest.mark.parametrize("kind", ["bai", "csi"])
def test_index_answers_region_queries_like_samtools_view(samtools, tmp_path, kind, engine):
    _, result = _indexed(tmp_path, kind)
    counts = query_index(result.files[0].parent, name="x")
    expected = {c: int(_tool(samtools, "view", "-c", result.files[0], c)) for c in counts}
    assert counts == expected


@pytest.mark.parametrize("kind", ["bai", "csi"])
def test_query_counts_sum_to_the_record_total(tmp_path, kind):
    _, result = _indexed(tmp_path, kind)
    counts = query_index(result.files[0].parent, name="x")
    assert counts["*"] > 0
    assert sum(counts.values()) == result.records_out


def test_indexes_a_bam_already_in_out_dir_without_losing_it(tmp_path):
    data = _sort(_unordered(tmp_path, order="unsorted"), tmp_path).files[0]
    result = index_alignments(data, data.parent, threads=1, name="x")
    assert [f.name for f in result.files] == ["sorted.bam", "sorted.bam.bai"]
    assert result.records_out == 3


def test_query_accepts_the_bam_path_next_to_its_index(tmp_path):
    _, result = _indexed(tmp_path, "bai")
    assert query_index(result.files[0], name="x") == query_index(result.files[0].parent, name="x")


def test_query_rejects_a_bam_without_index(tmp_path):
    data, index = _sort(_bam(tmp_path), tmp_path).files
    index.unlink()
    with pytest.raises(ProcessingError) as caught:
        query_index(data, name="plain.bam")
    assert (caught.value.file, caught.value.stage) == ("plain.bam", "query")


@pytest.mark.parametrize("case", list(UNSORTED_FOR_INDEX))
def test_rejects_indexing_a_bam_not_in_coordinate_order(tmp_path, case, engine):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ProcessingError, match="coordinate") as caught:
        index_alignments(UNSORTED_FOR_INDEX[case](tmp_path), out, threads=1, name="u.bam")
    assert (caught.value.file, caught.value.stage) == ("u.bam", "index")


@pytest.mark.parametrize("case", list(UNSORTED_FOR_INDEX))
def test_leaves_out_dir_empty_when_indexing_fails(tmp_path, case):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ProcessingError):
        index_alignments(UNSORTED_FOR_INDEX[case](tmp_path), out, threads=1, name="u.bam")
    assert list(out.iterdir()) == []


def test_rejects_indexing_a_truncated_bam(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ProcessingError, match="truncated BAM"):
        index_alignments(_bam_cut_at_block_boundary(tmp_path), out, threads=1, name="cut.bam")


def test_check_accepts_the_sorted_output(tmp_path):
    data = _sort(_bam(tmp_path), tmp_path).files[0]
    assert check_sorted(data, name="x") == SortCheck(records=360, ordered=True)


def test_check_names_the_first_read_out_of_position(tmp_path):
    check = check_sorted(_unordered(tmp_path), name="x")
    assert not check.ordered
    assert check.problem == "record 2 (b): chr1:100 after chr2:11"


def test_check_detects_a_mapped_read_after_unmapped_ones(tmp_path):
    header = _header(CONTIGS, order="coordinate")
    reads = [_read(header, "u", -1, -1, 4), _read(header, "m", 0, 5)]
    check = check_sorted(_write(tmp_path / "late.bam", header, reads), name="x")
    assert check.problem == "record 2 (m): chr1:6 after *"


def test_check_detects_a_header_without_coordinate_order(tmp_path):
    header = _header(CONTIGS, order="queryname")
    check = check_sorted(_write(tmp_path / "q.bam", header, [_read(header, "a", 0, 5)]), name="x")
    assert (check.ordered, check.problem) == (
        False,
        "header declares SO:queryname, not SO:coordinate",
    )


def test_check_rejects_a_truncated_bam(tmp_path):
    with pytest.raises(ProcessingError) as caught:
        check_sorted(_bam_cut_at_block_boundary(tmp_path), name="cut.bam")
    assert (caught.value.file, caught.value.stage) == ("cut.bam", "check")


@pytest.mark.parametrize("container", ["bam", "sam", "sam.gz", "bgzf"])
def test_counts_records_of_every_container(tmp_path, container):
    assert count_records(_inputs(tmp_path, container), threads=2, name="x") == 360


def test_count_rejects_a_truncated_bam(tmp_path):
    with pytest.raises(ProcessingError) as caught:
        count_records(_bam_cut_at_block_boundary(tmp_path), name="cut.bam")
    assert (caught.value.file, caught.value.stage) == ("cut.bam", "count")
