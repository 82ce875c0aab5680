"""Stress: SIGKILL ``genoflow run`` N times at random moments, and check every recovery.

Each trial lists a new source (a shuffled BED, so every trial builds, sorts, indexes and
replicates something new) and kills its ``genoflow run`` with SIGKILL:

- most trials at a random time, uniform over the length of a whole run measured first;
- every ``--targeted-every``-th trial at one named moment in turn (during staging, during
  sorting, between the data and the marker, between the marker and the rename, between the
  rename and the registry write, during replication), because some of those last microseconds
  and random times would almost never hit them. Sorting is caught from outside, by watching the
  disk; the other moments by a trigger the child arms around one project function (see
  ``genoflow_tests/test_reliability_crashes.py``).

After each kill the moment is read back from the disk (``classify``), a reader must find no
partial artifact in the cache, the registry or the bucket, and the next run must complete and
leave no temp folder, no lock file, no pending or dangling replica and no marker-less object.
Replicas go to a private fake-gcs-server per lane.

Usage: .venv/bin/python scripts/stress_kills.py [--kills 200] [--lanes 2]
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from genoflow_tests.support import gcs_emulator
from genoflow_tests.support.crashes import (
    MOMENTS,
    bucket_partials,
    classify,
    kill_when,
    launch_armed,
    reader_problems,
    sorting,
    write_big_bed,
)
from genoflow_tests.support.deployments import cli_env, debris, finish, launch
from genoflow_tests.support.deployments import registry_problems as registry_checks


@dataclass
class Tally:
    """Kills per moment read back from disk, and the trials that broke a promise."""

    kills: collections.Counter[str] = field(default_factory=collections.Counter)
    failed: collections.Counter[str] = field(default_factory=collections.Counter)
    misread: int = 0
    finished_first: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Lane:
    """One home and one private bucket, killed and recovered trial after trial."""

    def __init__(self, folder: Path, lines: int) -> None:
        self.folder, self.lines, self.home = folder, lines, folder / "home"
        self.objects = folder / "objects"
        self.objects.mkdir(parents=True)
        self.server, endpoint, _ = gcs_emulator.start(self.objects, folder / "server.log")
        gcs_emulator.GcsEmulator(endpoint, self.objects, self.server.pid, 0).create_bucket("stress")
        self.env = cli_env(self.home, GENOFLOW_REPLICAS="gs://stress/genoflow",
                           STORAGE_EMULATOR_HOST=endpoint,
                           GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")  # fmt: skip
        self.whole_run = self._time_a_whole_run()

    def _time_a_whole_run(self) -> float:
        manifest = write_big_bed(self.folder / "inputs", seed=10**6, lines=self.lines)
        started = time.monotonic()
        status, _, err = finish(launch(self.home, "run", str(manifest), env=self.env))
        if status:
            raise SystemExit(f"the calibration run failed: {err}")
        return time.monotonic() - started

    def kill(self, seed: int, moment: str | None) -> tuple[int, Path]:
        """Start a run on a new source and kill it (at ``moment``, or at a random time)."""
        manifest = write_big_bed(self.folder / "inputs", seed=seed, lines=self.lines)
        if moment == "sorting":
            child = launch(self.home, "run", str(manifest), env=self.env)
            kill_when(child, lambda: sorting(self.home))
        elif moment is not None:
            child = launch_armed(self.home, moment, "run", str(manifest), env=self.env)
        else:
            child = launch(self.home, "run", str(manifest), env=self.env)
            delay = random.Random(seed).uniform(0, self.whole_run)
            deadline = time.monotonic() + delay
            while child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.002)
            if child.poll() is None:
                child.send_signal(signal.SIGKILL)
        status, _, _ = finish(child)
        return status, manifest

    def recover(self, manifest: Path) -> list[str]:
        """Run again to completion; return every broken promise."""
        status, out, err = finish(launch(self.home, "run", str(manifest), "--json", env=self.env))
        problems = [f"the next run exited {status}: {err.strip()[-300:]}"] if status else []
        for record in json.loads(out or "[]"):
            if not set(record["assets"].values()) <= {"built", "cached", "transferred"}:
                problems.append(f"the next run left {record['assets']}")
        problems += debris(self.home) + registry_checks(self.home, objects=self.objects)
        problems += [f"marker-less object {p}" for p in bucket_partials(self.objects)]
        return problems + reader_problems(self.home, self.objects)

    def close(self) -> None:
        gcs_emulator.stop(self.server)


def run_lane(lane: Lane, seeds: list[int], every: int, tally: Tally) -> None:
    for seed in seeds:
        targeted = MOMENTS[(seed // every) % len(MOMENTS)] if seed % every == 0 else None
        status, manifest = lane.kill(seed, targeted)
        if status != -signal.SIGKILL:
            with tally.lock:
                tally.finished_first += 1
            continue
        moment = classify(lane.home, lane.objects, md5=_md5_of(manifest))
        problems = [f"after the kill: {p}" for p in reader_problems(lane.home, lane.objects)]
        problems += lane.recover(manifest)
        with tally.lock:
            tally.kills[moment] += 1
            tally.failed[moment] += bool(problems)
            tally.misread += targeted is not None and targeted != moment
            done = sum(tally.kills.values())
        aim = f" (aimed at {targeted})" if targeted else ""
        verdict = "ok" if not problems else "FAILED: " + "; ".join(problems[:4])
        print(f"kill {done}: {moment}{aim}: {verdict}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--lanes", type=int, default=2, help="homes killed side by side")
    parser.add_argument("--targeted-every", type=int, default=4)
    parser.add_argument("--lines", type=int, default=60_000, help="records per source")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="genoflow-stress-kills-"))
    started, tally = time.monotonic(), Tally()
    lanes = [Lane(workdir / f"lane-{n}", args.lines) for n in range(args.lanes)]
    try:
        while sum(tally.kills.values()) < args.kills:
            base, missing = sum(tally.kills.values()) + tally.finished_first, args.kills
            missing -= sum(tally.kills.values())
            threads = [
                threading.Thread(target=run_lane, args=(lane, seeds, args.targeted_every, tally))
                for lane, seeds in zip(lanes, _deal(base, missing, len(lanes)), strict=True)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        for lane in lanes:
            lane.close()
    print(f"\nmoment (read from disk)     kills  failures   [{workdir}]")
    for moment, kills in tally.kills.most_common():
        print(f"{moment:26} {kills:6} {tally.failed[moment]:9}")
    failures = sum(tally.failed.values())
    print(
        f"{sum(tally.kills.values())} kills, {failures} failed; {tally.misread} aimed kills read "
        f"back as another moment; {tally.finished_first} runs finished before their kill; "
        f"{(time.monotonic() - started) / 60:.1f} min"
    )
    return 1 if failures else 0


def _md5_of(manifest: Path) -> str:
    return manifest.read_text().splitlines()[1].split("\t")[2]


def _deal(base: int, count: int, lanes: int) -> list[list[int]]:
    seeds = list(range(base + 1, base + count + 1))
    return [seeds[lane::lanes] for lane in range(lanes)]


if __name__ == "__main__":
    sys.exit(main())
