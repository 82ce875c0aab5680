"""Time ``genoflow run`` end to end: a re-run of a built manifest, and many small files.

Invariant: each measurement uses a fresh ``GENOFLOW_HOME`` (cache, registry, Dagster instance)
under ``benchmarks/work/pipeline/``, deleted afterwards, with the same memory cap, threads and
engine as the processor comparison. Nothing here calls genoflow in process: every number is a
``genoflow run`` child measured by :func:`measure.measure`.

- **cache hit**: ``genoflow run`` twice on a manifest of the large inputs (the BED one is the
  ~1 GB input of the memory check, so the manifest holds over 1 GB). The second run must report
  every asset ``cached``, leave every artifact file untouched (same inode, size and mtime: zero
  bytes re-sorted) and take at most 2 % of the first.
- **small files**: ``genoflow run --jobs J`` on N small BED files (a few hundred records each,
  each its own md5). Dagster's cost per file is the run's wall time beyond the sum of the
  processors' own times (sort + index of each file, measured alone in a warm child process),
  divided by N; each source's own run seconds (``genoflow run --json``) are shown too, though
  with J runs sharing the cores they count the waits for each other.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from measure import measure

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "pipeline"
GENOFLOW = Path(sys.executable).with_name("genoflow")
FORMAT = {"bam": "bam", "vcf": "vcf", "bed": "bed"}


@dataclass
class CacheHit:
    """The cold and the warm ``genoflow run`` of one manifest."""

    label: str
    cold_wall: float = 0.0
    cold_cpu: float = 0.0
    warm_wall: float = 0.0
    warm_cpu: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    artifacts: int = 0
    changed: int = 0
    error: str | None = None


@dataclass
class SmallFiles:
    """One ``genoflow run --jobs J`` over many small files."""

    files: int
    jobs: int
    wall: float = 0.0
    cpu: float = 0.0
    run_seconds: float = 0.0
    processor_seconds: float = 0.0
    error: str | None = None


def md5_of(path: Path) -> str:
    """The file's md5, remembered in its generator sidecar (``<file>.json``) once computed."""
    sidecar = path.with_name(path.name + ".json")
    meta = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    if meta.get("md5") and meta.get("size") == path.stat().st_size:
        return meta["md5"]
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    if meta:
        sidecar.write_text(json.dumps({**meta, "md5": digest.hexdigest()}))
    return digest.hexdigest()


def write_manifest(path: Path, sources: list[tuple[Path, str]]) -> Path:
    lines = ["name\turi\tmd5\tformat\tsize\n"]
    for src, fmt in sources:
        lines.append(f"{src.name}\t{src}\t{md5_of(src)}\t{fmt}\t{src.stat().st_size}\n")
    path.write_text("".join(lines))
    return path


def environment(home: Path, args: argparse.Namespace, inputs: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENOFLOW_", "DAGSTER_"))}
    env.update(
        GENOFLOW_HOME=str(home),
        GENOFLOW_ALLOWED_ROOTS=str(inputs),
        GENOFLOW_SORT_MEMORY=str(args.memory),
        GENOFLOW_THREADS=str(args.threads),
        GENOFLOW_ENGINE=args.engine,
    )
    return env


def genoflow_run(
    folder: Path, manifest: Path, env: dict[str, str], args: argparse.Namespace, jobs: int = 1
) -> tuple[float, float, list[dict], str | None]:
    """One measured ``genoflow run --json``: wall s, CPU s, its JSON records, any error."""
    argv = [str(GENOFLOW), "run", "--json", "--jobs", str(jobs), str(manifest)]
    wall, cpu, _, _, error = measure(argv, cwd=folder, timeout=args.timeout, env=env)
    text = (folder / "stdout.log").read_text()
    records: list[dict] = json.loads(text[text.index("[") :]) if "[" in text else []
    failed = [f"{r['name']}: {r['error']}" for r in records if r.get("error")]
    if error is not None and failed:
        error = f"{error}; {failed[0]}"
    return wall, cpu, records, error


def artifact_files(home: Path) -> dict[str, tuple[int, int, int]]:
    """Every file of the local cache: (inode, size, mtime) by path."""
    found = {}
    for path in sorted(home.rglob("*")):
        if path.is_file() and "cache" in path.relative_to(home).parts[:1]:
            stat = path.stat()
            found[str(path)] = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return found


def cache_hit(args: argparse.Namespace, ensure_input: object) -> CacheHit:
    """Build a manifest of the large inputs cold, then run it again."""
    scales = {family: args.scale for family in args.families}
    if args.peak_family in scales:  # its large input: the manifest holds over 1 GB
        scales[args.peak_family] = args.peak_scale
    sources = [(ensure_input(family, scale=scales[family]), FORMAT[family]) for family in scales]
    size = sum(src.stat().st_size for src, _ in sources) / 1e6
    result = CacheHit(f"{len(sources)} sources ({', '.join(args.families)}), {size:.0f} MB")
    folder = WORK / "cache-hit"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        env = environment(folder / "home", args, sources[0][0].parent)
        manifest = write_manifest(folder / "manifest.tsv", sources)
        result.cold_wall, result.cold_cpu, _, result.error = genoflow_run(
            folder, manifest, env, args
        )
        if result.error:
            return result
        before = artifact_files(folder / "home")
        result.warm_wall, result.warm_cpu, records, result.error = genoflow_run(
            folder, manifest, env, args
        )
        after = artifact_files(folder / "home")
        for record in records:
            for status in record["assets"].values():
                result.statuses[status] = result.statuses.get(status, 0) + 1
        result.artifacts = len(before)
        result.changed = sum(before.get(p) != stat for p, stat in after.items())
        result.changed += sum(p not in after for p in before)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def small_bed(path: Path, seed: int, records: int) -> Path:
    rng = random.Random(seed)
    lines = []
    for i in range(records):
        start = rng.randrange(10_000_000)
        contig = f"chr{rng.randint(1, 22)}"
        lines.append(f"{contig}\t{start}\t{start + rng.randint(1, 500)}\tr{seed}_{i}\t0\t+\n")
    path.write_text("".join(lines))
    return path


def small_files(args: argparse.Namespace) -> SmallFiles:
    """``genoflow run --jobs J`` over N small BED files, and the processors alone on one."""
    result = SmallFiles(args.small_files, args.small_jobs)
    folder = WORK / "small-files"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "inputs").mkdir(parents=True)
    try:
        files = [
            small_bed(folder / "inputs" / f"small_{i:04d}.bed", seed=i, records=300)
            for i in range(args.small_files)
        ]
        manifest = write_manifest(folder / "manifest.tsv", [(f, "bed") for f in files])
        env = environment(folder / "home", args, folder / "inputs")
        result.wall, result.cpu, records, result.error = genoflow_run(
            folder, manifest, env, args, jobs=args.small_jobs
        )
        if result.error:
            return result
        result.run_seconds = statistics.median(r["seconds"] for r in records)
        result.processor_seconds = processors_alone(folder, files[:20], args)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def processors_alone(folder: Path, files: list[Path], args: argparse.Namespace) -> float:
    """Median seconds of sort + index on one small file, in one warm child process."""
    spec = {"files": [str(f) for f in files], "memory": args.memory, "threads": args.threads}
    argv = [sys.executable, str(Path(__file__).resolve()), "--processors", json.dumps(spec)]
    env = {**os.environ, "GENOFLOW_ENGINE": args.engine}
    _, _, _, _, error = measure(argv, cwd=folder, timeout=args.timeout, env=env)
    if error:
        raise RuntimeError(f"processors alone failed: {error}")
    return float((folder / "stdout.log").read_text().split()[-1])


def _processors_child(spec: dict) -> None:
    import time

    from genoflow.processors.intervals import index_intervals, sort_intervals

    seconds = []
    for i, src in enumerate(map(Path, spec["files"])):
        work = Path.cwd() / f"p{i}"
        for sub in ("tmp", "sorted", "index"):
            (work / sub).mkdir(parents=True)
        began = time.perf_counter()
        done = sort_intervals(
            src, work / "sorted", fmt="bed", work_dir=work / "tmp", memory=spec["memory"],
            threads=spec["threads"], name=src.name,
        )  # fmt: skip
        index_intervals(done.files[0], work / "index", fmt="bed", name=src.name)
        seconds.append(time.perf_counter() - began)
        shutil.rmtree(work)
    # The first call pays for imports; the run's workers pay it once each, not per file.
    print(statistics.median(seconds[1:] or seconds))


def cache_section(hit: CacheHit | None) -> str:
    if hit is None:
        return ""
    if hit.error:
        return f"## Re-running a built manifest\n\nfailed: {hit.error}\n\n"
    ratio = hit.warm_wall / hit.cold_wall
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(hit.statuses.items()))
    verdict = "yes" if ratio <= 0.02 and hit.changed == 0 else "**no**"
    return (
        "## Re-running a built manifest (cache hit)\n\n"
        "`genoflow run` of a manifest of the large inputs into a fresh home, then the same "
        "command again.\n\n"
        "| manifest | cold wall s | cold CPU s | re-run wall s | re-run CPU s | re-run / cold "
        "| re-run assets | artifact files changed | within 2 % and none re-sorted |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |\n"
        f"| {hit.label} | {hit.cold_wall:.1f} | {hit.cold_cpu:.1f} | {hit.warm_wall:.1f} "
        f"| {hit.warm_cpu:.1f} | {100 * ratio:.1f} % | {statuses} "
        f"| {hit.changed} of {hit.artifacts} | {verdict} |\n\n"
    )


def small_section(small: SmallFiles | None) -> str:
    if small is None:
        return ""
    if small.error:
        return f"## Many small files\n\nfailed: {small.error}\n\n"
    processors = small.processor_seconds * small.files
    overhead = (small.wall - processors) / small.files
    verdict = "yes" if overhead <= 1.0 else "**no**"
    return (
        f"## Many small files\n\n`genoflow run --jobs {small.jobs}` of {small.files} BED "
        "files of 300 records each (each its own source) into a fresh home. Overhead per file = "
        "(wall − the processors' own seconds summed over the files) / files.\n\n"
        "| files | jobs | wall s | CPU s | processors alone s per file | overhead s per file "
        "| within 1 s | median run s per file |\n"
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |\n"
        f"| {small.files} | {small.jobs} | {small.wall:.1f} | {small.cpu:.1f} "
        f"| {small.processor_seconds:.3f} | {overhead:.2f} | {verdict} "
        f"| {small.run_seconds:.2f} |\n\n"
    )


if __name__ == "__main__" and sys.argv[1:2] == ["--processors"]:
    _processors_child(json.loads(sys.argv[2]))
