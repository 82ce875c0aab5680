"""Time ``genoflow run MANIFEST`` end to end against the reference shell pipeline.

Invariant: both sides read the same ~200 MB input with the same memory cap and threads, in the
same invocation, alternating (genoflow first on even repeats, the reference first on odd ones).
The genoflow side is what a new user runs: ``genoflow run --json`` of a one-row manifest into a
fresh ``GENOFLOW_HOME`` (cache, registry and Dagster instance created by the run), checks on.
Each measurement is a child process measured by :func:`measure.measure` (wall clock, CPU,
peak summed RSS of its session); the per-step breakdown comes afterwards from the run's own
Dagster event log (step start and end timestamps), read in a separate process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from measure import measure
from pipeline import FORMAT, GENOFLOW, environment, write_manifest

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "endtoend"
# Input scale per family: BAM ~200 MB, VCF ~200 MB, BED ~200 MB (generate.py's TARGET sizes).
SIZES = {"bam": 0.66, "vcf": 1.0, "bed": 1.33}


@dataclass
class EndToEnd:
    """One measured side of one family once."""

    family: str
    side: str
    repeat: int
    wall: float = 0.0
    cpu: float = 0.0
    tree_mb: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def parse_sizes(text: str) -> dict[str, float]:
    """``bam=0.66,vcf=1`` → ``{"bam": 0.66, "vcf": 1.0}`` (a bare number scales all three)."""
    try:
        return {family: float(text) for family in SIZES}
    except ValueError:
        pass
    sizes = {}
    for part in text.split(","):
        family, _, scale = part.partition("=")
        if family not in SIZES:
            raise argparse.ArgumentTypeError(f"{family!r}: choose from {', '.join(SIZES)}")
        sizes[family] = float(scale)
    return sizes


def genoflow_side(src: Path, folder: Path, args: argparse.Namespace) -> EndToEnd:
    """``genoflow run --json`` of a one-row manifest into ``folder/home``, then its steps."""
    result = EndToEnd("", "genoflow", 0)
    env = environment(folder / "home", args, src.parent)
    manifest = write_manifest(folder / "manifest.tsv", [(src, FORMAT[_family(src)])])
    argv = [str(GENOFLOW), "run", "--json", str(manifest)]
    began = time.time()
    result.wall, result.cpu, _, result.tree_mb, result.error = measure(
        argv, cwd=folder, timeout=args.timeout, env=env
    )
    text = (folder / "stdout.log").read_text()
    records = json.loads(text[text.index("[") :]) if "[" in text else []
    failed = [str(r["error"]) for r in records if r.get("error")]
    if result.error is None and (failed or not records):
        result.error = failed[0] if failed else "no outcome printed"
    run_ids = [r["run_id"] for r in records if r.get("run_id")]
    if result.error is None and run_ids:
        result.steps = step_times(folder / "home", run_ids[0], began, result.wall)
    return result


def _family(src: Path) -> str:
    return next(f for f in FORMAT if src.name.endswith(f".{f}"))


def step_times(home: Path, run_id: str, began: float, wall: float) -> dict[str, float]:
    """Seconds per phase of one run, from its Dagster event log (read in a child process)."""
    spec = json.dumps({"home": str(home / "dagster"), "run_id": run_id})
    env = {**os.environ, "DAGSTER_HOME": str(home / "dagster")}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--events", spec],
        capture_output=True, text=True, env=env, timeout=300, check=True,
    )  # fmt: skip
    marks = json.loads(done.stdout.strip().splitlines()[-1])
    steps: dict[str, float] = {"before the first step": marks["first_start"] - began}
    for key, (start, end) in marks["steps"].items():
        steps[key] = end - start
    steps["after the last step"] = began + wall - marks["last_end"]
    return steps


def _events_child(spec: dict) -> None:
    """Print ``{"steps": {step: [start, end]}, "first_start": t, "last_end": t}`` for a run."""
    from dagster import DagsterEventType, DagsterInstance

    instance = DagsterInstance.get()
    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    done = (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE)
    for entry in instance.all_logs(spec["run_id"]):
        event = entry.dagster_event
        if event is None or not entry.step_key:
            continue
        if event.event_type == DagsterEventType.STEP_START:
            starts[entry.step_key] = entry.timestamp
        elif event.event_type in done:
            ends[entry.step_key] = entry.timestamp
    steps = {key.split("__", 1)[-1]: [starts[key], ends[key]] for key in starts if key in ends}
    print(json.dumps({
        "steps": steps,
        "first_start": min(starts.values()),
        "last_end": max(ends.values()),
    }))  # fmt: skip


def run_endtoend(args: argparse.Namespace, ensure_input: object) -> tuple[list, dict]:
    """Every family's genoflow and reference sides, ``args.repeats`` times each, alternating."""
    from run import reference_command

    runs: list[EndToEnd] = []
    labels: dict[str, str] = {}
    for family, scale in args.end_to_end.items():
        src = ensure_input(family, scale=scale)  # type: ignore[operator]
        labels[family] = f"{family.upper()} {src.stat().st_size / 1e6:.0f} MB"
        write_manifest(WORK.parent / f"{family}-md5.tsv", [(src, FORMAT[family])])  # md5 once
        for repeat in range(args.repeats):
            order = ("genoflow", "reference") if repeat % 2 == 0 else ("reference", "genoflow")
            for side in order:
                folder = WORK / f"{family}-{side}-{repeat}"
                shutil.rmtree(folder, ignore_errors=True)
                (folder / "tmp").mkdir(parents=True)
                try:
                    if side == "genoflow":
                        run = genoflow_side(src, folder, args)
                    else:
                        cmd = reference_command(
                            family, src, memory=args.memory, threads=args.threads
                        )
                        argv = ["bash", "-o", "pipefail", "-c", cmd]
                        run = EndToEnd("", side, 0)
                        run.wall, run.cpu, _, run.tree_mb, run.error = measure(
                            argv, cwd=folder, timeout=args.timeout
                        )
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
                run.family, run.repeat = family, repeat
                runs.append(run)
                status = f"FAILED {run.error}" if run.error else f"{run.wall:.1f} s"
                print(f"end to end {family} #{repeat} {side}: {status}", flush=True)
        (WORK.parent / f"{family}-md5.tsv").unlink(missing_ok=True)
    return runs, labels


def endtoend_section(runs: list[EndToEnd], labels: dict[str, str], args: argparse.Namespace) -> str:
    """The "End to end" section: medians and ratios, memory, and the per-step breakdown."""
    if not runs:
        return ""
    limit = (args.memory >> 20) + 200
    lines = [
        "| input | `genoflow run` wall s | reference wall s | ratio wall | genoflow CPU s "
        "| reference CPU s | ratio CPU | genoflow peak total RSS MB | within cap + 200 MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    steps_lines = []
    for family, label in labels.items():
        ok = {
            side: [r for r in runs if r.family == family and r.side == side and not r.error]
            for side in ("genoflow", "reference")
        }
        if not ok["genoflow"] or not ok["reference"]:
            failed = next((r.error for r in runs if r.family == family and r.error), "?")
            lines.append(f"| {label} | failed: {failed} | | | | | | | |")
            continue
        g, r = ({k: statistics.median(getattr(x, k) for x in ok[s]) for k in ("wall", "cpu")}
                for s in ("genoflow", "reference"))  # fmt: skip
        peak = max(x.tree_mb for x in ok["genoflow"])
        lines.append(
            f"| {label} | {g['wall']:.1f} | {r['wall']:.1f} | {g['wall'] / r['wall']:.2f} "
            f"| {g['cpu']:.1f} | {r['cpu']:.1f} | {g['cpu'] / r['cpu']:.2f} | {peak:.0f} "
            f"| {'yes' if peak <= limit else '**no**'} |"
        )
        steps_lines.append((label, ok["genoflow"]))
    names = list(dict.fromkeys(k for r in runs for k in r.steps))
    head = "| input | " + " | ".join(f"`{n}`" if " " not in n else n for n in names) + " |"
    steps = [head, "| --- |" + " ---: |" * len(names)]
    steps += [_steps_row(label, measured, names) for label, measured in steps_lines]
    command = "python benchmarks/run.py " + " ".join(args.argv)
    return (
        "## End to end\n\n"
        f"`genoflow run MANIFEST` (one row, fresh `GENOFLOW_HOME`, checks on, "
        f"`GENOFLOW_SORT_MEMORY={args.memory >> 20}M`, `GENOFLOW_THREADS={args.threads}`) "
        "against the reference pipeline with the same cap and threads, alternating in the same "
        f"invocation (`{command.strip()}`), medians of {args.repeats}. Reference: BAM "
        "`samtools sort` + `samtools index`; VCF `(grep '^#'; grep -v '^#' | LC_ALL=C sort) | "
        "bgzip` + `tabix -p vcf`; BED `LC_ALL=C sort | bgzip` + `tabix -p bed` (the exact "
        "command lines are in README.md). Peak total RSS is the largest over the repeats.\n\n"
        + "\n".join(lines)
        + "\n\nWhere `genoflow run`'s time goes (medians, seconds, from the run's Dagster event "
        "log: each step from its start to its end; *before the first step* is from starting "
        "the process to the first step's start — imports, registry, instance, run creation; "
        "*after the last step* is from the last step's end to the process's exit):\n\n"
        + "\n".join(steps)
        + "\n\n"
    )


def _steps_row(label: str, runs: list[EndToEnd], names: list[str]) -> str:
    cells = []
    for name in names:
        values = [r.steps[name] for r in runs if name in r.steps]
        cells.append(f"{statistics.median(values):.1f}" if values else "")
    return f"| {label} | " + " | ".join(cells) + " |"


if __name__ == "__main__" and sys.argv[1:2] == ["--events"]:
    _events_child(json.loads(sys.argv[2]))
