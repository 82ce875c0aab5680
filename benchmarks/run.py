"""Time genoflow's processors against the reference command lines on the same large inputs.

Invariant: both sides of a comparison see the same input, memory cap and thread count, run as
a child process in a fresh work folder of their own, and are measured the same way: wall clock
around the child, CPU (user + sys) and the largest single process's peak RSS from ``os.wait4``
(which covers the child and every descendant it waited for), plus the peak of the summed RSS of
every process in the child's session, sampled every 50 ms. Sides alternate (genoflow first on
even repeats, the reference first on odd ones) and the table reports medians. A last run checks
genoflow's total memory on a ~1 GB input against the cap plus 200 MB.

Usage: ``python benchmarks/run.py [--families bam,vcf,bed] [--scale 0.1] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import endtoend
import pipeline
from measure import Run, measure, terminate
from report import report

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
FORMAT = {"bam": "bam", "vcf": "vcf", "bed": "bed"}
TOOLS = ("samtools", "bgzip", "tabix", "sort", "grep", "bash", "bcftools")
SIDES = {"vcf": ("genoflow", "reference", "bcftools")}


def reference_command(
    family: str, src: Path, *, memory: int, threads: int, side: str = "reference"
) -> str:
    """The shell pipeline a bioinformatician would type, with the same memory and threads.

    ``side="bcftools"`` (VCF only) is the other pipeline a VCF user would type:
    ``bcftools sort -Oz`` then ``tabix``; the report compares genoflow with the faster of the two.
    """
    cap = f"{memory >> 20}M" if memory % (1 << 20) == 0 else f"{memory}b"
    sort = f"LC_ALL=C sort -k1,1 -k2,2n -S {cap} --parallel={threads} -T tmp"
    q = shlex.quote(str(src))
    if family == "bam":
        per_thread = f"{max(1, memory // threads) >> 20}M"
        return (
            f"samtools sort -@{threads} -m {per_thread} -T tmp/sort -o out.bam {q}"
            f" && samtools index -@{threads} out.bam"
        )
    if family == "vcf" and side == "bcftools":
        return (
            f"bcftools sort -m {cap} -T tmp/bcftools -Oz -o out.vcf.gz {q}"
            " && tabix -p vcf out.vcf.gz"
        )
    if family == "vcf":
        return (
            f"(grep '^#' {q}; grep -v '^#' {q} | {sort}) | bgzip -@{threads} > out.vcf.gz"
            " && tabix -p vcf out.vcf.gz"
        )
    return f"{sort} {q} | bgzip -@{threads} > out.bed.gz && tabix -p bed out.bed.gz"


def genoflow_command(family: str, src: Path, *, memory: int, threads: int) -> list[str]:
    spec = {"family": family, "src": str(src), "memory": memory, "threads": threads}
    return [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]


def child(spec: dict) -> None:
    """Run genoflow's sort then index on one input, in the current folder (the genoflow side).

    Writes ``engine.json``: which engine each step used and the tools' versions.
    """
    src, threads, memory = Path(spec["src"]), spec["threads"], spec["memory"]
    work = Path.cwd()
    for sub in ("tmp", "sorted", "index"):
        (work / sub).mkdir(exist_ok=True)
    if spec["family"] == "bam":
        from genoflow.processors.alignments import index_alignments, sort_alignments

        done = sort_alignments(
            src, work / "sorted", work_dir=work / "tmp", memory=memory, threads=threads,
            name=src.name,
        )  # fmt: skip
        index = index_alignments(done.files[0], work / "index", threads=threads, name=src.name)
    else:
        from genoflow.processors.intervals import index_intervals, sort_intervals

        fmt = FORMAT[spec["family"]]
        done = sort_intervals(
            src, work / "sorted", fmt=fmt, work_dir=work / "tmp", memory=memory,
            threads=threads, name=src.name,
        )  # fmt: skip
        index = index_intervals(
            done.files[0], work / "index", fmt=fmt, name=src.name, threads=threads
        )
    facts = {
        key: {k: step.metadata.get(k) for k in ("engine", "engine_versions", "sort_path")}
        for key, step in (("sort", done), ("index", index))
    }
    (work / "engine.json").write_text(json.dumps(facts))


def run_side(family: str, side: str, repeat: int, src: Path, args: argparse.Namespace) -> Run:
    """Measure one side once in a fresh work folder, check its outputs, then delete them."""
    work = WORK / family / f"{side}-{repeat}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "tmp").mkdir(parents=True)
    env = None
    try:
        if side == "genoflow":
            argv = genoflow_command(family, src, memory=args.memory, threads=args.threads)
            env = {**os.environ, "GENOFLOW_ENGINE": args.engine}
        else:
            cmd = reference_command(
                family, src, memory=args.memory, threads=args.threads, side=side
            )
            argv = ["bash", "-o", "pipefail", "-c", cmd]
        wall, cpu, rss, tree, error = measure(argv, cwd=work, timeout=args.timeout, env=env)
        engine = _engine_of(work) if side == "genoflow" and error is None else ""
        outputs = [
            p for p in work.rglob("*")
            if p.is_file() and p.suffix not in (".log", ".json") and (work / "tmp") not in p.parents
        ]  # fmt: skip
        if error is None and not any(p.name.endswith((".bai", ".csi", ".tbi")) for p in outputs):
            error = "finished without writing an index"
        # A hard link shares its bytes with the file it links to: count each inode once.
        out_mb = sum({p.stat().st_ino: p.stat().st_size for p in outputs}.values()) / 1e6
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Run(family, side, repeat, wall, cpu, rss, out_mb, tree, engine, error)


def _engine_of(work: Path) -> str:
    """``htslib-cli (bgzip 1.16, tabix 1.16)``, from the genoflow side's ``engine.json``."""
    facts = json.loads((work / "engine.json").read_text())["sort"]
    versions = ", ".join(f"{tool} {v}" for tool, v in (facts["engine_versions"] or {}).items())
    path = f"; {facts['sort_path']} sort" if facts.get("sort_path") else ""
    return f"{facts['engine']} ({versions}){path}"


def parse_args(argv: list[str]) -> argparse.Namespace:
    from genoflow.core.settings import parse_memory

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="bam,vcf,bed", help="comma-separated subset")
    parser.add_argument("--scale", type=float, default=1.0, help="input size, 1 = full size")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per side")
    parser.add_argument("--memory", default="512M", help="memory cap per side (e.g. 512M)")
    parser.add_argument("--threads", type=int, default=2, help="threads per side")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per command")
    parser.add_argument("--output", type=Path, default=HERE / "results.md")
    parser.add_argument(
        "--engine", default="auto", choices=("auto", "htslib-cli", "pysam"),
        help="GENOFLOW_ENGINE for the genoflow side",
    )  # fmt: skip
    parser.add_argument(
        "--peak-family", default="bed", choices=(*FORMAT, "none"),
        help="family whose large input checks the memory cap (none: skip the check)",
    )  # fmt: skip
    parser.add_argument(
        "--peak-scale", type=float, default=7.0, help="size of that input (7 = ~1 GB of BED)"
    )
    parser.add_argument(
        "--pipeline", default="cache,small", help="genoflow run checks: cache, small, or none"
    )
    parser.add_argument(
        "--small-files", type=int, default=200, help="files in the many-small-files run"
    )
    parser.add_argument("--small-jobs", type=int, default=2, help="its genoflow run --jobs")
    parser.add_argument(
        "--end-to-end", default="bam=0.66,vcf=1,bed=1.33", metavar="SIZES",
        help="genoflow run vs the reference pipeline: family=scale,... or one scale for all "
        "(~200 MB each by default); none skips it",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true",
        help="a few-minute smoke run: scale 0.1, 1 repeat, no memory or cache-hit check, "
        "50 small files",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.scale, args.repeats, args.peak_family = 0.1, 1, "none"
        args.end_to_end, args.pipeline, args.small_files = "0.1", "small", 50
    args.end_to_end = {} if args.end_to_end == "none" else endtoend.parse_sizes(args.end_to_end)
    args.memory, args.argv = parse_memory(args.memory), argv
    args.families = args.families.split(",")
    unknown = [f for f in args.families if f not in FORMAT]
    if unknown or args.repeats < 1 or args.threads < 1:
        parser.error(f"choose families from {', '.join(FORMAT)}; repeats and threads >= 1")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        parser.error(f"reference tools not on PATH: {', '.join(missing)} (apt-get install "
                     "samtools tabix bcftools coreutils grep)")  # fmt: skip
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        child(json.loads(argv[1]))
        return 0
    args = parse_args(argv)
    from generate import ensure_input

    # Turn SIGTERM (e.g. from `timeout`) into an exception, so measure() stops the child's group.
    signal.signal(signal.SIGTERM, terminate)

    runs: list[Run] = []
    inputs: dict[str, str] = {}
    for family in args.families:
        src = ensure_input(family, scale=args.scale)
        meta = json.loads(src.with_name(src.name + ".json").read_text())
        inputs[family] = f"{family.upper()} sort+index, {meta['size'] / 1e6:.0f} MB"
        for repeat in range(args.repeats):
            sides = SIDES.get(family, ("genoflow", "reference"))
            # Rotate which side goes first, so none always gets the warmer page cache.
            order = sides[repeat % len(sides) :] + sides[: repeat % len(sides)]
            for side in order:
                run = run_side(family, side, repeat, src, args)
                runs.append(run)
                status = f"FAILED {run.error}" if run.error else f"{run.wall:.1f} s"
                print(f"{family} #{repeat} {side}: {status}", flush=True)
        shutil.rmtree(WORK / family, ignore_errors=True)
    e2e_runs, e2e_labels = endtoend.run_endtoend(args, ensure_input)
    e2e = endtoend.endtoend_section(e2e_runs, e2e_labels, args)
    peak = peak_memory(args, ensure_input)
    checks = args.pipeline.split(",")
    hit = pipeline.cache_hit(args, ensure_input) if "cache" in checks else None
    if hit is not None:
        print(f"cache hit: cold {hit.cold_wall:.1f} s, re-run {hit.warm_wall:.1f} s", flush=True)
    small = pipeline.small_files(args) if "small" in checks else None
    if small is not None:
        print(f"{small.files} small files: {small.wall:.1f} s", flush=True)
    text = report(runs, inputs, args, peak, hit, small, e2e)
    from serve import kept_section  # serve.py's section of the same file survives this run

    args.output.write_text(text + kept_section(args.output))
    print(text)
    failed = any(r.error for r in runs) or (peak is not None and peak[0].error is not None)
    failed = failed or any(x is not None and x.error for x in (hit, small, *e2e_runs))
    return 1 if failed else 0


def peak_memory(args: argparse.Namespace, ensure_input: Any) -> tuple[Run, str] | None:
    """Run the genoflow side once on the large input; return the run and the input's label."""
    if args.peak_family == "none":
        return None
    src = ensure_input(args.peak_family, scale=args.peak_scale)
    size = src.stat().st_size / 1e6
    run = run_side(args.peak_family, "genoflow", 0, src, args)
    shutil.rmtree(WORK / args.peak_family, ignore_errors=True)
    status = f"FAILED {run.error}" if run.error else f"{run.wall:.1f} s, {run.tree_mb:.0f} MB"
    print(f"peak memory {args.peak_family} {size:.0f} MB: {status}", flush=True)
    return run, f"{args.peak_family.upper()} sort+index, {size:.0f} MB"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
