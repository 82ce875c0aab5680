"""Turn measured runs into the markdown report: medians, ratios, the memory check, every run.

Invariant: every number in the report comes from a :class:`~measure.Run`; ratios are
genoflow / reference medians of the same family in the same invocation.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import subprocess
from pathlib import Path

from measure import Run
from pipeline import CacheHit, SmallFiles, cache_section, small_section

__all__ = ["report"]


def fmt_ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b > 0 else "–"


def table(runs: list[Run], inputs: dict[str, str]) -> str:
    """Median per family and side, with ratios on the genoflow row.

    A family measured against several reference pipelines (VCF: GNU sort and bcftools) is
    compared with the one whose median wall time is lowest.
    """
    keys = ("wall", "cpu", "rss_mb", "tree_mb", "out_mb")
    lines = [
        "| work | side | wall s | CPU s | peak RSS MB | peak total RSS MB | output MB "
        "| ratio wall | ratio CPU | ratio total RSS |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for family in dict.fromkeys(r.family for r in runs):
        sides = list(dict.fromkeys(r.side for r in runs if r.family == family))
        med = {}
        for side in sides:
            ok = [r for r in runs if r.family == family and r.side == side and r.error is None]
            if ok:
                med[side] = [statistics.median(getattr(r, k) for r in ok) for k in keys]
        references = [side for side in sides if side != "genoflow" and side in med]
        base = min(references, key=lambda side: med[side][0]) if references else None
        for side in sides:
            label = side if side != base or len(sides) < 3 else f"{side} (faster reference)"
            if side not in med:
                lines.append(f"| {inputs[family]} | {label} | failed | | | | | | | |")
                continue
            wall, cpu, rss, tree, out = med[side]
            ratios = " | ".join([""] * 3)
            if side == "genoflow" and base is not None:
                ref = med[base]
                ratios = " | ".join(fmt_ratio(med[side][i], ref[i]) for i in (0, 1, 3))
            lines.append(
                f"| {inputs[family]} | {label} | {wall:.1f} | {cpu:.1f} | {rss:.0f} | {tree:.0f} "
                f"| {out:.1f} | {ratios} |"
            )
    return "\n".join(lines)


def raw_table(runs: list[Run]) -> str:
    lines = [
        "| family | repeat | side | wall s | CPU s | peak RSS MB | peak total RSS MB | error |",
        "| --- " * 8 + "|",
    ]
    for r in runs:
        lines.append(
            f"| {r.family} | {r.repeat} | {r.side} | {r.wall:.1f} | {r.cpu:.1f} | "
            f"{r.rss_mb:.0f} | {r.tree_mb:.0f} | {r.error or ''} |"
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
        f"{_first_line(['bgzip', '--version'])}; {_first_line(['sort', '--version'])}; "
        f"{_first_line(['bcftools', '--version'])}",
    ]


def peak_section(check: tuple[Run, str] | None, args: argparse.Namespace) -> str:
    """The memory check's paragraph: genoflow's summed RSS on a large input against the limit."""
    if check is None:
        return ""
    run, label = check
    limit = (args.memory >> 20) + 200
    verdict = "failed" if run.error else ("yes" if run.tree_mb <= limit else "**no**")
    return (
        "## Peak memory on a large input\n\n"
        "| input | wall s | peak RSS MB (largest process) | peak total RSS MB (all processes) "
        "| cap + 200 MB | within |\n| --- | ---: | ---: | ---: | ---: | --- |\n"
        f"| {label} | {run.wall:.1f} | {run.rss_mb:.0f} | {run.tree_mb:.0f} | {limit} "
        f"| {verdict} |\n\n"
    )


def report(
    runs: list[Run],
    inputs: dict[str, str],
    args: argparse.Namespace,
    peak: tuple[Run, str] | None,
    hit: CacheHit | None = None,
    small: SmallFiles | None = None,
    end_to_end: str = "",
) -> str:
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(["python", "benchmarks/run.py", *args.argv])
    engines = sorted({r.engine for r in runs if r.engine})
    facts = "\n".join(
        f"- {fact}" for fact in [*machine(), f"genoflow engine: {'; '.join(engines)}"]
    )
    return (
        "# Benchmark results\n\n"
        f"Run on {today} with `{command}`: {args.repeats} repeat(s), memory cap "
        f"{args.memory >> 20} MiB and {args.threads} threads on both sides, "
        f"`GENOFLOW_ENGINE={args.engine}` on the genoflow side.\n\n"
        f"{facts}\n\n## Medians\n\n{table(runs, inputs)}\n\n"
        "Ratios are genoflow / reference (below 1: genoflow is cheaper). "
        "See benchmarks/README.md for what each side runs and how to read this.\n\n"
        f"{end_to_end}{peak_section(peak, args)}{cache_section(hit)}{small_section(small)}"
        f"## Every run\n\n{raw_table(runs)}\n"
    )
