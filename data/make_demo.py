"""Write the demo files under ``data/manifests/demo/`` and their manifest ``data/manifests/demo.tsv``.

Invariant: the output is a pure function of this script (and of the pysam/htslib and
pybigtools versions that write the binary formats). A fixed seed drives every random choice,
gzip headers carry mtime 0, and nothing reads the clock, so running the script twice gives
byte-identical files.

Run: ``.venv/bin/python data/make_demo.py``
"""

from __future__ import annotations

import gzip
import hashlib
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pybigtools
import pysam

SEED = 20240611
HERE = Path(__file__).resolve().parent
DEMO = HERE / "manifests" / "demo"
MANIFEST = HERE / "manifests" / "demo.tsv"

# GRCh38 primary assembly lengths.
GRCH38 = {
    "chr1": 248956422,
    "chr2": 242193529,
    "chr3": 198295559,
    "chr4": 190214555,
    "chr5": 181538259,
    "chr6": 170805979,
    "chr7": 159345973,
    "chr8": 145138636,
    "chr9": 138394717,
    "chr10": 133797422,
    "chr11": 135086622,
    "chr12": 133275309,
    "chr13": 114364328,
    "chr14": 107043718,
    "chr15": 101991189,
    "chr16": 90338345,
    "chr17": 83257441,
    "chr18": 80373285,
    "chr19": 58617616,
    "chr20": 64444167,
    "chr21": 46709983,
    "chr22": 50818468,
    "chrX": 156040895,
    "chrY": 57227415,
    "chrM": 16569,
}
AUTOSOMES_X = [c for c in GRCH38 if c not in ("chrY", "chrM")]
# Barley-like pseudomolecules: most are longer than 2^29 bp, so they need a CSI index.
BARLEY = {
    "chr1H": 700000000,
    "chr2H": 665585731,
    "chr3H": 621516506,
    "chr4H": 610333535,
    "chr5H": 588218686,
    "chr6H": 561794515,
    "chr7H": 632540561,
}
TRIO = ["NA12878", "NA12891", "NA12892"]


def pick_contig(rng: random.Random, contigs: list[str], sizes: dict[str, int]) -> str:
    """A contig chosen with probability proportional to its length."""
    return rng.choices(contigs, weights=[sizes[c] for c in contigs])[0]


def write_text(path: Path, lines: list[str]) -> None:
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))


def gzip_text(path: Path, lines: list[str]) -> None:
    """Plain (not BGZF) gzip with a fixed header: no timestamp, a fixed original name."""
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(filename=path.stem, mode="wb", fileobj=raw, mtime=0, compresslevel=6) as out,
    ):
        out.write(("\n".join(lines) + "\n").encode())


def bgzip_text(path: Path, lines: list[str]) -> None:
    """BGZF through htslib, from a plain temporary file."""
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "plain.txt"
        write_text(plain, lines)
        pysam.tabix_compress(str(plain), str(path), force=True)


# ----------------------------------------------------------------------------- alignments


def quality(rng: random.Random, length: int, *, binned: bool) -> str:
    """Illumina-like base qualities, dropping towards the 3' end."""
    if binned:
        # NovaSeq reports four values only.
        return "".join(
            rng.choices("F:,#", weights=(85 - i // 4, 10 + i // 8, 4, 1))[0] for i in range(length)
        )
    return "".join(
        chr(33 + max(2, min(41, int(rng.gauss(37 - i * 0.06, 3))))) for i in range(length)
    )


def cigar_for(rng: random.Random, length: int) -> tuple[str, int]:
    """A CIGAR for ``length`` query bases and the number of reference bases it spans."""
    roll = rng.random()
    if roll < 0.85:
        return f"{length}M", length
    if roll < 0.92:
        clip = rng.randint(3, 30)
        return (
            (f"{clip}S{length - clip}M", length - clip)
            if rng.random() < 0.5
            else (
                f"{length - clip}M{clip}S",
                length - clip,
            )
        )
    cut = rng.randint(20, length - 20)
    size = rng.randint(1, 6)
    if roll < 0.96:
        return f"{cut}M{size}I{length - cut - size}M", length - size
    return f"{cut}M{size}D{length - cut}M", length + size


def read_pair(rng: random.Random, qname: str, length: int, rg: str, *, binned: bool) -> list[str]:
    """Two SAM lines for one fragment: properly paired, half-mapped or unmapped."""
    seqs = ["".join(rng.choices("ACGT", k=length)) for _ in range(2)]
    quals = [quality(rng, length, binned=binned) for _ in range(2)]
    roll = rng.random()
    if roll < 0.02:
        return [
            f"{qname}\t{flag}\t*\t0\t0\t*\t*\t0\t0\t{seq}\t{qual}\tAS:i:0\tXS:i:0\tRG:Z:{rg}"
            for flag, seq, qual in zip((77, 141), seqs, quals, strict=True)
        ]
    contig = pick_contig(rng, AUTOSOMES_X, GRCH38)
    pos = rng.randint(10_000, GRCH38[contig] - 10_000)
    if roll < 0.05:
        cigar, _ = cigar_for(rng, length)
        reverse = rng.random() < 0.5
        mapq = rng.choice((0, 3, 17, 60))
        return [
            f"{qname}\t{73 + 16 * reverse}\t{contig}\t{pos}\t{mapq}\t{cigar}\t=\t{pos}\t0\t"
            f"{seqs[0]}\t{quals[0]}\tNM:i:{rng.randint(0, 4)}\tAS:i:{length - 10}\tXS:i:0\t"
            f"RG:Z:{rg}",
            f"{qname}\t{133 + 32 * reverse}\t{contig}\t{pos}\t0\t*\t=\t{pos}\t0\t"
            f"{seqs[1]}\t{quals[1]}\tMC:Z:{cigar}\tAS:i:0\tXS:i:0\tRG:Z:{rg}",
        ]
    (c1, span1), (c2, span2) = cigar_for(rng, length), cigar_for(rng, length)
    insert = max(length + 10, int(rng.gauss(350, 60)))
    pos2 = pos + insert - span2
    tlen = pos2 + span2 - pos
    first_reverse = rng.random() < 0.5
    flags = (83, 163) if first_reverse else (99, 147)
    dup = 1024 if rng.random() < 0.04 else 0
    mapq = rng.choice((60, 60, 60, 60, 42, 27, 0))
    nm = [rng.choice((0, 0, 0, 1, 1, 2, 3)) for _ in range(2)]
    left, right = (pos, c1, span1), (pos2, c2, span2)
    # Read 1 is the right-hand mate when it maps to the reverse strand.
    r1, r2 = (right, left) if first_reverse else (left, right)
    out = []
    for i, (flag, (p, cig, _), (mp, mcig, _)) in enumerate(
        ((flags[0], r1, r2), (flags[1], r2, r1))
    ):
        sign = 1 if p == pos else -1
        out.append(
            f"{qname}\t{flag | dup}\t{contig}\t{p}\t{mapq}\t{cig}\t=\t{mp}\t{sign * tlen}\t"
            f"{seqs[i]}\t{quals[i]}\tNM:i:{nm[i]}\tMC:Z:{mcig}\t"
            f"AS:i:{length - 5 * nm[i]}\tXS:i:{rng.randint(0, length // 2)}\tRG:Z:{rg}"
        )
    return out


def sam_header(sample: str, *, instrument: str) -> list[str]:
    lines = ["@HD\tVN:1.6\tSO:unsorted"]
    lines += [f"@SQ\tSN:{name}\tLN:{size}\tAS:GRCh38" for name, size in GRCH38.items()]
    lines.append(f"@RG\tID:{sample}\tSM:{sample}\tLB:{sample}-lib1\tPL:ILLUMINA\tPM:{instrument}")
    lines.append(
        "@PG\tID:bwa\tPN:bwa\tVN:0.7.17-r1188\t"
        f"CL:bwa mem -t 16 -R @RG\\tID:{sample}\\tSM:{sample} GRCh38.fa {sample}_R1.fq.gz "
        f"{sample}_R2.fq.gz"
    )
    return lines


def sam_records(
    rng: random.Random, sample: str, pairs: int, length: int, flowcell: str, *, binned: bool
) -> list[str]:
    """``pairs`` fragments in the order a sequencer emits them (not by position)."""
    lines: list[str] = []
    for i in range(pairs):
        tile = 1101 + (i // 400)
        qname = f"{flowcell}:{tile}:{rng.randint(1000, 32000)}:{rng.randint(1000, 37000)}"
        lines += read_pair(rng, qname, length, sample, binned=binned)
    return lines


def make_sam(rng: random.Random, path: Path) -> None:
    lines = sam_header("NA12878", instrument="HiSeq2500")
    lines += sam_records(rng, "NA12878", 900, 76, "HWI-D00360:8:C6K4JANXX:3", binned=False)
    write_text(path, lines)


def make_sam_gz(rng: random.Random, path: Path) -> None:
    lines = sam_header("NA12891", instrument="HiSeqX")
    lines += sam_records(rng, "NA12891", 1300, 100, "ST-E00144:91:HCW2LCCXX:5", binned=True)
    gzip_text(path, lines)


def make_bam(rng: random.Random, path: Path) -> None:
    header_lines = sam_header("NA12892", instrument="NovaSeq6000")
    records = sam_records(rng, "NA12892", 1200, 150, "A00123:82:H7GTKDSXY:2", binned=True)
    header = pysam.AlignmentHeader.from_text("\n".join(header_lines) + "\n")
    with pysam.AlignmentFile(str(path), "wb", header=header, threads=1) as out:
        for line in records:
            out.write(pysam.AlignedSegment.fromstring(line, header))


# ----------------------------------------------------------------------------- variants

INFO_LINES = [
    ("AC", "A", "Integer", "Allele count in genotypes, for each ALT allele"),
    ("AF", "A", "Float", "Allele Frequency, for each ALT allele"),
    ("AN", "1", "Integer", "Total number of alleles in called genotypes"),
    (
        "BaseQRankSum",
        "1",
        "Float",
        "Z-score from Wilcoxon rank sum test of Alt Vs. Ref base qualities",
    ),
    ("DB", "0", "Flag", "dbSNP Membership"),
    ("DP", "1", "Integer", "Approximate read depth; some reads may have been filtered"),
    ("ExcessHet", "1", "Float", "Phred-scaled p-value for exact test of excess heterozygosity"),
    ("FS", "1", "Float", "Phred-scaled p-value using Fisher's exact test to detect strand bias"),
    (
        "InbreedingCoeff",
        "1",
        "Float",
        "Inbreeding coefficient as estimated from the genotype likelihoods",
    ),
    ("MLEAC", "A", "Integer", "Maximum likelihood expectation (MLE) for the allele counts"),
    ("MLEAF", "A", "Float", "Maximum likelihood expectation (MLE) for the allele frequency"),
    ("MQ", "1", "Float", "RMS Mapping Quality"),
    (
        "MQRankSum",
        "1",
        "Float",
        "Z-score From Wilcoxon rank sum test of Alt vs. Ref read mapping qualities",
    ),
    ("QD", "1", "Float", "Variant Confidence/Quality by Depth"),
    (
        "ReadPosRankSum",
        "1",
        "Float",
        "Z-score from Wilcoxon rank sum test of Alt vs. Ref read position bias",
    ),
    ("SOR", "1", "Float", "Symmetric Odds Ratio of 2x2 contingency table to detect strand bias"),
    (
        "VQSLOD",
        "1",
        "Float",
        "Log odds of being a true variant versus being false under the trained model",
    ),
    (
        "culprit",
        "1",
        "String",
        "The annotation which was the worst performing in the VQSR Gaussian mixture model",
    ),
    ("END", "1", "Integer", "Stop position of the interval"),
    ("SVTYPE", "1", "String", "Type of structural variant"),
    ("LAB", "1", "String", "Submitting laboratory, as written in the submission (Latin-1)"),
    ("CLNSIG", ".", "String", "Clinical significance for this single variant"),
    ("GENE", ".", "String", "Overlapping gene symbol(s)"),
]
FORMAT_LINES = [
    ("AD", "R", "Integer", "Allelic depths for the ref and alt alleles in the order listed"),
    (
        "DP",
        "1",
        "Integer",
        "Approximate read depth (reads with MQ=255 or with bad mates are filtered)",
    ),
    ("GQ", "1", "Integer", "Genotype Quality"),
    ("GT", "1", "String", "Genotype"),
    ("MIN_DP", "1", "Integer", "Minimum DP observed within the GVCF block"),
    ("PGT", "1", "String", "Physical phasing haplotype information"),
    ("PID", "1", "String", "Physical phasing ID information"),
    (
        "PL",
        "G",
        "Integer",
        "Normalized, Phred-scaled likelihoods for genotypes as defined in the VCF specification",
    ),
    ("PS", "1", "Integer", "Phasing set (typically the position of the first variant in the set)"),
    (
        "SB",
        "4",
        "Integer",
        "Per-sample component statistics which comprise the Fisher's Exact Test",
    ),
]
FILTER_LINES = [
    ("LowQual", "Low quality"),
    (
        "VQSRTrancheSNP99.90to100.00",
        "Truth sensitivity tranche level for SNP model at VQS Lod < -10.4",
    ),
    (
        "VQSRTrancheINDEL99.00to100.00",
        "Truth sensitivity tranche level for INDEL model at VQS Lod < -2.1",
    ),
    ("ExcessHet", "Site has excess het compared to Hardy-Weinberg expectations"),
    ("lowDP", "Site depth below 10 in all samples"),
]


def vcf_header(samples: list[str], *, long: bool) -> list[str]:
    lines = [
        "##fileformat=VCFv4.2",
        "##fileDate=20240611",
        "##source=GenotypeGVCFs",
        "##reference=file:///references/GRCh38_full_analysis_set_plus_decoy_hla.fa",
    ]
    lines += ['##FILTER=<ID=PASS,Description="All filters passed">']
    lines += [f'##FILTER=<ID={i},Description="{d}">' for i, d in FILTER_LINES[: 5 if long else 1]]
    lines += ['##ALT=<ID=NON_REF,Description="Represents any possible alternative allele">']
    if long:
        lines += [
            '##ALT=<ID=DEL,Description="Deletion relative to the reference">',
            '##ALT=<ID=DUP,Description="Region of elevated copy number relative to the reference">',
        ]
    for ident, number, kind, desc in FORMAT_LINES if long else FORMAT_LINES[1:4:2]:
        lines.append(f'##FORMAT=<ID={ident},Number={number},Type={kind},Description="{desc}">')
    for ident, number, kind, desc in INFO_LINES if long else INFO_LINES[:3] + INFO_LINES[5:6]:
        lines.append(f'##INFO=<ID={ident},Number={number},Type={kind},Description="{desc}">')
    if long:
        lines += [
            '##GATKCommandLine=<ID=GenotypeGVCFs,CommandLine="GenotypeGVCFs --output trio.vcf.gz '
            '--variant gendb://trio_db --reference GRCh38.fa",Version="4.2.6.1">',
            '##GATKCommandLine=<ID=ApplyVQSR,CommandLine="ApplyVQSR --mode SNP '
            '--truth-sensitivity-filter-level 99.9",Version="4.2.6.1">',
            "##bcftools_annotateVersion=1.16+htslib-1.16",
            "##bcftools_annotateCommand=annotate -a clinvar.vcf.gz -c INFO/CLNSIG trio.vcf.gz",
            "##PEDIGREE=<Child=NA12878,Father=NA12891,Mother=NA12892>",
            '##SAMPLE=<ID=NA12878,Description="CEPH/UTAH pedigree 1463 daughter">',
            '##SAMPLE=<ID=NA12891,Description="CEPH/UTAH pedigree 1463 father">',
            '##SAMPLE=<ID=NA12892,Description="CEPH/UTAH pedigree 1463 mother">',
        ]
    lines += [f"##contig=<ID={c},length={n},assembly=GRCh38>" for c, n in GRCH38.items()]
    lines.append(
        "#"
        + "\t".join(
            ["CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *samples]
        )
    )
    return lines


def alleles(rng: random.Random) -> tuple[str, str]:
    ref = rng.choice("ACGT")
    roll = rng.random()
    if roll < 0.80:
        return ref, rng.choice([b for b in "ACGT" if b != ref])
    if roll < 0.88:
        return ref, ref + "".join(rng.choices("ACGT", k=rng.randint(1, 8)))
    if roll < 0.96:
        return ref + "".join(rng.choices("ACGT", k=rng.randint(1, 12))), ref
    return ref, ",".join(rng.sample([b for b in "ACGT" if b != ref], 2))


def genotype(rng: random.Random, n_alt: int) -> str:
    if rng.random() < 0.03:
        return "./."
    codes = [0, 0, 1] if n_alt == 1 else [0, 1, 2]
    a, b = sorted(rng.choice(codes) for _ in range(2))
    return f"{a}/{b}"


def long_vcf_record(rng: random.Random) -> str:
    contig = pick_contig(rng, AUTOSOMES_X, GRCH38)
    pos = rng.randint(10_000, GRCH38[contig] - 10_000)
    ref, alt = alleles(rng)
    n_alt = alt.count(",") + 1
    dbsnp = rng.random() < 0.7
    qual = round(rng.lognormvariate(6, 1.2), 2)
    filt = rng.choices(
        ["PASS", "LowQual", "VQSRTrancheSNP99.90to100.00", "ExcessHet"], (90, 4, 5, 1)
    )[0]
    samples, ac, an, dp_total = [], [0] * n_alt, 0, 0
    for _ in TRIO:
        gt = genotype(rng, n_alt)
        dp = max(3, int(rng.gauss(32, 8)))
        dp_total += dp
        if gt == "./.":
            samples.append("./.:0,0:0:.:.")
            continue
        an += 2
        for allele in gt.split("/"):
            if allele != "0":
                ac[int(allele) - 1] += 1
        alt_depth = 0 if gt == "0/0" else dp // 2
        ad = ",".join([str(dp - alt_depth)] + [str(alt_depth)] * n_alt)
        n_pl = (n_alt + 1) * (n_alt + 2) // 2
        pl = ",".join(str(0 if i == 0 else rng.randint(20, 1500)) for i in range(n_pl))
        samples.append(f"{gt}:{ad}:{dp}:{min(99, rng.randint(10, 120))}:{pl}")
    info = [
        f"AC={','.join(map(str, ac))}",
        f"AF={','.join(f'{x / max(an, 1):.3f}' for x in ac)}",
        f"AN={an}",
    ]
    if dbsnp:
        info.append("DB")
    info += [
        f"DP={dp_total}",
        f"ExcessHet={rng.uniform(0, 4):.3f}",
        f"FS={rng.expovariate(0.5):.3f}",
        f"MQ={rng.gauss(59, 2):.2f}",
        f"QD={rng.uniform(2, 35):.2f}",
        f"SOR={rng.uniform(0.3, 3):.3f}",
        f"VQSLOD={rng.gauss(8, 4):.2f}",
        f"culprit={rng.choice(['MQ', 'FS', 'QD', 'SOR', 'MQRankSum'])}",
    ]
    if rng.random() < 0.06:
        info.append(f"CLNSIG={rng.choice(['Benign', 'Likely_benign', 'Uncertain_significance'])}")
    if rng.random() < 0.015:
        # Real submissions carry Latin-1 bytes; they must survive untouched.
        info.append("LAB=H\udcf4pital_Saint-Louis_G\udce9n\udce9tique")
    vid = f"rs{rng.randint(1_000, 1_200_000_000)}" if dbsnp else "."
    return "\t".join(
        [
            contig,
            str(pos),
            vid,
            ref,
            alt,
            f"{qual}",
            filt,
            ";".join(info),
            "GT:AD:DP:GQ:PL",
            *samples,
        ]
    )


def make_vcf(rng: random.Random, path: Path) -> None:
    lines = vcf_header(TRIO, long=True) + [long_vcf_record(rng) for _ in range(900)]
    write_text(path, lines)


def make_vcf_gz(rng: random.Random, path: Path) -> None:
    samples = ["HG00096", "HG00097", "HG00099", "HG00100"]
    lines = vcf_header(samples, long=False)
    for _ in range(2500):
        contig = pick_contig(rng, AUTOSOMES_X, GRCH38)
        pos = rng.randint(10_000, GRCH38[contig] - 10_000)
        ref, alt = alleles(rng)
        n_alt = alt.count(",") + 1
        calls = [f"{genotype(rng, n_alt)}:{max(2, int(rng.gauss(30, 9)))}" for _ in samples]
        an = 2 * sum(not c.startswith(".") for c in calls)
        lines.append(
            f"{contig}\t{pos}\t.\t{ref}\t{alt}\t{rng.uniform(30, 3000):.1f}\t"
            f"{'PASS' if rng.random() < 0.93 else 'LowQual'}\tAN={an};DP={rng.randint(40, 200)}\t"
            f"GT:DP\t" + "\t".join(calls)
        )
    bgzip_text(path, lines)


# ----------------------------------------------------------------------------- intervals


def make_bed(rng: random.Random, path: Path) -> None:
    lines = [
        "browser position chr7:127471196-127495720",
        "browser hide all",
        'track name="NA12878_enhancers" description="Predicted enhancers, GM12878" '
        'visibility=2 itemRgb="On" useScore=0',
    ]
    colours = {"strong": "255,0,0", "weak": "255,165,0", "poised": "0,0,255"}
    for i in range(1500):
        contig = pick_contig(rng, AUTOSOMES_X, GRCH38)
        start = rng.randint(10_000, GRCH38[contig] - 20_000)
        end = start + rng.randint(150, 4000)
        kind = rng.choice(list(colours))
        strand = rng.choice("+-.")
        lines.append(
            f"{contig}\t{start}\t{end}\tenh_{i:05d}_{kind}\t{rng.randint(0, 1000)}\t{strand}\t"
            f"{start}\t{end}\t{colours[kind]}"
        )
    write_text(path, lines[:3] + rng.sample(lines[3:], len(lines) - 3))


def make_long_contig_bed(rng: random.Random, path: Path) -> None:
    lines = []
    for i in range(900):
        contig = pick_contig(rng, list(BARLEY), BARLEY)
        # Half the regions past 2^29, where a TBI index cannot reach.
        low = 1 << 29 if rng.random() < 0.5 and BARLEY[contig] > (1 << 29) + 10_000 else 1
        start = rng.randint(low, BARLEY[contig] - 10_000)
        end = start + rng.randint(200, 8000)
        lines.append(
            f"{contig}\t{start}\t{end}\tHORVU.MOREX.r3.{contig[3:]}G{i:07d}\t"
            f"{rng.randint(0, 1000)}\t{rng.choice('+-')}"
        )
    write_text(path, lines)


def gene_models(rng: random.Random, count: int, prefix: int) -> Iterator[dict]:
    """Plausible genes: position, strand, ids and transcripts made of sorted exons."""
    for g in range(count):
        contig = pick_contig(rng, AUTOSOMES_X, GRCH38)
        start = rng.randint(100_000, GRCH38[contig] - 300_000)
        transcripts = []
        for t in range(1 if rng.random() < 0.75 else 2):
            exons, cursor = [], start + rng.randint(0, 2000) * t
            for _ in range(rng.randint(2, 6)):
                length = rng.randint(80, 400)
                exons.append((cursor, cursor + length - 1))
                cursor += length + rng.randint(300, 12000)
            transcripts.append((f"ENST{prefix + g * 10 + t:011d}", exons))
        end = max(e[-1][1] for _, e in transcripts)
        yield {
            "contig": contig,
            "start": start,
            "end": end,
            "strand": rng.choice("+-"),
            "id": f"ENSG{prefix + g:011d}",
            "name": f"{rng.choice(['ZNF', 'SLC', 'KIAA', 'TMEM', 'CCDC'])}{rng.randint(1, 999)}",
            "biotype": rng.choice(["protein_coding"] * 4 + ["lncRNA"]),
            "transcripts": transcripts,
        }


def gff3_block(gene: dict) -> list[str]:
    c, s = gene["contig"], gene["strand"]
    lines = [
        f"{c}\tensembl_havana\tgene\t{gene['start']}\t{gene['end']}\t.\t{s}\t.\t"
        f"ID=gene:{gene['id']};Name={gene['name']};biotype={gene['biotype']};gene_id={gene['id']};version=7"
    ]
    for tid, exons in gene["transcripts"]:
        kind = "mRNA" if gene["biotype"] == "protein_coding" else "lnc_RNA"
        lines.append(
            f"{c}\thavana\t{kind}\t{exons[0][0]}\t{exons[-1][1]}\t.\t{s}\t.\t"
            f"ID=transcript:{tid};Parent=gene:{gene['id']};Name={gene['name']}-201;"
            f"biotype={gene['biotype']};transcript_id={tid};version=3"
        )
        for n, (a, b) in enumerate(exons, 1):
            lines.append(
                f"{c}\thavana\texon\t{a}\t{b}\t.\t{s}\t.\tParent=transcript:{tid};"
                f"Name=ENSE{int(tid[4:]) * 10 + n:011d};exon_number={n};rank={n}"
            )
            if kind == "mRNA":
                lines.append(
                    f"{c}\thavana\tCDS\t{a}\t{b}\t.\t{s}\t{n % 3}\tID=CDS:ENSP{tid[4:]};"
                    f"Parent=transcript:{tid};protein_id=ENSP{tid[4:]}"
                )
    return lines


def make_gff3(rng: random.Random, path: Path) -> None:
    lines = ["##gff-version 3", "#!genome-build GRCh38.p14", "#!genome-version GRCh38"]
    lines += [f"##sequence-region   {c} 1 {n}" for c, n in GRCH38.items() if c != "chrM"]
    blocks = [gff3_block(g) for g in gene_models(rng, 110, 100_000)]
    rng.shuffle(blocks)
    for block in blocks:
        lines += [*block, "###"]
    write_text(path, lines)


def gtf_block(gene: dict) -> list[str]:
    c, s = gene["contig"], gene["strand"]
    base = (
        f'gene_id "{gene["id"]}"; gene_version "7"; gene_name "{gene["name"]}"; '
        f'gene_source "ensembl_havana"; gene_biotype "{gene["biotype"]}";'
    )
    lines = [f"{c}\tensembl_havana\tgene\t{gene['start']}\t{gene['end']}\t.\t{s}\t.\t{base}"]
    for tid, exons in gene["transcripts"]:
        tx = f'{base[:-1]}; transcript_id "{tid}"; transcript_version "3"; tag "basic";'
        lines.append(f"{c}\thavana\ttranscript\t{exons[0][0]}\t{exons[-1][1]}\t.\t{s}\t.\t{tx}")
        for n, (a, b) in enumerate(exons, 1):
            ex = f'{tx} exon_number "{n}"; exon_id "ENSE{int(tid[4:]) * 10 + n:011d}";'
            lines.append(f"{c}\thavana\texon\t{a}\t{b}\t.\t{s}\t.\t{ex}")
            if gene["biotype"] == "protein_coding":
                lines.append(
                    f'{c}\thavana\tCDS\t{a}\t{b}\t.\t{s}\t{n % 3}\t{ex} protein_id "ENSP{tid[4:]}";'
                )
    return lines


def make_gtf(rng: random.Random, path: Path) -> None:
    lines = [
        "#!genome-build GRCh38.p14",
        "#!genome-version GRCh38",
        "#!genome-date 2013-12",
        "#!genome-build-accession GCA_000001405.29",
        "#!genebuild-last-updated 2023-03",
    ]
    # Sorted by gene id, as many annotation exports are: not by position.
    for gene in sorted(gene_models(rng, 50, 200_000), key=lambda g: g["name"]):
        lines += gtf_block(gene)
    write_text(path, lines)


def peaks(rng: random.Random, count: int, name: str, *, narrow: bool) -> list[str]:
    lines = []
    for i in range(count):
        contig = pick_contig(rng, AUTOSOMES_X, GRCH38)
        start = rng.randint(10_000, GRCH38[contig] - 20_000)
        width = rng.randint(200, 2500) if narrow else rng.randint(1000, 40_000)
        signal = rng.lognormvariate(1.6, 0.6)
        p = rng.uniform(3, 80)
        q = max(0.0, p - rng.uniform(0.5, 3))
        row = (
            f"{contig}\t{start}\t{start + width}\t{name}_peak_{i + 1}\t"
            f"{min(1000, int(p * 10))}\t.\t{signal:.5f}\t{p:.5f}\t{q:.5f}"
        )
        lines.append(f"{row}\t{rng.randint(50, width - 50)}" if narrow else row)
    return lines


def make_narrow_peak(rng: random.Random, path: Path) -> None:
    write_text(path, peaks(rng, 1000, "NA12878_H3K27ac", narrow=True))


def make_broad_peak(rng: random.Random, path: Path) -> None:
    write_text(path, peaks(rng, 700, "NA12878_H3K27me3", narrow=False))


CCRE_AUTOSQL = """table ccre
"Candidate cis-regulatory elements (BED6)"
(
    string chrom;      "Reference sequence chromosome or scaffold"
    uint   chromStart; "Start position in chromosome"
    uint   chromEnd;   "End position in chromosome"
    string name;       "Element accession"
    uint   score;      "Score from 0-1000"
    char[1] strand;    "+, - or ."
)
"""


def make_bigbed(rng: random.Random, path: Path) -> None:
    rows = []
    for i in range(2500):
        contig = pick_contig(rng, AUTOSOMES_X, GRCH38)
        start = rng.randint(10_000, GRCH38[contig] - 20_000)
        rest = f"ccre_{i:05d}\t{rng.randint(0, 1000)}\t{rng.choice('+-.')}"
        rows.append((contig, start, start + rng.randint(150, 350), rest))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    chroms = {c: GRCH38[c] for c in sorted({r[0] for r in rows})}
    pybigtools.open(str(path), "w").write(chroms, iter(rows), autosql=CCRE_AUTOSQL)


def make_bigwig(rng: random.Random, path: Path) -> None:
    rows = []
    for contig in ("chr1", "chr7", "chr17", "chrX"):
        pos = rng.randint(1_000_000, 5_000_000)
        level = 5.0
        for _ in range(1200):
            width = rng.choice((25, 50, 50, 100))
            level = max(0.0, level + rng.gauss(0, 1.5))
            rows.append((contig, pos, pos + width, round(level, 3)))
            pos += width + rng.choice((0, 0, 0, 25, 200))
    rows.sort(key=lambda r: (r[0], r[1]))
    chroms = {c: GRCH38[c] for c in sorted({r[0] for r in rows})}
    pybigtools.open(str(path), "w").write(chroms, iter(rows))


# ----------------------------------------------------------------------------- tables

SAMPLE_SHEET = [
    ("NA12878", "NA12878", "F", "LCL", "WGS", 76, "sample1.sam"),
    ("NA12891", "NA12891", "M", "LCL", "WGS", 100, "sample2.sam.gz"),
    ("NA12892", "NA12892", "F", "LCL", "WGS", 150, "sample3.bam"),
    ("NA12878_H3K27ac", "NA12878", "F", "LCL", "ChIP-seq", 50, "sample1_H3K27ac_peaks.narrowPeak"),
    ("NA12878_H3K27me3", "NA12878", "F", "LCL", "ChIP-seq", 50, "sample1_H3K27me3_peaks.broadPeak"),
    ("NA12878_RNA", "NA12878", "F", "LCL", "RNA-seq", 100, "expression_counts.txt"),
]


def make_csv(rng: random.Random, path: Path) -> None:
    lines = ["sample_id,individual,sex,tissue,assay,library_id,platform,read_length,file,notes"]
    for i, (sid, ind, sex, tissue, assay, length, name) in enumerate(SAMPLE_SHEET):
        note = '"CEPH/Utah pedigree 1463, Coriell"' if rng.random() < 0.5 else ""
        lines.append(
            f"{sid},{ind},{sex},{tissue},{assay},LIB{4100 + i},ILLUMINA,{length},{name},{note}"
        )
    write_text(path, lines)


def make_tsv(rng: random.Random, path: Path) -> None:
    samples = ["NA12878_r1", "NA12878_r2", "NA12891_r1", "NA12891_r2", "NA12892_r1", "NA12892_r2"]
    lines = ["gene_id\tgene_name\t" + "\t".join(samples)]
    for g in range(450):
        mean = rng.lognormvariate(4, 2)
        counts = "\t".join(str(max(0, int(rng.gauss(mean, mean * 0.2 + 1)))) for _ in samples)
        lines.append(f"ENSG{300_000 + g:011d}\tGENE{g + 1}\t{counts}")
    write_text(path, lines)


# ----------------------------------------------------------------------------- manifest

# (file, builder, sample, assay, explicit format)
FILES: list[tuple[str, Callable[[random.Random, Path], None], str, str, str]] = [
    ("sample1.sam", make_sam, "NA12878", "WGS", ""),
    ("sample2.sam.gz", make_sam_gz, "NA12891", "WGS", "sam"),
    ("sample3.bam", make_bam, "NA12892", "WGS", ""),
    ("trio.vcf", make_vcf, "NA12878;NA12891;NA12892", "WGS", ""),
    ("cohort.vcf.gz", make_vcf_gz, "HG00096;HG00097;HG00099;HG00100", "WGS", ""),
    ("enhancers.bed", make_bed, "NA12878", "annotation", ""),
    ("barley_regions.bed", make_long_contig_bed, "Morex", "annotation", ""),
    ("genes.gff3", make_gff3, "GRCh38", "annotation", ""),
    ("genes.gtf", make_gtf, "GRCh38", "annotation", ""),
    ("sample1_H3K27ac_peaks.narrowPeak", make_narrow_peak, "NA12878", "ChIP-seq", ""),
    ("sample1_H3K27me3_peaks.broadPeak", make_broad_peak, "NA12878", "ChIP-seq", ""),
    ("ccres.bb", make_bigbed, "GRCh38", "annotation", ""),
    ("coverage.bw", make_bigwig, "NA12878", "ChIP-seq", ""),
    ("samples.csv", make_csv, "", "metadata", ""),
    ("expression_counts.txt", make_tsv, "NA12878;NA12891;NA12892", "RNA-seq", "tsv"),
]
# A byte-identical copy under another name: two manifest rows, one md5 (replicas of one source).
MIRROR = ("mirror/H3K27ac_rep1.narrowPeak", "sample1_H3K27ac_peaks.narrowPeak")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def main() -> None:
    if DEMO.exists():
        shutil.rmtree(DEMO)
    DEMO.mkdir(parents=True)
    MANIFEST.parent.mkdir(parents=True, exist_ok=True)
    rows = ["name\turi\tmd5\tformat\tsize\tsample\tassay"]
    for index, (name, build, sample, assay, fmt) in enumerate(FILES):
        # One generator per file, so editing one builder leaves the other files unchanged.
        build(random.Random(SEED + index), DEMO / name)
        path = DEMO / name
        rows.append(
            f"{name}\tdemo/{name}\t{md5(path)}\t{fmt}\t{path.stat().st_size}\t{sample}\t{assay}"
        )
    copy, original = MIRROR
    (DEMO / copy).parent.mkdir()
    shutil.copyfile(DEMO / original, DEMO / copy)
    path = DEMO / copy
    rows.append(
        f"H3K27ac_rep1.narrowPeak\tdemo/{copy}\t{md5(path)}\t\t{path.stat().st_size}\tNA12878\tChIP-seq"
    )
    write_text(MANIFEST, rows)
    total = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    print(f"wrote {len(rows) - 1} manifest rows, {total / 1e6:.2f} MB under {DEMO}")


if __name__ == "__main__":
    main()
