"""Cheap probes of an indexed interval file: what its tabix index holds, and one record per contig.

Invariant: nothing here writes a file or reads more than the index, the header and one BGZF
block per contig; every failure to read is a :class:`~genoflow.core.errors.ProcessingError`
naming the file and the stage. A tabix index is only ever written by htslib reading the whole
data file, and htslib refuses a file whose starts decrease within a contig or whose contig
blocks are split, so an index that exists already proves those two orders and holds the records
of every contig (in the order the data file has them).
"""

from __future__ import annotations

from pathlib import Path

import pysam

from genoflow.core.errors import ProcessingError
from genoflow.processors.intervals.checks import contig_region
from genoflow.processors.intervals.order import OrderCheck
from genoflow.processors.intervals.records import RecordReader
from genoflow.processors.intervals.tabix import index_contigs

__all__ = ["contig_order_problem", "indexed_counts", "probe_contigs"]


def _index_of(gz: Path) -> Path:
    found = [p for p in (Path(f"{gz}.csi"), Path(f"{gz}.tbi")) if p.is_file()]
    if len(found) != 1:
        hint = "index the file first (index_intervals)"
        raise ProcessingError(
            f"expected one .tbi or .csi beside {gz.name}, found {len(found)}",
            file=str(gz),
            stage="check",
            hint=hint,
        )
    return found[0]


def indexed_counts(gz: str | Path, *, name: str) -> list[tuple[str, int]]:
    """(contig, records) for every contig the index beside ``gz`` holds, in data-file order.

    Raises:
        ProcessingError: stage ``check``, when there is no index or it cannot be read.
    """
    return index_contigs(_index_of(Path(gz)), name=name, stage="check")[1]


def contig_order_problem(gz: str | Path, contigs: list[str], *, fmt: str, name: str) -> str | None:
    """What is wrong with the order of ``contigs`` (as the data file has them), or None.

    The expected order is the VCF header's ``##contig`` order when it has one, else byte order:
    only the header is read to learn it.
    """
    reader = RecordReader(fmt, name=name, stage="check")
    try:
        with pysam.TabixFile(str(gz), index=str(_index_of(Path(gz))), encoding="latin-1") as tabix:
            for lineno, line in enumerate(tabix.header, 1):
                reader.observe_header(lineno, line.encode("latin-1"))
    except (OSError, ValueError) as exc:
        raise ProcessingError(f"cannot read the header: {exc}", file=name, stage="check") from exc
    order = OrderCheck(reader)
    for contig in contigs:
        problem = order.add(contig.encode(), 0)
        if problem:
            return problem
    return None


def probe_contigs(gz: str | Path, contigs: list[str], *, name: str) -> str | None:
    """Query each of ``contigs`` through the index and read its first record only.

    Returns:
        None when every query's first record lies on the contig queried, else what went wrong.

    Raises:
        ProcessingError: stage ``query``, when the file or its index cannot be opened.
    """
    try:
        with pysam.TabixFile(str(gz), index=str(_index_of(Path(gz))), encoding="latin-1") as tabix:
            for contig in contigs:
                first = next(tabix.fetch(region=contig_region(contig, name=name)), None)
                if first is None:
                    return f"a region query for contig {contig} found no record"
                if first.split("\t", 1)[0] != contig:
                    return f"a region query for contig {contig} found a record of another contig"
    except (OSError, ValueError) as exc:
        raise ProcessingError(f"region query failed: {exc}", file=name, stage="query") from exc
    return None
