"""Generate one large, unsorted synthetic input per family for the benchmarks.

Invariant: an input is only ever seen complete. Each file is written under a temporary name,
renamed into place, and only then described by a sidecar ``<file>.json`` holding its size and
the parameters that made it; a later run reuses the file only when the sidecar matches both the
parameters asked for and the file's size on disk.

Usage: ``python benchmarks/generate.py [--scale 0.1] [--families bam,vcf,bed]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pysam

HERE = Path(__file__).resolve().parent
INPUTS = HERE / "inputs"
SEED = 1729
# Bump when the content a given seed and scale produce changes, so cached inputs are rebuilt.
GENERATOR_VERSION = 1
FAMILIES = ("bam", "vcf", "bed")
# Target sizes at scale 1, in bytes. The BAM's is reached through a measured reads-per-byte rate.
TARGET = {"bam": 300_000_000, "vcf": 200_000_000, "bed": 150_000_000}
BAM_BYTES_PER_READ = 146
CHUNK = 100_000

MAIN_CONTIGS = {
    **{f"chr{i}": n for i, n in enumerate(
        (248956422, 242193529, 198295559, 190214555, 181538259, 170805979, 159345973,
         145138636, 138394717, 133797422, 135086622, 133275309, 114364328, 107043718,
         101991189, 90338345, 83257441, 80373285, 58617616, 64444167, 46709983, 50818468),
        start=1,
    )},
    "chrX": 156040895, "chrY": 57227415, "chrM": 16569,
}  # fmt: skip


def contigs(rng: np.random.Generator) -> dict[str, int]:
    """GRCh38-like contig set: the primary chromosomes plus 150 small unplaced scaffolds."""
    extra = {}
    for i in range(150):
        size = int(rng.integers(2_000, 250_000))
        name = f"chrUn_KI{270300 + i}v1" if i % 3 else f"chr{1 + i % 22}_KI{270500 + i}v1_random"
        extra[name] = size
    return {**MAIN_CONTIGS, **extra}


def positions(rng: np.random.Generator, table: dict[str, int], n: int) -> tuple[np.ndarray, ...]:
    """Contig indices chosen by length and 1-based positions at least 1 kbp from either end."""
    sizes = np.array(list(table.values()), dtype=np.int64)
    tid = rng.choice(len(sizes), size=n, p=sizes / sizes.sum())
    span = np.maximum(sizes[tid] - 2_000, 1)
    pos = 1 + np.minimum(1_000, sizes[tid] // 4) + (rng.random(n) * span).astype(np.int64)
    return tid, pos


def random_bases(rng: np.random.Generator, n: int) -> bytes:
    return np.frombuffer(b"ACGT", dtype=np.uint8)[rng.integers(0, 4, size=n)].tobytes()


def qualities(rng: np.random.Generator, n: int) -> bytes:
    """HiSeq-like qualities: mostly 30–40, a tail of low values; as hard to compress as real."""
    values = np.clip(rng.normal(36, 4, size=n), 2, 41).astype(np.uint8)
    low = rng.random(n) < 0.03
    values[low] = 2
    return (values + 33).tobytes()


# ----------------------------------------------------------------------------- BAM


def sam_header(table: dict[str, int]) -> str:
    lines = ["@HD\tVN:1.6\tSO:unsorted"]
    lines += [f"@SQ\tSN:{name}\tLN:{size}" for name, size in table.items()]
    lines.append("@RG\tID:bench\tSM:BENCH01\tLB:lib1\tPL:ILLUMINA")
    lines.append("@PG\tID:bwa\tPN:bwa\tVN:0.7.17-r1188\tCL:bwa mem -t 32 ref.fa r1.fq r2.fq")
    return "\n".join(lines) + "\n"


def sam_chunk(rng: np.random.Generator, table: dict[str, int], start: int, n: int) -> str:
    """``n`` reads (``n // 2`` pairs) as SAM text, in sequencer order."""
    pairs = n // 2
    names = list(table)
    tid, pos = positions(rng, table, pairs)
    length = rng.choice(np.array([100, 125, 150]), size=pairs)
    # Capped so a mate never runs past its contig's end (positions stay 1 kbp inside).
    insert = np.clip(rng.normal(380, 70, size=pairs).astype(np.int64), length + 20, 900)
    mapq = rng.choice(np.array([60, 60, 60, 60, 60, 42, 27, 3, 0]), size=pairs)
    nm = rng.choice(np.array([0, 0, 0, 1, 1, 2, 4]), size=(pairs, 2))
    roll = rng.random(pairs)
    reverse = rng.random(pairs) < 0.5
    total = int(length.sum()) * 2
    seq, qual = random_bases(rng, total).decode(), qualities(rng, total).decode()
    tid, pos, length, insert, mapq = (x.tolist() for x in (tid, pos, length, insert, mapq))
    nm, roll, reverse = nm.tolist(), roll.tolist(), reverse.tolist()
    out, offset = [], 0
    for i in range(pairs):
        size = length[i]
        serial = start // 2 + i
        qname = f"A00123:82:H7GTKDSXY:{1 + serial % 4}:{1101 + serial // 4_000_000}:" + (
            f"{1000 + serial // 4 % 31000}:{1000 + serial // 124_000 % 36000}"
        )
        s1, q1 = seq[offset : offset + size], qual[offset : offset + size]
        s2, q2 = seq[offset + size : offset + 2 * size], qual[offset + size : offset + 2 * size]
        offset += 2 * size
        if roll[i] < 0.01:
            tail = "\t*\t0\t0\t*\t*\t0\t0\t"
            out.append(
                f"{qname}\t77{tail}{s1}\t{q1}\tRG:Z:bench\n"
                f"{qname}\t141{tail}{s2}\t{q2}\tRG:Z:bench\n"
            )
            continue
        chrom, p1 = names[tid[i]], pos[i]
        p2 = p1 + insert[i] - size
        tlen = p2 + size - p1
        f1, f2 = (83, 163) if reverse[i] else (99, 147)
        m = mapq[i]
        a, b = nm[i]
        cigar = f"{size}M"
        r1 = (p2, -tlen, p1) if reverse[i] else (p1, tlen, p2)
        r2 = (p1, tlen, p2) if reverse[i] else (p2, -tlen, p1)
        out.append(
            f"{qname}\t{f1}\t{chrom}\t{r1[0]}\t{m}\t{cigar}\t=\t{r1[2]}\t{r1[1]}\t{s1}\t{q1}\t"
            f"NM:i:{a}\tMC:Z:{cigar}\tAS:i:{size - 5 * a}\tXS:i:{size // 3}\tRG:Z:bench\n"
            f"{qname}\t{f2}\t{chrom}\t{r2[0]}\t{m}\t{cigar}\t=\t{r2[2]}\t{r2[1]}\t{s2}\t{q2}\t"
            f"NM:i:{b}\tMC:Z:{cigar}\tAS:i:{size - 5 * b}\tXS:i:{size // 3}\tRG:Z:bench\n"
        )
    return "".join(out)


def write_bam(path: Path, scale: float, rng: np.random.Generator) -> int:
    """SAM text written in large chunks, then converted to BAM by htslib on two threads."""
    table = contigs(rng)
    reads = max(2, int(TARGET["bam"] * scale / BAM_BYTES_PER_READ)) // 2 * 2
    sam = path.with_name(path.name + ".tmp.sam")
    try:
        with open(sam, "w") as out:
            out.write(sam_header(table))
            for start in range(0, reads, CHUNK):
                out.write(sam_chunk(rng, table, start, min(CHUNK, reads - start)))
        pysam.view("-b", "-@", "2", "-o", str(path), str(sam), catch_stdout=False)
    finally:
        sam.unlink(missing_ok=True)
    return reads


# ----------------------------------------------------------------------------- VCF and BED

VCF_SAMPLES = [f"HG{i:05d}" for i in range(96, 102)]


def vcf_header(table: dict[str, int]) -> str:
    lines = [
        "##fileformat=VCFv4.2",
        '##FILTER=<ID=PASS,Description="All filters passed">',
        '##FILTER=<ID=LowQual,Description="Low quality">',
        '##INFO=<ID=AC,Number=A,Type=Integer,Description="Allele count in genotypes">',
        '##INFO=<ID=AN,Number=1,Type=Integer,Description="Total number of alleles">',
        '##INFO=<ID=DP,Number=1,Type=Integer,Description="Combined depth across samples">',
        '##INFO=<ID=MQ,Number=1,Type=Float,Description="RMS mapping quality">',
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
        '##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Read depth">',
    ]
    lines += [f"##contig=<ID={name},length={size}>" for name, size in table.items()]
    columns = ["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT"]
    lines.append("\t".join(columns + VCF_SAMPLES))
    return "\n".join(lines) + "\n"


def vcf_chunks(rng: np.random.Generator, table: dict[str, int]) -> Iterator[str]:
    names = list(table)
    genotypes = np.array(["0/0", "0/1", "1/1", "0|1", "1|0", "./."])
    gt_weights = np.array([0.55, 0.2, 0.12, 0.05, 0.05, 0.03])
    while True:
        tid, pos = positions(rng, table, CHUNK)
        bases = random_bases(rng, 2 * CHUNK).decode()
        gts = rng.choice(genotypes, size=(CHUNK, len(VCF_SAMPLES)), p=gt_weights).tolist()
        dps = rng.poisson(30, size=(CHUNK, len(VCF_SAMPLES))).tolist()
        qual = rng.gamma(2, 300, size=CHUNK).tolist()
        rsid = rng.integers(1_000, 1_200_000_000, size=CHUNK).tolist()
        known = (rng.random(CHUNK) < 0.6).tolist()
        tid, pos = tid.tolist(), pos.tolist()
        lines = []
        for i in range(CHUNK):
            ref, alt = bases[2 * i], bases[2 * i + 1]
            if ref == alt:
                alt = ref + "T"
            calls = "\t".join(f"{g}:{d}" for g, d in zip(gts[i], dps[i], strict=True))
            ac = sum(g.count("1") for g in gts[i])
            vid = f"rs{rsid[i]}" if known[i] else "."
            lines.append(
                f"{names[tid[i]]}\t{pos[i]}\t{vid}\t{ref}\t{alt}\t{qual[i]:.2f}\t"
                f"{'PASS' if qual[i] > 60 else 'LowQual'}\tAC={ac};AN=12;DP={sum(dps[i])};"
                f"MQ=60.00\tGT:DP\t{calls}\n"
            )
        yield "".join(lines)


def bed_chunks(rng: np.random.Generator, table: dict[str, int]) -> Iterator[str]:
    names = list(table)
    while True:
        tid, pos = (x.tolist() for x in positions(rng, table, CHUNK))
        width = rng.integers(50, 5_000, size=CHUNK).tolist()
        score = rng.integers(0, 1001, size=CHUNK).tolist()
        strand = rng.choice(np.array(["+", "-", "."]), size=CHUNK).tolist()
        ident = rng.integers(0, 10**9, size=CHUNK).tolist()
        yield "".join(
            f"{names[tid[i]]}\t{pos[i] - 1}\t{pos[i] - 1 + width[i]}\tregion_{ident[i]}\t"
            f"{score[i]}\t{strand[i]}\n"
            for i in range(CHUNK)
        )


def write_text(path: Path, header: str, chunks: Iterator[str], target: int) -> int:
    """Write ``header`` then whole chunks' lines until ``target`` bytes; return records written."""
    written, records = len(header), 0
    with open(path, "w") as out:
        out.write(header)
        for chunk in chunks:
            if written + len(chunk) > target:
                lines = chunk.splitlines(keepends=True)
                chunk = "".join(lines[: max(1, (target - written) * len(lines) // len(chunk))])
            out.write(chunk)
            written += len(chunk)
            records += chunk.count("\n")
            if written >= target * 0.999:
                return records
    raise AssertionError("chunk generators are endless")


def write_vcf(path: Path, scale: float, rng: np.random.Generator) -> int:
    table = contigs(rng)
    return write_text(path, vcf_header(table), vcf_chunks(rng, table), int(TARGET["vcf"] * scale))


def write_bed(path: Path, scale: float, rng: np.random.Generator) -> int:
    table = contigs(rng)
    return write_text(path, "", bed_chunks(rng, table), int(TARGET["bed"] * scale))


WRITERS: dict[str, tuple[str, Callable[[Path, float, np.random.Generator], int]]] = {
    "bam": ("bench.bam", write_bam),
    "vcf": ("bench.vcf", write_vcf),
    "bed": ("bench.bed", write_bed),
}


# ----------------------------------------------------------------------------- caching


def ensure_input(family: str, *, scale: float, folder: Path = INPUTS) -> Path:
    """Return the path of ``family``'s input at ``scale``, generating it unless cached.

    Args:
        family: ``bam``, ``vcf`` or ``bed``.
        scale: fraction of the full-size input (1.0 = the sizes in ``TARGET``).
        folder: where inputs and their sidecars live.

    Returns:
        The input file's path.
    """
    filename, writer = WRITERS[family]
    suffix = "" if scale == 1 else f".x{scale:g}"
    stem, dot, ext = filename.partition(".")
    path = folder / f"{stem}{suffix}{dot}{ext}"
    sidecar = path.with_name(path.name + ".json")
    params = {"family": family, "scale": scale, "seed": SEED, "version": GENERATOR_VERSION}
    if path.is_file() and sidecar.is_file():
        recorded = json.loads(sidecar.read_text())
        if {k: recorded.get(k) for k in params} == params and recorded.get("size") == (
            path.stat().st_size
        ):
            return path
    folder.mkdir(parents=True, exist_ok=True)
    sidecar.unlink(missing_ok=True)
    partial = path.with_name(f".{path.name}.partial.{os.getpid()}")
    began = time.perf_counter()
    try:
        records = writer(partial, scale, np.random.default_rng([SEED, FAMILIES.index(family)]))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    seconds = time.perf_counter() - began
    meta = {**params, "size": path.stat().st_size, "records": records, "seconds": round(seconds, 1)}
    sidecar.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"generated {path.name}: {meta['size'] / 1e6:.0f} MB, {records} records, {seconds:.0f} s")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of full size")
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated")
    args = parser.parse_args(argv)
    for family in args.families.split(","):
        if family not in WRITERS:
            parser.error(f"unknown family {family!r}; choose from {', '.join(FAMILIES)}")
        print(ensure_input(family, scale=args.scale))
    return 0


if __name__ == "__main__":
    sys.exit(main())
