"""Hostile and malformed input, end to end through ``genoflow run``: a bad file fails alone.

One ``genoflow run`` reads a few manifests holding every case beside good files, and each case
is then checked against its own row of ``--json`` and of stderr. A case's outcome is one of:

- :class:`Refused`: the manifest row is invalid, reported as ``[manifest] invalid row FILE:LINE:
  reason``; nothing of it is registered or built;
- :class:`Fails`: the row is valid, but asset ``asset`` fails with ``[stage] name: reason —
  hint``; no folder (and no temp folder) exists for that asset or any after it. When ``sorted``
  or ``index`` fails, the ``source`` artifact stays: it is the verified copy of exactly the bytes
  the manifest names (md5 and size checked), not a product of the bad content, and keeping it
  spares a re-download once the processor is fixed;
- :class:`Builds`: input that looks hostile but is valid and documented as accepted (CRLF line
  ends, a manifest BOM, a GFF3 ``##FASTA`` section, plain gzip named ``.bgz``, an upper-case
  md5, unicode names, Latin-1 bytes in records).

Fuzzing the format detector and the path rules (cache keys, location paths) follows: anything
other than the project's own error type is a failure.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pysam
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genoflow.build.steps import CHAINS, key_for
from genoflow.core import formats
from genoflow.core.errors import GenoflowError, StorageError
from genoflow.storage.cache import Cache
from genoflow.storage.datamanager import DataManager
from genoflow.storage.gcs import GcsLocation
from genoflow.storage.locations import LocalLocation
from genoflow.storage.registry import Registry
from genoflow.storage.registry import replicas as replica_table
from genoflow.storage.upkeep import ReplicaUpkeep

from .conftest import DATA
from .support.artifacts import RELPATH, publish_artifact
from .support.checksums import md5_hex
from .support.gcs_emulator import GcsEmulator, gcs_emulator  # noqa: F401
from .support.signed_url_server import SignedUrlServer

pytestmark = pytest.mark.system  # starts a server (see pyproject markers)

# ruff: noqa: F811 - pytest fixtures imported from their modules

DEMO = DATA / "manifests" / "demo"
VCF_HEAD = b"##fileformat=VCFv4.2\n"
CHROM_LINE = b"#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"


# --- expected outcomes ----------------------------------------------------------------------


@dataclass(frozen=True)
class Refused:
    """The row is refused while reading the manifest; ``needle`` is part of the reason."""

    needle: str


@dataclass(frozen=True)
class Fails:
    """The row is valid; ``asset`` fails at ``stage`` with ``needle`` in the message."""

    asset: str
    stage: str
    needle: str


@dataclass(frozen=True)
class Builds:
    """Valid input: every asset is built; ``check`` (if any) inspects the index artifact."""

    check: Callable[[Path], None] | None = None


Outcome = Refused | Fails | Builds


@dataclass
class Entry:
    """One manifest row of a case, as written."""

    name: str
    uri: str
    md5: str
    manifest: str = "main.tsv"
    format: str = ""
    size: str = ""


@dataclass
class Context:
    """Where the cases' files go, and the servers remote cases read from."""

    folder: Path
    server: SignedUrlServer
    bucket: str
    written: dict[str, Entry] = field(default_factory=dict)

    def put(self, name: str, data: bytes) -> Entry:
        """Write a local file named ``name`` and return its row, md5 and all."""
        (self.folder / name).write_bytes(data)
        return self._unique(Entry(name, name, md5_hex(data)))

    def serve(self, name: str, data: bytes, **fault: Any) -> Entry:
        self.server.put(name, data)
        if fault:
            self.server.fault(name, **fault)
        return self._unique(Entry(name, self.server.url(name), md5_hex(data)))

    def alias(self, name: str, of: str) -> Entry:
        """Another row naming a file already written: the same source, so one run builds both."""
        original = next(entry for entry in self.written.values() if entry.name == of)
        return Entry(name, original.uri, original.md5)

    def _unique(self, entry: Entry) -> Entry:
        # Rows sharing an md5 are replicas of one source: cases must not merge by accident.
        assert entry.md5 not in self.written, f"{entry.name} has the content of another case"
        self.written[entry.md5] = entry
        return entry


# --- inputs ---------------------------------------------------------------------------------


def vcf(records: list[bytes], *, tag: str, contigs: tuple[bytes, ...] = ()) -> bytes:
    """A VCF whose ``##source`` line (the case's tag) makes its md5 unique to one case."""
    header = VCF_HEAD + b"##source=%s\n" % tag.encode()
    header += b"".join(b"##contig=<ID=%s>\n" % contig for contig in contigs)
    return header + CHROM_LINE + b"".join(record + b"\n" for record in records)


def vcf_records(count: int, contig: bytes = b"chr1") -> list[bytes]:
    return [b"%s\t%d\t.\tA\tG\t50\tPASS\tDP=%d" % (contig, 100 + i * 7, i) for i in range(count)]


def bed(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def bgzf(tmp: Path, data: bytes) -> bytes:
    path = tmp / "blocks.gz"
    with pysam.BGZFile(str(path), "wb") as out:
        out.write(data)
    packed = path.read_bytes()
    path.unlink()
    return packed


def sam(header: bytes, reads: list[bytes]) -> bytes:
    return header + b"".join(read + b"\n" for read in reads)


def read_line(name: bytes, contig: bytes, pos: int) -> bytes:
    return b"%s\t0\t%s\t%d\t60\t4M\t*\t0\t0\tACGT\tIIII" % (name, contig, pos)


def bam_without_sq(path: Path) -> bytes:
    """An unaligned BAM: unmapped reads and no @SQ line."""
    with pysam.AlignmentFile(str(path), "wb", header={"HD": {"VN": "1.6"}}) as out:
        for i in range(3):
            read = pysam.AlignedSegment(out.header)
            read.query_name, read.flag = f"u{i}", 4
            read.query_sequence, read.query_qualities = "ACGT", pysam.qualitystring_to_array("IIII")
            out.write(read)
    data = path.read_bytes()
    path.unlink()
    return data


# --- the cases ------------------------------------------------------------------------------


Make = Callable[[Context], list[Entry]]


@dataclass(frozen=True)
class Case:
    """One hostile input: how to write its row(s) and file(s), and what must happen."""

    id: str
    make: Make
    outcome: Outcome


def _file(name: str, data: bytes, **fields: str) -> Make:
    def make(ctx: Context) -> list[Entry]:
        entry = ctx.put(name, data)
        for key, value in fields.items():
            setattr(entry, key, value)
        return [entry]

    return make


def _truncated_bgzf(ctx: Context) -> list[Entry]:
    packed = bgzf(ctx.folder, vcf(vcf_records(20000), tag="cut"))
    return [ctx.put("truncated_mid_block.vcf.gz", packed[: len(packed) * 2 // 3])]


def _bgzf_without_eof(ctx: Context) -> list[Entry]:
    packed = bgzf(ctx.folder, vcf(vcf_records(50), tag="no-eof"))
    assert packed.endswith(formats.BGZF_EOF)
    return [ctx.put("no_eof_block.vcf.gz", packed[: -len(formats.BGZF_EOF)])]


def _bigbed(name: str, damage: Callable[[bytes], bytes]) -> Make:
    return lambda ctx: [ctx.put(name, damage((DEMO / "ccres.bb").read_bytes()))]


def _checked_against(name: str, data: bytes, **wrong: str) -> Make:
    """A good file whose row gives another md5 or size."""

    def make(ctx: Context) -> list[Entry]:
        entry = ctx.put(name, data)
        entry.md5 = wrong.get("md5", entry.md5)
        entry.size = wrong.get("size", entry.size)
        return [entry]

    return make


def _not_a_file(name: str, uri: str, *, folder: bool) -> Make:
    def make(ctx: Context) -> list[Entry]:
        if folder:
            (ctx.folder / uri).mkdir()
        return [Entry(name, uri, md5_hex(name.encode()))]

    return make


def _duplicate_names(ctx: Context) -> list[Entry]:
    first = ctx.put("dup_a.bed", bed([b"chr1\t1\t2\tfirst"]))
    second = ctx.put("dup_b.bed", bed([b"chr1\t3\t4\tsecond"]))
    first.name = second.name = "duplicate.bed"
    return [first, second]


def _row(name: str, *, manifest: str = "main.tsv", **fields: str) -> Make:
    """A row refused before any file is read (the file itself is a good one)."""

    def make(ctx: Context) -> list[Entry]:
        tag = md5_hex(name.encode())[:12]
        entry = ctx.put(f"for_{tag}.bed", bed([b"chr1\t5\t9\t%s" % tag.encode()]))
        entry.name, entry.manifest = name, manifest
        for key, value in fields.items():
            setattr(entry, key, value)
        return [entry]

    return make


def _alias(name: str, *, of: str, manifest: str = "main.tsv", upper: bool = False) -> Make:
    def make(ctx: Context) -> list[Entry]:
        entry = ctx.alias(name, of=of)
        entry.manifest = manifest
        entry.md5 = entry.md5.upper() if upper else entry.md5
        return [entry]

    return make


def _remote(name: str, *, url: Callable[[Context], str] | None = None, **fault: Any) -> Make:
    def make(ctx: Context) -> list[Entry]:
        if "redirect" in fault:
            fault["redirect"] = fault["redirect"].format(port=ctx.server.port)
        entry = ctx.serve(name, vcf(vcf_records(4), tag=name), **fault)
        entry.uri = url(ctx) if url else entry.uri
        return [entry]

    return make


def _gs_missing(name: str, *, with_md5: bool) -> Make:
    def make(ctx: Context) -> list[Entry]:
        return [Entry(name, f"gs://{ctx.bucket}/nowhere/{name}", md5_hex(name.encode()) * with_md5)]

    return make


def _index_data(index_folder: Path) -> bytes:
    return gzip.decompress(next(index_folder.glob("*.gz")).read_bytes())


def _no_fasta_left(index_folder: Path) -> None:
    text = _index_data(index_folder)
    assert b"##FASTA" not in text and b">chr1" not in text


def _no_carriage_return(index_folder: Path) -> None:
    assert b"\r" not in _index_data(index_folder)


GFF3_BODY = b"chr1\tsrc\tgene\t100\t200\t.\t+\t.\tID=g1\nchr1\tsrc\tgene\t50\t80\t.\t-\t.\tID=g2\n"
SQ = b"@SQ\tSN:chr1\tLN:1000\n"

CASES = [
    # Damaged or mislabelled content.
    Case("truncated-bgzf", _truncated_bgzf, Fails("source", "stage", "truncated")),
    Case("bgzf-missing-eof-block", _bgzf_without_eof, Fails("source", "stage", "EOF block")),
    Case("wrong-md5", _checked_against("wrong_md5.vcf", vcf([], tag="md5"), md5=md5_hex(b"other")),
         Fails("source", "stage", "md5 is")),
    Case("size-mismatch", _checked_against("wrong_size.vcf", vcf([], tag="size"), size="1"),
         Fails("source", "stage", "size is")),
    Case("empty-file", _file("empty.vcf", b""), Fails("source", "detect", "empty")),
    Case("binary-named-vcf", _file("binary.vcf", bytes(range(256)) * 64),
         Fails("source", "detect", "binary")),
    Case("corrupt-gzip-named-bed-gz", _file("corrupt.bed.gz", b"\x1f\x8b\x08\x00" + b"\xff" * 99),
         Fails("source", "detect", "corrupt gzip")),
    Case("text-named-bam", _file("text.bam", b"not a BAM\n"), Fails("source", "detect", "bam")),
    Case("declared-format-contradicts-content",
         _file("declared_bam.vcf", vcf([], tag="declared"), format="bam"),
         Fails("source", "detect", "says bam")),
    Case("bigbed-bad-magic", _bigbed("bad_magic.bb", lambda d: b"\0\x11\x22\x33" + d[4:]),
         Fails("source", "detect", "bigBed")),
    Case("bigbed-cut-short", _bigbed("cut_short.bb", lambda d: d[: len(d) // 3]),
         Fails("sorted", "convert", "bigBed")),
    # Records that cannot be placed.
    Case("vcf-contig-missing-from-header",
         _file("contig_not_in_header.vcf",
               vcf([*vcf_records(2), *vcf_records(1, b"chrZ")], tag="ctg", contigs=(b"chr1",))),
         Fails("sorted", "parse", "not in the header")),
    Case("vcf-record-before-header",
         _file("no_chrom_line.vcf", VCF_HEAD + b"chr1\t5\t.\tA\tG\t1\tPASS\t.\n"),
         Fails("sorted", "parse", "#CHROM")),
    Case("vcf-non-numeric-position",
         _file("pos_not_a_number.vcf", vcf([b"chr1\tten\t.\tA\tG\t1\tPASS\t."], tag="nan")),
         Fails("sorted", "parse", "not an integer")),
    Case("bed-non-numeric-start", _file("start_nan.bed", bed([b"chr1\t1e3\t2000"])),
         Fails("sorted", "parse", "not an integer")),
    Case("bed-negative-start", _file("negative.bed", bed([b"chr1\t-5\t20"])),
         Fails("sorted", "parse", "negative")),
    Case("bed-reversed-interval", _file("reversed.bed", bed([b"chr1\t500\t100"])),
         Fails("sorted", "parse", "before start")),
    Case("gff3-reversed-interval",
         _file("reversed.gff3", b"##gff-version 3\nchr1\tsrc\tgene\t900\t100\t.\t+\t.\tID=x\n"),
         Fails("sorted", "parse", "before start")),
    Case("bed-too-few-columns", _file("two_columns.bed", bed([b"chr1\t100"])),
         Fails("sorted", "parse", "columns")),
    # An unaligned BAM (no @SQ, every read unmapped, as GATK writes them) is valid: built.
    Case("bam-without-sq", lambda ctx: [ctx.put("no_sq.bam", bam_without_sq(ctx.folder / "u.bam"))],
         Builds()),
    Case("sam-unknown-contig",
         _file("unknown_contig.sam", sam(SQ, [read_line(b"r1", b"chrQ", 10)])),
         Fails("sorted", "sort", "not an @SQ contig")),
    Case("sam-without-sq-with-mapped-reads",
         _file("mapped_no_sq.sam", sam(b"@HD\tVN:1.6\n", [read_line(b"r1", b"chr1", 10)])),
         Fails("sorted", "sort", "not an @SQ contig")),
    Case("sam-short-line", _file("short_line.sam", sam(SQ, [b"r1\t0\tchr1\t10"])),
         Fails("sorted", "sort", "11 tab-separated")),
    # Odd but valid content: accepted as documented.
    Case("plain-gzip-named-bgz",
         _file("plain_gzip.vcf.bgz", gzip.compress(vcf(vcf_records(30), tag="gz"))), Builds()),
    Case("vcf-crlf-line-endings",
         _file("crlf.vcf", vcf(vcf_records(20), tag="crlf").replace(b"\n", b"\r\n")),
         Builds(_no_carriage_return)),
    Case("gff3-fasta-section",
         _file("with_fasta.gff3", b"##gff-version 3\n" + GFF3_BODY + b"##FASTA\n>chr1\nACGT\n"),
         Builds(_no_fasta_left)),
    Case("vcf-latin1-bytes",
         _file("latin1.vcf", vcf([b"chr1\t5\t.\tA\tG\t1\tPASS\tNOTE=caf\xe9"], tag="latin1")),
         Builds()),
    # Sources that cannot be read.
    Case("missing-local-file", _not_a_file("missing.bed", "not_there.bed", folder=False),
         Fails("source", "stage", "not found")),
    Case("folder-as-source", _not_a_file("a_folder.bed", "a_folder.bed", folder=True),
         Fails("source", "stage", "folder")),
    Case("https-403", _remote("expired.vcf", url=lambda ctx: ctx.server.url("expired.vcf",
                                                                            expired=True)),
         Fails("source", "stage", "HTTP 403")),
    Case("https-404", _remote("gone.vcf", url=lambda ctx: ctx.server.url("never_served.vcf")),
         Fails("source", "stage", "HTTP 404")),
    Case("https-500", _remote("always_500.vcf", status=500, errors=10**6),
         Fails("source", "stage", "HTTP 500")),
    Case("https-short-body", _remote("short_body.vcf", short=True),
         Fails("source", "stage", "fewer bytes")),
    Case("redirect-to-another-host",
         _remote("redirected.vcf",
                 redirect="http://localhost:{port}/redirected.vcf?token=elsewhere"),
         Fails("source", "stage", "another host refused")),
    Case("gs-object-missing", _gs_missing("gs_missing.vcf", with_md5=True),
         Fails("source", "stage", "not found")),
    # Manifest rows.
    Case("gs-object-missing-without-md5", _gs_missing("gs_no_md5.vcf", with_md5=False),
         Refused("md5Hash")),
    Case("duplicate-names", _duplicate_names, Refused("conflicting md5s")),
    Case("name-with-dot-dot-slash", _row("../escape.bed"), Refused("path separator")),
    Case("name-with-slash", _row("sub/dir.bed"), Refused("path separator")),
    Case("name-dot-dot", _row(".."), Refused("starts with '.'")),
    Case("name-with-nul", _row("nul\x00byte.bed", manifest="names.json"),
         Refused("control character")),
    Case("name-with-newline", _row("new\nline.bed", manifest="names.json"),
         Refused("control character")),
    Case("md5-wrong-length", _row("short_md5.bed", md5="abc123"), Refused("malformed md5")),
    Case("md5-not-hex", _row("not_hex.bed", md5="z" * 32), Refused("malformed md5")),
    Case("unknown-format-by-name", _row("data.xyz", uri="data.xyz"), Refused("unknown format")),
    Case("unknown-format-declared", _row("declared.bed", format="cram"), Refused("unknown format")),
    Case("negative-size", _row("neg_size.bed", size="-3"), Refused("negative size")),
    Case("unsupported-scheme", _row("ftp.bed", uri="ftp://example.org/x.bed"),
         Refused("unsupported uri scheme")),
    Case("unicode-name", _alias("échantillon_α.bed", of="good.bed"), Builds()),
    Case("md5-upper-case", _alias("upper_md5.bed", of="good.bed", upper=True), Builds()),
    Case("manifest-with-bom", _alias("in_bom.bed", of="good.bed", manifest="bom.tsv"), Builds()),
    Case("manifest-with-crlf", _alias("in_crlf.bed", of="good.bed", manifest="crlf.csv"),
         Builds()),
]  # fmt: skip

GOOD = ("good.vcf", "good.bed", "good.csv")


def _good_files(ctx: Context) -> list[Entry]:
    return [
        ctx.put("good.vcf", vcf(vcf_records(40, b"chr7"), tag="good")),
        ctx.put("good.bed", bed([b"chr1\t%d\t%d" % (i * 10, i * 10 + 5) for i in range(50)])),
        ctx.put("good.csv", b"sample,value\nNA12878,1\n"),
    ]


# --- one run over every case ------------------------------------------------------------------


@dataclass
class Written:
    """A case's rows as written: (entry, manifest path, line)."""

    rows: list[tuple[Entry, Path, int]]


@dataclass
class Ran:
    """The outcome of the one ``genoflow run`` over every case."""

    home: Path
    result: subprocess.CompletedProcess[str]
    records: dict[str, dict[str, Any]]
    written: dict[str, Written]
    empty_manifest: Path


def _write_manifests(folder: Path, entries: list[Entry]) -> dict[str, Path]:
    """Write each manifest; return its path; every entry learns its line via ``_lines``."""
    by_manifest: dict[str, list[Entry]] = {}
    for entry in entries:
        by_manifest.setdefault(entry.manifest, []).append(entry)
    paths = {}
    for manifest, rows in by_manifest.items():
        path = folder / manifest
        paths[manifest] = path
        if manifest.endswith(".json"):
            items = [_fields(entry) for entry in rows]
            path.write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
            continue
        sep, newline = ("," if manifest.endswith(".csv") else "\t"), "\n"
        if manifest == "crlf.csv":
            newline = "\r\n"
        header = sep.join(["name", "uri", "md5", "format", "size"])
        lines = [header] + [sep.join(_fields(entry).values()) for entry in rows]
        text = newline.join(lines) + newline
        path.write_text(("\ufeff" if manifest == "bom.tsv" else "") + text, encoding="utf-8")
    return paths


def _fields(entry: Entry) -> dict[str, str]:
    return {
        "name": entry.name,
        "uri": entry.uri,
        "md5": entry.md5,
        "format": entry.format,
        "size": entry.size,
    }


def _line_of(entry: Entry, entries: list[Entry]) -> int:
    same = [other for other in entries if other.manifest == entry.manifest]
    index = next(i for i, other in enumerate(same) if other is entry)
    return index + 1 if entry.manifest.endswith(".json") else index + 2


def genoflow(home: Path, *args: str, env: dict[str, str] | None = None, **popen: Any) -> Any:
    """Run ``genoflow ARGS`` in a child process on its own home; returns the completed process."""
    full = {**os.environ, "GENOFLOW_HOME": str(home), "GENOFLOW_THREADS": "1", **(env or {})}
    full.pop("DAGSTER_HOME", None)
    command = [sys.executable, "-m", "genoflow.cli", *args]
    options = {"capture_output": True, "text": True, "timeout": 600, **popen}
    return subprocess.run(command, env=full, check=False, **options)


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory, gcs_emulator: GcsEmulator) -> Iterator[Ran]:
    """Every case and the good files through one ``genoflow run`` over several manifests."""
    folder = tmp_path_factory.mktemp("hostile")
    server = SignedUrlServer(tmp_path_factory.mktemp("served"))
    server.start()
    bucket = "hostile-inputs"
    gcs_emulator.create_bucket(bucket)
    try:
        ctx = Context(folder / "inputs", server, bucket)
        ctx.folder.mkdir()
        good = _good_files(ctx)
        written_entries = {case.id: case.make(ctx) for case in CASES}
        everything = [*good, *(e for entries in written_entries.values() for e in entries)]
        paths = _write_manifests(ctx.folder, everything)
        empty = ctx.folder / "empty.tsv"
        empty.write_text("name\turi\tmd5\n")
        home = folder / "home"
        env = {"STORAGE_EMULATOR_HOST": gcs_emulator.endpoint}
        manifests = [str(path) for path in paths.values()] + [str(empty)]
        result = genoflow(home, "run", *manifests, "--json", "--jobs", "2", env=env)
        records = {record["name"]: record for record in json.loads(result.stdout or "[]")}
        written = {
            case_id: Written([(e, paths[e.manifest], _line_of(e, everything)) for e in entries])
            for case_id, entries in written_entries.items()
        }
        yield Ran(home, result, records, written, empty)
    finally:
        server.stop()


# --- per-case checks --------------------------------------------------------------------------


def _artifact_folders(home: Path, md5: str) -> list[Path]:
    """Every published artifact folder (and any leftover temp folder) of one source md5."""
    root = home / "cache"
    return [p for p in root.glob(f"*/{md5[:2]}/{md5}/*/*")]


def _check_refused(ran: Ran, case_id: str, outcome: Refused) -> None:
    for entry, manifest, line in ran.written[case_id].rows:
        lines = [
            text
            for text in ran.result.stderr.splitlines()
            if text.startswith(f"genoflow: [manifest] invalid row {manifest}:")
        ]
        where = f"{manifest}:{'#' if manifest.suffix == '.json' else ''}{line}:"
        mine = [text for text in lines if where in text]
        assert mine, f"no refusal for {where} in:\n{ran.result.stderr}"
        assert outcome.needle in mine[0]
        assert entry.name not in ran.records
        registered = {row.name for row in Registry(ran.home / "registry.db").rows()}
        assert entry.name not in registered
        if len(entry.md5) == 32:
            assert _artifact_folders(ran.home, entry.md5.lower()) == []


def _check_fails(ran: Ran, case_id: str, outcome: Fails) -> None:
    (entry, _, _), *_ = ran.written[case_id].rows
    record = ran.records[entry.name]
    chain = CHAINS[record["family"]]
    failed_at = chain.index(outcome.asset)
    assert record["assets"][outcome.asset] == "failed", record
    assert all(record["assets"][a] == "built" for a in chain[:failed_at]), record
    assert all(record["assets"][a] in (None, "skipped") for a in chain[failed_at + 1 :]), record
    error = record["error"]
    assert error.startswith(f"[{outcome.stage}] "), error
    # A source that cannot be read is named by its path or (redacted) URL, the others by name.
    assert entry.name in error or entry.uri.split("?")[0].rsplit("/")[-1] in error, error
    assert outcome.needle in error, error
    _reason, _, hint = error.partition(" — ")
    assert hint.strip(), f"no hint on what to do: {error}"
    cache = Cache(ran.home / "cache")
    for asset in chain[failed_at:]:
        assert not cache.folder(key_for(record["family"], record["md5"], asset)).exists()
    leftovers = [p for p in _artifact_folders(ran.home, record["md5"]) if ".tmp." in str(p)]
    assert leftovers == []


def _check_builds(ran: Ran, case_id: str, outcome: Builds) -> None:
    (entry, _, _), *_ = ran.written[case_id].rows
    record = ran.records[entry.name]
    assert set(record["assets"].values()) == {"built"}, record
    assert record["error"] is None
    if outcome.check is not None:
        key = key_for(record["family"], record["md5"], "index")
        outcome.check(Cache(ran.home / "cache").folder(key))


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_hostile_input_fails_alone_and_publishes_nothing_for_it(ran: Ran, case: Case) -> None:
    if isinstance(case.outcome, Refused):
        _check_refused(ran, case.id, case.outcome)
    elif isinstance(case.outcome, Fails):
        _check_fails(ran, case.id, case.outcome)
    else:
        _check_builds(ran, case.id, case.outcome)


def test_the_good_files_beside_the_hostile_ones_are_all_built(ran: Ran) -> None:
    for name in GOOD:
        assert ran.records[name]["error"] is None
        assert set(ran.records[name]["assets"].values()) == {"built"}, ran.records[name]


def test_a_run_with_hostile_inputs_exits_1_and_leaves_no_temp_folders(ran: Ran) -> None:
    assert ran.result.returncode == 1
    debris = [p for p in ran.home.rglob("*") if ".tmp." in p.name]
    assert debris == []


def test_a_manifest_with_no_rows_is_reported_by_name(ran: Ran) -> None:
    assert f"{ran.empty_manifest}: lists no rows" in ran.result.stderr


def test_no_manifest_name_reaches_a_path_under_genoflow_home(ran: Ran) -> None:
    names = [e.name for w in ran.written.values() for e, _, _ in w.rows if len(e.name) > 3]
    paths = [str(path.relative_to(ran.home)) for path in ran.home.rglob("*")]
    assert paths
    assert [name for name in names if any(name in path for path in paths)] == []


# --- fuzzing: only the project's own errors may escape ------------------------------------------

FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
NAMES = st.sampled_from(
    [
        "x.vcf",
        "x.vcf.gz",
        "x.bed",
        "x.bam",
        "x.sam",
        "x.bb",
        "x.bw",
        "x.gff3",
        "x.csv",
        "x",
        "x.bgz",
    ]
)
DECLARED = st.none() | st.sampled_from(formats.FORMATS) | st.text(max_size=12)
SEEDS = [DEMO / name for name in ("sample3.bam", "ccres.bb", "coverage.bw", "cohort.vcf.gz")]


def _detect_or_own_error(path: Path, name: str, declared: str | None) -> None:
    try:
        found = formats.detect(path, name=name, declared=declared)
    except GenoflowError:
        return
    assert found in formats.FORMATS


@FUZZ
@given(data=st.binary(max_size=4096), name=NAMES, declared=DECLARED)
def test_fuzzed_bytes_are_detected_or_refused_with_a_format_error(
    tmp_path: Path, data: bytes, name: str, declared: str | None
) -> None:
    path = tmp_path / "fuzzed"
    path.write_bytes(data)
    _detect_or_own_error(path, name, declared)


@FUZZ
@given(
    seed=st.sampled_from(SEEDS),
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=8),
    name=NAMES,
)
def test_damaged_real_files_are_detected_or_refused_with_a_format_error(
    tmp_path: Path, seed: Path, cut: float, flips: list[tuple[float, int]], name: str
) -> None:
    data = bytearray(seed.read_bytes()[: max(1, int(len(seed.read_bytes()) * cut))])
    for where, mask in flips:
        data[int(where * (len(data) - 1))] ^= mask
    path = tmp_path / "damaged"
    path.write_bytes(bytes(data))
    _detect_or_own_error(path, name, None)
    with contextlib.suppress(GenoflowError):
        formats.verify_bgzf_complete(path, name=name, stage="stage")


# --- paths cannot be steered outside GENOFLOW_HOME or the replica prefix --------------------------

PATHS = st.text(max_size=40) | st.lists(
    st.sampled_from(["..", ".", "", "a", "b.vcf", "/", "..%2f", "\\", "~"]), max_size=6
).map("/".join)


@FUZZ
@given(path=PATHS)
def test_no_path_names_a_file_outside_a_local_location(tmp_path: Path, path: str) -> None:
    root = tmp_path / "cache"
    try:
        where = LocalLocation("cache", root, deployment="here").path(path)
    except StorageError:
        return
    assert os.path.normpath(where).startswith(f"{root.resolve()}{os.sep}")


@FUZZ
@given(path=PATHS)
def test_no_path_names_an_object_outside_the_replica_prefix(path: str) -> None:
    location = GcsLocation("replicas", "gs://lab-bucket/genoflow", deployment="cloud")
    try:
        key = location.key(path)
    except StorageError:
        return
    assert key.startswith("lab-bucket/genoflow/")
    assert ".." not in key.split("/") and "" not in key.split("/")


def test_a_registry_row_naming_a_path_outside_its_location_is_never_followed(
    tmp_path: Path,
) -> None:
    lab = LocalLocation("lab", tmp_path / "lab", deployment="lab")
    publish_artifact(tmp_path / "lab")
    # The same artifact, byte for byte, outside the location: only the path rule keeps it out.
    publish_artifact(tmp_path / "secret")
    with DataManager(tmp_path / "registry.db", workdir=tmp_path / "work") as manager:
        manager.register_path(lab, RELPATH, RELPATH)
        # a hostile writer of the registry
        with manager.context.registry.engine.begin() as connection:
            connection.execute(replica_table.update().values(path=f"../secret/{RELPATH}"))
        (replica,) = manager.get_data_locations(RELPATH)
        here = LocalLocation("here", tmp_path / "here", deployment="lab")

        with pytest.raises(StorageError, match="could escape"):
            ReplicaUpkeep(manager).verify(replica)
        with pytest.raises(StorageError, match="no replica could be copied"):
            ReplicaUpkeep(manager).fetch(RELPATH, here)

    assert not (tmp_path / "here").exists() or list((tmp_path / "here").rglob("*.gz")) == []
