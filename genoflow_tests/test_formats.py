"""Format names, families, detection by name and by content."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pybigtools
import pysam
import pytest

from genoflow.core.errors import FormatError, ProcessingError
from genoflow.core.formats import (
    FORMAT_SUFFIX,
    FORMATS,
    TABIX_PRESET,
    detect,
    family_of,
    format_from_name,
    normalize_format,
    sniff,
    verify_bgzf_complete,
)

VCF = (
    b"##fileformat=VCFv4.2\n"
    b"#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
    b"chr1\t5\t.\tA\tC\t.\t.\t.\n"
)
SAM = b"@SQ\tSN:chr1\tLN:1000\nr1\t0\tchr1\t5\t60\t4M\t*\t0\t0\tACGT\tIIII\n"
BGZF_EOF_LEN = 28


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def write_bgzf(path: Path, data: bytes) -> Path:
    plain = write(path.with_name(path.name + ".plain"), data)
    pysam.tabix_compress(str(plain), str(path), force=True)
    return path


def write_bam(path: Path) -> Path:
    header = {"HD": {"VN": "1.6", "SO": "unsorted"}, "SQ": [{"SN": "chr1", "LN": 1000}]}
    with pysam.AlignmentFile(str(path), "wb", header=header) as bam:
        read = pysam.AlignedSegment(bam.header)
        read.query_name = "r1"
        read.reference_id = 0
        read.reference_start = 4
        read.cigarstring = "4M"
        read.query_sequence = "ACGT"
        read.query_qualities = pysam.qualitystring_to_array("IIII")
        bam.write(read)
    return path


def write_bigbed(path: Path) -> Path:
    """Write a real bigBed (pybigtools picks the writer from the .bb/.bigBed suffix)."""
    pybigtools.open(str(path), "w").write({"chr1": 1000}, [("chr1", 0, 10, "a\t0\t+")])
    return path


def write_bigwig(path: Path) -> Path:
    """Write a real bigWig (pybigtools picks the writer from the .bw/.bigWig suffix)."""
    pybigtools.open(str(path), "w").write({"chr1": 1000}, [("chr1", 0, 10, 1.5)])
    return path


def with_extra_subfield_first(block_file: Path, out: Path) -> Path:
    """Rewrite a BGZF file's first block with another gzip subfield ahead of ``BC``."""
    data = block_file.read_bytes()
    xlen = struct.unpack_from("<H", data, 10)[0]
    extra = b"XY\x02\x00ab" + data[12 : 12 + xlen]
    header = data[:10] + struct.pack("<H", len(extra)) + extra
    return write(out, header + data[12 + xlen :])


# -- names and tables ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_normalize_format_accepts_canonical_names_in_any_case(fmt: str) -> None:
    assert normalize_format(fmt.upper()) == fmt
    assert normalize_format(f" {fmt.lower()} ") == fmt


@pytest.mark.parametrize(
    ("alias", "expected"),
    [
        ("gff", "gff3"),
        ("GFF", "gff3"),
        ("bb", "bigBed"),
        ("bigbed", "bigBed"),
        ("bw", "bigWig"),
        ("BigWig", "bigWig"),
        ("narrowpeak", "narrowPeak"),
        ("broadpeak", "broadPeak"),
        ("bed3", "bed"),
        ("bed12", "bed"),
        ("BED6+4", "bed"),
    ],
)
def test_normalize_format_maps_aliases(alias: str, expected: str) -> None:
    assert normalize_format(alias) == expected


@pytest.mark.parametrize("value", ["bed2", "bed13", "fasta", "", "vcf.gz"])
def test_normalize_format_rejects_unknown_names_listing_known_ones(value: str) -> None:
    with pytest.raises(FormatError) as caught:
        normalize_format(value)
    assert repr(value) in str(caught.value)
    assert "narrowPeak" in str(caught.value)
    assert "bigWig" in str(caught.value)


@pytest.mark.parametrize(
    ("fmt", "family"),
    [
        ("sam", "alignments"),
        ("bam", "alignments"),
        *[(fmt, "intervals") for fmt in ("vcf", "bed", "gff3", "gtf", "narrowPeak")],
        *[(fmt, "intervals") for fmt in ("broadPeak", "bigBed")],
        ("csv", "passthrough"),
        ("tsv", "passthrough"),
        ("bigWig", "passthrough"),
    ],
)
def test_family_of_assigns_each_format_its_family(fmt: str, family: str) -> None:
    assert family_of(fmt) == family


def test_format_suffix_table_is_exact() -> None:
    assert FORMAT_SUFFIX == {
        "sam": "sam",
        "bam": "bam",
        "vcf": "vcf",
        "bed": "bed",
        "gff3": "gff3",
        "gtf": "gtf",
        "narrowPeak": "narrowPeak",
        "broadPeak": "broadPeak",
        "bigBed": "bb",
        "csv": "csv",
        "tsv": "tsv",
        "bigWig": "bw",
    }


def test_tabix_presets_cover_exactly_the_interval_formats() -> None:
    assert TABIX_PRESET == {
        "vcf": "vcf",
        "bed": "bed",
        "narrowPeak": "bed",
        "broadPeak": "bed",
        "bigBed": "bed",
        "gff3": "gff",
        "gtf": "gff",
    }
    assert set(TABIX_PRESET) == {fmt for fmt in FORMATS if family_of(fmt) == "intervals"}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.sam", "sam"),
        ("a.BAM", "bam"),
        ("a.vcf.gz", "vcf"),
        ("a.vcf.bgz", "vcf"),
        ("a.bed.bgzf", "bed"),
        ("a.b.gff3", "gff3"),
        ("a.gff.gz", "gff3"),
        ("a.gtf", "gtf"),
        ("peaks.narrowPeak.gz", "narrowPeak"),
        ("peaks.broadpeak", "broadPeak"),
        ("a.bb", "bigBed"),
        ("a.bigBed", "bigBed"),
        ("a.csv", "csv"),
        ("a.TSV.GZ", "tsv"),
        ("a.bw", "bigWig"),
        ("a.bigwig", "bigWig"),
    ],
)
def test_format_from_name_reads_the_suffix(name: str, expected: str) -> None:
    assert format_from_name(name) == expected


@pytest.mark.parametrize("name", ["a.txt", "a.vcf.gz.gz", "vcf", ".vcf", "a.gz", "a.fa", "a"])
def test_format_from_name_returns_none_for_unknown_names(name: str) -> None:
    assert format_from_name(name) is None


# -- sniffing --------------------------------------------------------------------------------


def test_sniff_reports_an_empty_file(tmp_path: Path) -> None:
    assert sniff(write(tmp_path / "a.vcf", b"")).container == "empty"


def test_sniff_reports_plain_text(tmp_path: Path) -> None:
    sniffed = sniff(write(tmp_path / "a.vcf", VCF))
    assert (sniffed.container, sniffed.binary, sniffed.bgzf_eof) == ("plain", False, None)


def test_sniff_keeps_latin1_text_as_text(tmp_path: Path) -> None:
    sniffed = sniff(write(tmp_path / "a.vcf", VCF + b"chr1\t9\t.\tA\tC\t.\t.\tNOTE=caf\xe9\n"))
    assert not sniffed.binary


def test_sniff_reports_nul_bytes_as_binary(tmp_path: Path) -> None:
    assert sniff(write(tmp_path / "a.vcf", VCF + b"\x00\x01\x02")).binary


def test_sniff_tells_plain_gzip_from_bgzf(tmp_path: Path) -> None:
    sniffed = sniff(write(tmp_path / "a.vcf.gz", gzip.compress(VCF)))
    assert (sniffed.container, sniffed.binary, sniffed.bgzf_eof) == ("gzip", False, None)


def test_sniff_recognises_bgzf_with_its_eof_block(tmp_path: Path) -> None:
    sniffed = sniff(write_bgzf(tmp_path / "a.vcf.gz", VCF))
    assert (sniffed.container, sniffed.is_bam, sniffed.bgzf_eof) == ("bgzf", False, True)
    assert not sniffed.binary


def test_sniff_finds_the_bc_subfield_after_another_subfield(tmp_path: Path) -> None:
    bgzf = write_bgzf(tmp_path / "a.vcf.gz", VCF)
    reordered = with_extra_subfield_first(bgzf, tmp_path / "b.vcf.gz")
    assert gzip.decompress(reordered.read_bytes()) == VCF
    assert sniff(reordered).container == "bgzf"


def test_sniff_does_not_take_a_gzip_extra_field_without_bc_for_bgzf(tmp_path: Path) -> None:
    bgzf = write_bgzf(tmp_path / "a.vcf.gz", VCF).read_bytes()
    renamed = bgzf[:12] + b"XC" + bgzf[14:]  # same layout, subfield id no longer BC
    path = write(tmp_path / "b.vcf.gz", renamed)
    assert gzip.decompress(path.read_bytes()) == VCF
    assert sniff(path).container == "gzip"


def test_sniff_recognises_bam(tmp_path: Path) -> None:
    sniffed = sniff(write_bam(tmp_path / "a.bam"))
    assert (sniffed.container, sniffed.is_bam, sniffed.bgzf_eof) == ("bgzf", True, True)


def test_sniff_reports_a_truncated_bgzf_file(tmp_path: Path) -> None:
    data = write_bam(tmp_path / "a.bam").read_bytes()
    sniffed = sniff(write(tmp_path / "cut.bam", data[:-BGZF_EOF_LEN]))
    assert (sniffed.container, sniffed.bgzf_eof) == ("bgzf", False)


def test_sniff_recognises_a_real_bigbed(tmp_path: Path) -> None:
    assert sniff(write_bigbed(tmp_path / "a.bb")).container == "bigbed"


def test_sniff_recognises_a_real_bigwig(tmp_path: Path) -> None:
    assert sniff(write_bigwig(tmp_path / "a.bw")).container == "bigwig"


@pytest.mark.parametrize(
    ("magic", "container"),
    [
        (struct.pack(">I", 0x8789F2EB), "bigbed"),
        (struct.pack("<I", 0x8789F2EB), "bigbed"),
        (struct.pack(">I", 0x888FFC26), "bigwig"),
        (struct.pack("<I", 0x888FFC26), "bigwig"),
    ],
)
def test_sniff_accepts_bbi_magic_in_either_byte_order(
    tmp_path: Path, magic: bytes, container: str
) -> None:
    assert sniff(write(tmp_path / "a.bin", magic + bytes(60))).container == container


def test_sniff_reports_corrupt_gzip_data(tmp_path: Path) -> None:
    data = gzip.compress(VCF * 50)
    path = write(tmp_path / "a.vcf.gz", data[:10] + b"\xff" * 40 + data[50:])
    assert sniff(path).problem


def test_sniffed_warns_about_a_bgz_name_on_plain_gzip(tmp_path: Path) -> None:
    sniffed = sniff(write(tmp_path / "a.vcf.bgz", gzip.compress(VCF)))
    assert "plain gzip" in (sniffed.warning("a.vcf.bgz") or "")
    assert sniffed.warning("a.vcf.gz") is None


# -- detect ----------------------------------------------------------------------------------


def test_detect_uses_the_name(tmp_path: Path) -> None:
    assert detect(write(tmp_path / "x", VCF), name="calls.VCF") == "vcf"


def test_detect_prefers_the_declared_format_over_the_name(tmp_path: Path) -> None:
    path = write(tmp_path / "x", b"chr1\t1\t5\tp\t0\t.\t1\t2\t3\t4\n")
    assert detect(path, name="peaks.bed", declared="narrowpeak") == "narrowPeak"


def test_detect_accepts_a_declared_format_when_the_name_has_none(tmp_path: Path) -> None:
    assert detect(write(tmp_path / "x", VCF), name="calls.txt", declared="VCF") == "vcf"


def test_detect_fails_when_neither_name_nor_declaration_gives_a_format(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="unknown format") as caught:
        detect(write(tmp_path / "x", VCF), name="calls.txt")
    assert (caught.value.file, caught.value.stage) == ("calls.txt", "detect")


def test_detect_rejects_an_unknown_declared_format(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="fasta"):
        detect(write(tmp_path / "x", VCF), name="calls.vcf", declared="fasta")


def test_detect_accepts_a_real_bam(tmp_path: Path) -> None:
    assert detect(write_bam(tmp_path / "x"), name="reads.bam") == "bam"


def test_detect_rejects_text_named_bam(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="plain text") as caught:
        detect(write(tmp_path / "x", SAM), name="reads.bam")
    assert (caught.value.file, caught.value.stage) == ("reads.bam", "detect")


def test_detect_rejects_bgzf_text_named_bam(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="BGZF-compressed text"):
        detect(write_bgzf(tmp_path / "x", SAM), name="reads.bam")


def test_detect_rejects_bam_named_sam_and_suggests_bam(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="BAM") as caught:
        detect(write_bam(tmp_path / "x"), name="reads.sam")
    assert "bam" in caught.value.hint


@pytest.mark.parametrize("pack", ["plain", "gzip", "bgzf"])
def test_detect_accepts_sam_as_plain_or_compressed_text(tmp_path: Path, pack: str) -> None:
    path = tmp_path / "x"
    if pack == "bgzf":
        write_bgzf(path, SAM)
    else:
        write(path, SAM if pack == "plain" else gzip.compress(SAM))
    assert detect(path, name="reads.sam") == "sam"


def test_detect_accepts_bgzf_vcf(tmp_path: Path) -> None:
    assert detect(write_bgzf(tmp_path / "x", VCF), name="calls.vcf.gz") == "vcf"


def test_detect_accepts_plain_gzip_named_bgz(tmp_path: Path) -> None:
    assert detect(write(tmp_path / "x", gzip.compress(VCF)), name="calls.vcf.bgz") == "vcf"


def test_detect_accepts_a_real_bigbed(tmp_path: Path) -> None:
    assert detect(write_bigbed(tmp_path / "x.bb"), name="peaks.bb") == "bigBed"


def test_detect_accepts_a_real_bigwig(tmp_path: Path) -> None:
    assert detect(write_bigwig(tmp_path / "x.bw"), name="signal.bigWig") == "bigWig"


def test_detect_rejects_bigbed_content_declared_bed(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="bigBed"):
        detect(write_bigbed(tmp_path / "x.bb"), name="peaks.bb", declared="bed")


def test_detect_rejects_text_named_bigbed(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="plain text"):
        detect(write(tmp_path / "x", b"chr1\t1\t5\n"), name="peaks.bb")


def test_detect_rejects_bigwig_magic_named_bigbed(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="bigWig"):
        detect(write_bigwig(tmp_path / "x.bw"), name="peaks.bigBed")


def test_detect_rejects_binary_content_named_vcf(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="binary data") as caught:
        detect(write(tmp_path / "x", bytes(range(256)) * 8), name="calls.vcf")
    assert caught.value.file == "calls.vcf"


def test_detect_rejects_gzip_compressed_binary_named_vcf(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="gzip-compressed binary data"):
        detect(write(tmp_path / "x", gzip.compress(bytes(range(256)) * 8)), name="calls.vcf.gz")


def test_detect_rejects_corrupt_gzip(tmp_path: Path) -> None:
    data = gzip.compress(VCF * 50)
    path = write(tmp_path / "x", data[:10] + b"\xff" * 40 + data[50:])
    with pytest.raises(FormatError, match="corrupt gzip"):
        detect(path, name="calls.vcf.gz")


@pytest.mark.parametrize("fmt", FORMATS)
def test_detect_rejects_an_empty_file_for_every_format(tmp_path: Path, fmt: str) -> None:
    with pytest.raises(FormatError, match="file is empty"):
        detect(write(tmp_path / "x", b""), name="input", declared=fmt)


@pytest.mark.parametrize("name", ["table.csv", "table.tsv.gz"])
def test_detect_passes_text_tables_through(tmp_path: Path, name: str) -> None:
    data = b"a,b\n1,2\n"
    path = write(tmp_path / "x", gzip.compress(data) if name.endswith(".gz") else data)
    assert detect(path, name=name) == format_from_name(name)


# -- BGZF completeness -----------------------------------------------------------------------


def test_verify_bgzf_complete_accepts_a_whole_file(tmp_path: Path) -> None:
    verify_bgzf_complete(write_bgzf(tmp_path / "a.vcf.gz", VCF), name="a.vcf.gz", stage="stage")


def test_verify_bgzf_complete_rejects_a_file_without_eof_block(tmp_path: Path) -> None:
    data = write_bam(tmp_path / "a.bam").read_bytes()
    cut = write(tmp_path / "cut.bam", data[:-BGZF_EOF_LEN])
    with pytest.raises(ProcessingError, match="truncated BGZF: no EOF block") as caught:
        verify_bgzf_complete(cut, name="reads.bam", stage="stage")
    assert (caught.value.file, caught.value.stage) == ("reads.bam", "stage")


def test_verify_bgzf_complete_rejects_plain_gzip(tmp_path: Path) -> None:
    path = write(tmp_path / "a.vcf.gz", gzip.compress(VCF))
    with pytest.raises(ProcessingError, match="not BGZF"):
        verify_bgzf_complete(path, name="a.vcf.gz", stage="sort")
