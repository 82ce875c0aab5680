"""Time genoflow's processors against the reference command lines on the same large inputs.

Invariant: both sides of a comparison see the same input, memory cap and thread count, run as
a child process in a fresh work folder of their own, and are measured the same way: wall clock
around the child, CPU (user + sys) and peak RSS from ``os.wait4``, which covers the child and
every descendant it waited for. Sides alternate (genoflow first on even repeats, the reference
first on odd ones) and the table reports medians.

Usage: ``python benchmarks/run.py [--families bam,vcf,bed] [--scale 0.1] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
FORMAT = {"bam": "bam", "vcf": "vcf", "bed": "bed"}
TOOLS = ("samtools", "bgzip", "tabix", "sort", "grep", "bash")


@dataclass(frozen=True)
class Run:
    """One measured execution of one side."""

    family: str
    side: str
    repeat: int
    wall: float
    cpu: float
    rss_mb: float
    out_mb: float
    error: str | None = None


def reference_command(family: str, src: Path, *, memory: int, threads: int) -> str:
    """The shell pipeline a bioinformatician would type, with the same memory and threads."""
    cap = f"{memory >> 20}M" if memory % (1 << 20) == 0 else f"{memory}b"
    sort = f"LC_ALL=C sort -k1,1 -k2,2n -S {cap} --parallel={threads} -T tmp"
    q = shlex.quote(str(src))
    if family == "bam":
        per_thread = f"{max(1, memory // threads) >> 20}M"
        return (
            f"samtools sort -@{threads} -m {per_thread} -T tmp/sort -o out.bam {q}"
            f" && samtools index -@{threads} out.bam"
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
    """Run genoflow's sort then index on one input, in the current folder (the genoflow side)."""
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
        index_alignments(done.files[0], work / "index", threads=threads, name=src.name)
    else:
        from genoflow.processors.intervals import index_intervals, sort_intervals

        fmt = FORMAT[spec["family"]]
        done = sort_intervals(
            src, work / "sorted", fmt=fmt, work_dir=work / "tmp", memory=memory,
            threads=threads, name=src.name,
        )  # fmt: skip
        index_intervals(done.files[0], work / "index", fmt=fmt, name=src.name)


def _terminate(signum: int, frame: object) -> None:
    # `timeout` signals both the process and its group: ignore the repeat so cleanup can finish.
    signal.signal(signum, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def _kill_group(pid: int) -> None:
    # A group that has already exited leaves nothing to stop.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def measure(
    argv: list[str], *, cwd: Path, timeout: float
) -> tuple[float, float, float, str | None]:
    """Run ``argv`` in its own process group; return wall s, CPU s, peak RSS MB and any error."""
    with open(cwd / "stdout.log", "wb") as out, open(cwd / "stderr.log", "wb") as err:
        began = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=err, start_new_session=True)
        timer = threading.Timer(timeout, _kill_group, (proc.pid,))
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            _kill_group(proc.pid)
            raise
        finally:
            timer.cancel()
        wall = time.perf_counter() - began
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    error = None
    if code != 0:
        tail = (cwd / "stderr.log").read_bytes()[-600:].decode("utf-8", "replace").strip()
        reason = f"killed after {timeout:g} s" if wall >= timeout else f"exit {code}"
        error = f"{reason}: {tail.splitlines()[-1] if tail else 'no message'}"
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, error


def run_side(family: str, side: str, repeat: int, src: Path, args: argparse.Namespace) -> Run:
    """Measure one side once in a fresh work folder, check its outputs, then delete them."""
    work = WORK / family / f"{side}-{repeat}"
    shutil.rmtree(work, ignore_errors=True)
    (work / "tmp").mkdir(parents=True)
    try:
        if side == "genoflow":
            argv = genoflow_command(family, src, memory=args.memory, threads=args.threads)
        else:
            cmd = reference_command(family, src, memory=args.memory, threads=args.threads)
            argv = ["bash", "-o", "pipefail", "-c", cmd]
        wall, cpu, rss, error = measure(argv, cwd=work, timeout=args.timeout)
        outputs = [
            p for p in work.rglob("*")
            if p.is_file() and p.suffix != ".log" and (work / "tmp") not in p.parents
        ]  # fmt: skip
        if error is None and not any(p.name.endswith((".bai", ".csi", ".tbi")) for p in outputs):
            error = "finished without writing an index"
        # A hard link shares its bytes with the file it links to: count each inode once.
        out_mb = sum({p.stat().st_ino: p.stat().st_size for p in outputs}.values()) / 1e6
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Run(family, side, repeat, wall, cpu, rss, out_mb, error)


def fmt_ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "–"


def table(runs: list[Run], inputs: dict[str, str]) -> str:
    """Median per family and side, with genoflow/reference ratios on the genoflow row."""
    lines = [
        "| work | side | wall s | CPU s | peak RSS MB | output MB "
        "| ratio wall | ratio CPU | ratio RSS |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for family in dict.fromkeys(r.family for r in runs):
        med = {}
        for side in ("genoflow", "reference"):
            ok = [r for r in runs if r.family == family and r.side == side and r.error is None]
            if ok:
                med[side] = [statistics.median(getattr(r, k) for r in ok) for k in
                             ("wall", "cpu", "rss_mb", "out_mb")]  # fmt: skip
        for side in ("genoflow", "reference"):
            if side not in med:
                lines.append(f"| {inputs[family]} | {side} | failed | | | | | | |")
                continue
            wall, cpu, rss, out = med[side]
            ratios = " | ".join([""] * 3)
            if side == "genoflow" and "reference" in med:
                ref = med["reference"]
                ratios = " | ".join(
                    fmt_ratio(m, r) for m, r in zip(med[side][:3], ref[:3], strict=True)
                )
            lines.append(
                f"| {inputs[family]} | {side} | {wall:.1f} | {cpu:.1f} | {rss:.0f} | {out:.1f} "
                f"| {ratios} |"
            )
    return "\n".join(lines)


def raw_table(runs: list[Run]) -> str:
    lines = [
        "| family | repeat | side | wall s | CPU s | peak RSS MB | error |",
        "| --- " * 7 + "|",
    ]
    for r in runs:
        lines.append(
            f"| {r.family} | {r.repeat} | {r.side} | {r.wall:.1f} | {r.cpu:.1f} | "
            f"{r.rss_mb:.0f} | {r.error or ''} |"
        )
    return "\n".join(lines)


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    except OSError as exc:
        return f"unavailable ({exc.strerror})"
    # Version banners are not always UTF-8 (samtools prints a Latin-1 copyright sign).
    text = (done.stdout or done.stderr).decode("utf-8", "replace")
    return text.splitlines()[0] if text else "?"


def machine() -> list[str]:
    """Facts about this machine and the tools on both sides, one markdown bullet each."""
    import pysam.version

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines()
                  if ln.startswith("model name")), platform.processor() or "?")  # fmt: skip
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem_kb = next((int(ln.split()[1]) for ln in meminfo.splitlines()
                   if ln.startswith("MemTotal")), 0)  # fmt: skip
    return [
        f"CPU: {model}, {os.cpu_count()} logical cores",
        f"Memory: {mem_kb / (1 << 20):.1f} GiB; OS: {platform.system()} {platform.release()}",
        f"Python {platform.python_version()}; pysam {pysam.version.__version__} "
        f"(htslib {pysam.version.__htslib_version__}, "
        f"samtools {pysam.version.__samtools_version__})",
        f"Reference tools: {_first_line(['samtools', '--version'])}; "
        f"{_first_line(['bgzip', '--version'])}; {_first_line(['sort', '--version'])}",
    ]


def report(runs: list[Run], inputs: dict[str, str], args: argparse.Namespace) -> str:
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(["python", "benchmarks/run.py", *args.argv])
    facts = "\n".join(f"- {fact}" for fact in machine())
    return (
        "# Benchmark results\n\n"
        f"Run on {today} with `{command}`: {args.repeats} repeat(s), memory cap "
        f"{args.memory >> 20} MiB and {args.threads} threads on both sides.\n\n"
        f"{facts}\n\n## Medians\n\n{table(runs, inputs)}\n\n"
        "Ratios are genoflow / reference (below 1: genoflow is cheaper). "
        "See benchmarks/README.md for what each side runs and how to read this.\n\n"
        f"## Every run\n\n{raw_table(runs)}\n"
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    from genoflow.processors.base import parse_memory

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="bam,vcf,bed", help="comma-separated subset")
    parser.add_argument("--scale", type=float, default=1.0, help="input size, 1 = full size")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per side")
    parser.add_argument("--memory", default="512M", help="memory cap per side (e.g. 512M)")
    parser.add_argument("--threads", type=int, default=2, help="threads per side")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per command")
    parser.add_argument("--output", type=Path, default=HERE / "results.md")
    args = parser.parse_args(argv)
    args.memory, args.argv = parse_memory(args.memory), argv
    args.families = args.families.split(",")
    unknown = [f for f in args.families if f not in FORMAT]
    if unknown or args.repeats < 1 or args.threads < 1:
        parser.error(f"choose families from {', '.join(FORMAT)}; repeats and threads >= 1")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        parser.error(f"reference tools not on PATH: {', '.join(missing)} (apt-get install "
                     "samtools tabix coreutils grep)")  # fmt: skip
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        child(json.loads(argv[1]))
        return 0
    args = parse_args(argv)
    from generate import ensure_input

    # Turn SIGTERM (e.g. from `timeout`) into an exception, so measure() stops the child's group.
    signal.signal(signal.SIGTERM, _terminate)

    runs: list[Run] = []
    inputs: dict[str, str] = {}
    for family in args.families:
        src = ensure_input(family, scale=args.scale)
        meta = json.loads(src.with_name(src.name + ".json").read_text())
        inputs[family] = f"{family.upper()} sort+index, {meta['size'] / 1e6:.0f} MB"
        for repeat in range(args.repeats):
            order = ("genoflow", "reference") if repeat % 2 == 0 else ("reference", "genoflow")
            for side in order:
                run = run_side(family, side, repeat, src, args)
                runs.append(run)
                status = f"FAILED {run.error}" if run.error else f"{run.wall:.1f} s"
                print(f"{family} #{repeat} {side}: {status}", flush=True)
        shutil.rmtree(WORK / family, ignore_errors=True)
    text = report(runs, inputs, args)
    args.output.write_text(text)
    print(text)
    return 1 if any(r.error for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
