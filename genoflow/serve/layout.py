"""What a genome view of one artifact needs: its contigs and their sizes, a region with data, and
the igv.js track that reads it.

Invariants:
- everything is read from the published artifact (the BAM header and index, the tabix index and
  the first record of a contig), never from the request; reading costs a header, an index and
  one BGZF block, whatever the size of the data;
- a tabix index keeps no contig lengths, so a contig's size is the end of the last index bin that
  holds records: every record lies inside a bin it belongs to, so no record ends after it;
- the track's URLs are this service's own ``/files/{md5}/{name}`` paths, relative to the page, so
  the view works behind any host name or proxy prefix that keeps paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pysam

from genoflow.core.errors import GenoflowError
from genoflow.core.formats import TABIX_PRESET
from genoflow.serve.catalog import Files, Source
from genoflow.serve.files import file_name
from genoflow.serve.hts_index import read_index

# Bases shown around the first record by default: reads are dense, interval files sparse.
WINDOW = {"alignments": 2_000, "intervals": 20_000}
# igv.js's name for each interval format (bigBed sources are served as the BED they became).
IGV_FORMAT = {
    "vcf": "vcf",
    "bed": "bed",
    "bigBed": "bed",
    "narrowPeak": "narrowpeak",
    "broadPeak": "broadpeak",
    "gff3": "gff3",
    "gtf": "gtf",
}
# The column (0-based) holding a record's start, and whether it counts from 1, per tabix preset.
START_COLUMN = {"vcf": (1, True), "bed": (1, False), "gff": (3, True)}


class NoView(GenoflowError):
    """The artifact has nothing a genome browser can place on contigs."""

    default_stage = "viewer"


@dataclass(frozen=True)
class Layout:
    """The contigs of one artifact and where to look first.

    Attributes:
        sizes: ``(contig, length)`` in the data file's order.
        locus: ``contig:start-end`` (1-based, inclusive) around the first record, or the first
            contig whole when no record could be read.
    """

    sizes: tuple[tuple[str, int], ...]
    locus: str

    def chrom_sizes(self) -> str:
        """The contigs as a UCSC ``chrom.sizes`` text (what igv.js reads as a reference)."""
        return "".join(f"{name}\t{length}\n" for name, length in self.sizes)


def layout(source: Source, files: Files) -> Layout:
    """The contigs and default region of a built artifact.

    Raises:
        NoView: the format has no coordinates (passthrough), or the data has no contig.
    """
    if source.family == "alignments":
        return _bam_layout(source, files.data)
    if source.family == "intervals" and files.index is not None:
        return _tabix_layout(source, files.data, files.index)
    raise NoView(f"{source.format} files have no genome view", file=source.md5)


def track(source: Source, files: Files) -> dict[str, Any]:
    """The igv.js track of an artifact, reading ``/files/{md5}/{name}`` and its index."""
    url = f"/files/{source.md5}/{file_name(source)}"
    config: dict[str, Any] = {"name": source.names[0], "url": url}
    if files.index is not None:
        config["indexURL"] = url + files.index.suffix
    if source.family == "alignments":
        return {**config, "type": "alignment", "format": "bam"}
    fmt = IGV_FORMAT.get(source.format, "bed")
    kind = "variant" if fmt == "vcf" else "annotation"
    return {**config, "type": kind, "format": fmt, "displayMode": "EXPANDED"}


def _locus(name: str, length: int, start: int | None, window: int) -> str:
    if start is None:
        return f"{name}:1-{length}"
    first = max(1, start + 1 - window // 10)
    return f"{name}:{first}-{min(length, first + window - 1)}"


def _bam_layout(source: Source, path: Path) -> Layout:
    with pysam.AlignmentFile(str(path), "rb") as bam:
        sizes = tuple(zip(bam.references, bam.lengths, strict=True))
        if not sizes:
            raise NoView("the BAM header names no reference sequence", file=source.md5)
        used = [stat.contig for stat in bam.get_index_statistics() if stat.mapped]
        name = used[0] if used else sizes[0][0]
        first = next(bam.fetch(name), None) if used else None
    length = dict(sizes)[name]
    start = None if first is None else first.reference_start
    return Layout(sizes, _locus(name, length, start, WINDOW["alignments"]))


def _tabix_layout(source: Source, data: Path, index: Path) -> Layout:
    parsed = read_index(index)
    sizes = []
    for name, ref in zip(parsed.names, parsed.refs, strict=False):
        ends = [_bin_end(parsed.min_shift, parsed.depth, bin_) for bin_ in ref.bins]
        if ends:
            sizes.append((name, max(ends)))
    if not sizes:
        raise NoView("the index lists no contig with records", file=source.md5)
    name, length = sizes[0]
    column, one_based = START_COLUMN[TABIX_PRESET.get(source.format, "bed")]
    with pysam.TabixFile(str(data), index=str(index)) as tabix:
        line = next(tabix.fetch(name), None)
    fields = line.split("\t") if line is not None else []
    start = None
    if len(fields) > column and fields[column].isdigit():
        start = int(fields[column]) - (1 if one_based else 0)
    return Layout(tuple(sizes), _locus(name, length, start, WINDOW["intervals"]))


def _bin_end(min_shift: int, depth: int, bin_: int) -> int:
    """The first base after a UCSC/htslib bin (SAMv1 §5.3), for any ``min_shift`` and ``depth``."""
    level, first = 0, 0
    while level < depth and bin_ >= first + (1 << (3 * level)):
        first += 1 << (3 * level)
        level += 1
    width = 1 << (min_shift + 3 * (depth - level))
    return (bin_ - first + 1) * width
