"""Run the race-prone tests many times under a parallel fsync-heavy writer and count failures.

A race that fails one run in fifty on a loaded machine passes any single run: this script is how
the races of issue 12 (a registry opened by several processes at once, an instance's storages
created by the webserver, the daemon and a run at the same moment) were reproduced, and how their
fixes are shown to hold. Each run is one pytest session over every selected test; while the
sessions run, a child process of this script writes and fsyncs a file in a loop (unless
``--no-load``), so every commit and lock waits behind a busy disk. The script stops that writer
itself, whatever happens.

Usage::

    python scripts/stress_races.py                 # 50 runs of each test, under I/O load
    python scripts/stress_races.py --runs 5 --no-load      # what CI runs
    python scripts/stress_races.py --runs 20 --only registry --slow-runs 3

It prints a table (test, runs, failures) and the first failure of each failing test, and exits 1
if any run of any test failed (or did not run at all).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Fast tests: a run of all of them takes well under a minute. Each entry is a pytest node id or a
# whole file.
FAST = [
    "genoflow_tests/test_registry.py::"
    "test_concurrent_registration_leaves_no_duplicates_and_no_lock_errors",
    "genoflow_tests/test_registry.py::"
    "test_processes_opening_a_new_registry_file_at_the_same_moment_all_succeed",
    "genoflow_tests/test_registry.py::"
    "test_a_registry_opened_while_another_connection_writes_a_new_file_waits_instead_of_failing",
    "genoflow_tests/test_dagster_storage.py::"
    "test_processes_opening_a_new_instance_at_the_same_moment_all_succeed",
    "genoflow_tests/test_cache_concurrency.py",
]
# Slow tests: a real webserver and daemon, or several `genoflow run` processes at once.
SLOW = [
    "genoflow_tests/test_ui_e2e.py::"
    "test_dropped_manifests_become_verified_artifacts_and_only_new_md5s_run",
    "genoflow_tests/test_reliability_concurrency.py",
]
SESSION_TIMEOUT = 1200  # seconds one pytest session may take before it counts as failed
CHUNK = 1 << 20  # bytes the writer fsyncs at a time
FILE_CHUNKS = 64  # chunks per file before the writer deletes it and starts again


@dataclass
class Tally:
    """One selected test's (or test file's) outcome over every run."""

    runs: int = 0
    failures: int = 0
    first: str = ""
    failed_runs: list[int] = field(default_factory=list)


def write_forever(folder: str) -> None:
    """The load: write 1 MiB, fsync, repeat; delete the file every 64 MiB. Runs until killed."""
    path = os.path.join(folder, "load.bin")
    block = os.urandom(CHUNK)
    while True:
        with open(path, "wb") as handle:
            for _ in range(FILE_CHUNKS):
                handle.write(block)
                handle.flush()
                os.fsync(handle.fileno())
        os.unlink(path)


@contextlib.contextmanager
def io_load(enabled: bool) -> Iterator[None]:
    """A child process running :func:`write_forever` while the block runs; stopped after."""
    if not enabled:
        yield
        return
    folder = tempfile.mkdtemp(prefix="genoflow-stress-load-")
    writer = subprocess.Popen([sys.executable, __file__, "--write-load", folder])
    try:
        yield
    finally:
        writer.terminate()
        try:
            writer.wait(timeout=30)
        except subprocess.TimeoutExpired:
            writer.kill()
            writer.wait()
        shutil.rmtree(folder, ignore_errors=True)


def entry_of(case: ET.Element, entries: list[str]) -> str | None:
    """The selected entry (node id or file) a junit ``testcase`` belongs to."""
    module = case.get("classname", "").split(".")
    path = "/".join(module[:2]) + ".py" if len(module) >= 2 else ""
    for entry in entries:
        file, _, name = entry.partition("::")
        if file == path and (not name or name == case.get("name", "").split("[")[0]):
            return entry
    return None


def outcomes(report: Path, entries: list[str]) -> dict[str, tuple[bool, str]]:
    """Each entry's (ran at least one test?, first failure text) from a junit report."""
    outcome = {entry: (False, "") for entry in entries}
    if not report.exists():
        return outcome  # the session died before writing it: nothing ran
    for case in ET.parse(report).getroot().iter("testcase"):
        entry = entry_of(case, entries)
        if entry is None:
            continue
        problem = case.find("failure")
        problem = case.find("error") if problem is None else problem
        ran, text = outcome[entry]
        if problem is not None and not text:
            text = f"{case.get('name')}: {problem.get('message', '')}"
        outcome[entry] = (ran or case.find("skipped") is None, text)
    return outcome


def run_session(entries: list[str], number: int, tallies: dict[str, Tally]) -> None:
    """One pytest session over ``entries``; add each entry's outcome to ``tallies``."""
    with tempfile.TemporaryDirectory(
        prefix="genoflow-stress-", ignore_cleanup_errors=True
    ) as scratch:
        report = Path(scratch) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        command += [f"--junitxml={report}", f"--basetemp={scratch}/tmp", *entries]
        session = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            output, _ = session.communicate(timeout=SESSION_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(session.pid, signal.SIGKILL)  # the session and the processes it started
            output, _ = session.communicate()
            output += f"\n(killed after {SESSION_TIMEOUT} s)"
        except KeyboardInterrupt:
            os.killpg(session.pid, signal.SIGKILL)  # no session outlives the script
            session.wait()
            raise
        outcome = outcomes(report, entries)
    for entry, (ran, text) in outcome.items():
        tally = tallies[entry]
        tally.runs += 1
        if text or not ran:
            tally.failures += 1
            tally.failed_runs.append(number)
            tally.first = tally.first or text or "did not run: " + output.strip()[-400:]


def table(tallies: dict[str, Tally]) -> str:
    """The per-test table, then the first failure of each failing test."""
    width = max(len(short(entry)) for entry in tallies)
    lines = [f"{'test':<{width}}  {'runs':>5}  {'failures':>8}", "-" * (width + 17)]
    for entry, tally in tallies.items():
        lines.append(f"{short(entry):<{width}}  {tally.runs:>5}  {tally.failures:>8}")
    for entry, tally in tallies.items():
        if tally.failures:
            runs = ", ".join(map(str, tally.failed_runs[:10]))
            lines.append(f"\n{short(entry)} failed in run(s) {runs}; first:\n  {tally.first}")
    return "\n".join(lines)


def short(entry: str) -> str:
    """``test_file.py::test_name`` without the folder."""
    return entry.removeprefix("genoflow_tests/")


def main(argv: list[str] | None = None) -> int:
    """Run the selected race tests; return 1 if any run failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="runs of each fast test")
    parser.add_argument(
        "--slow-runs",
        type=int,
        help="runs of each slow test (webserver, daemon, several genoflow runs); default: --runs",
    )
    parser.add_argument("--no-load", action="store_true", help="no parallel fsync writer")
    parser.add_argument("--only", help="only tests whose node id contains this text")
    parser.add_argument("--write-load", metavar="FOLDER", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.write_load:
        write_forever(args.write_load)
    slow_runs = args.runs if args.slow_runs is None else args.slow_runs
    plan = [(FAST, args.runs), (SLOW, slow_runs)]
    plan = [([e for e in tests if not args.only or args.only in e], n) for tests, n in plan]
    tallies = {entry: Tally() for tests, runs in plan if runs > 0 for entry in tests}
    if not tallies:
        parser.error("no test selected")
    print(f"load: {'none' if args.no_load else 'one fsync-heavy writer'}", flush=True)
    # SIGTERM stops the runs as Ctrl-C does: the writer is stopped, the partial table printed.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    interrupted = False
    with io_load(not args.no_load):
        try:
            # Interleaved, so that a run stopped early has counts for every test.
            for number in range(1, max(runs for _, runs in plan) + 1):
                for tests, runs in plan:
                    if tests and number <= runs:
                        run_session(tests, number, tallies)
                        failed = sum(tallies[e].failures for e in tests)
                        done = f"run {number}/{runs} of {len(tests)} test(s)"
                        print(f"{done}: {failed} failure(s) so far", flush=True)
        except KeyboardInterrupt:
            interrupted = True
    print(table(tallies))
    if interrupted:
        print("interrupted: the counts above are of the runs that finished")
    return 1 if interrupted or any(tally.failures for tally in tallies.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
