"""Stress: N trials of P concurrent ``genoflow run`` on one fresh GENOFLOW_HOME each.

Each trial starts P processes on the same manifest and the same, empty home at once, then checks
what ``genoflow_tests/test_reliability_concurrency.py`` checks once: every process exits 0 and
none met "database is locked"; the artifacts are exactly those of a single-process run, byte for
byte; no temp folder or lock file is left; the registry has no duplicate, pending or dangling
row; Dagster recorded every run as a success. A failed trial keeps its home for inspection.

Usage: .venv/bin/python scripts/stress_concurrency.py [--trials 100] [--processes 8]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from genoflow_tests.support.deployments import (
    artifacts,
    content_problems,
    dagster_problems,
    debris,
    finish,
    launch,
    race,
    registry_problems,
    write_manifest,
)

INPUTS = ("trio.vcf", "sample1.sam", "samples.csv")  # one file of each family


def trial_problems(home: Path, manifest: Path, processes: int, reference: dict) -> list[str]:
    """Race ``processes`` runs on ``home``; return every broken promise."""
    outcomes = race(home, manifest, processes)
    problems = [f"exit {status}: {err.strip()[-300:]}" for status, _, err in outcomes if status]
    problems += ["database is locked" for _, out, err in outcomes if "database is locked" in
                 out + err]  # fmt: skip
    if artifacts(home) != reference:
        problems.append("artifacts differ from the single-process run")
    problems += content_problems(home) + debris(home) + registry_problems(home)
    problems += dagster_problems(home, outcomes)
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--workdir", type=Path, help="where homes go (default: a temp folder)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="genoflow-stress-concurrency-"))
    manifest = write_manifest(workdir / "inputs", INPUTS)
    status, _, err = finish(launch(workdir / "reference", "run", str(manifest)))
    if status:
        print(f"the single-process reference run failed: {err}", file=sys.stderr)
        return 2
    reference = artifacts(workdir / "reference")
    failures, seconds = 0, []
    for trial in range(1, args.trials + 1):
        home, started = workdir / f"trial-{trial}", time.monotonic()
        problems = trial_problems(home, manifest, args.processes, reference)
        seconds.append(time.monotonic() - started)
        failures += bool(problems)
        verdict = "ok" if not problems else "FAILED: " + "; ".join(problems[:5])
        print(f"trial {trial}/{args.trials}: {seconds[-1]:.1f} s {verdict}", flush=True)
        if not problems:
            shutil.rmtree(home)
    print(
        f"\n{args.trials} trials of {args.processes} concurrent `genoflow run` "
        f"({len(INPUTS)} sources each): {failures} failed; median {statistics.median(seconds):.1f}"
        f" s per trial, {sum(seconds) / 60:.1f} min in all"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
