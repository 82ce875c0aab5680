"""The daemon path and many small files, end to end, each side on a fresh home.

Invariant: every measured side starts from an empty GENOFLOW_HOME (and DAGSTER_HOME under it,
with genoflow's embedded ``dagster.yaml``). The daemon side starts ``dagster-daemon run -m
genoflow.definitions`` and nothing else, waits for the manifest sensor's first tick over an
empty watched folder, then drops the manifest in (one rename) and times until every asset of
every source is valid in the cache (polled in process, the same records ``genoflow status
--json`` prints), against the asset set the ``genoflow run`` side built. The two sides take
turns, ``run`` first. Every process started here is stopped by its process group.

Usage: ``python benchmarks/daemon_path.py [--repeats 2] [--small 100] [--many 1000]
[--only daemon|many] [--output FILE]``
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import measure

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "work" / "daemon-path"
BIN = Path(sys.executable).parent
DEMO = REPO / "data" / "manifests"


def small_bed(path: Path, seed: int, records: int = 300) -> Path:
    rng = random.Random(seed)
    lines = []
    for i in range(records):
        start = rng.randrange(10_000_000)
        lines.append(
            f"chr{rng.randint(1, 22)}\t{start}\t{start + rng.randint(1, 500)}\tr{i}\t0\t+\n"
        )
    path.write_text("".join(lines))
    return path


def small_manifest(folder: Path, files: int) -> Path:
    """``files`` BED files (300 records, ~10 KB) under ``folder``, and a manifest naming them."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["name\turi\tmd5\tformat\tsize\n"]
    for i in range(files):
        src = small_bed(folder / f"small_{i:04d}.bed", seed=i)
        md5 = hashlib.md5(src.read_bytes()).hexdigest()
        lines.append(f"{src.name}\t{src}\t{md5}\tbed\t{src.stat().st_size}\n")
    manifest = folder.parent / f"small_{files}.tsv"
    manifest.write_text("".join(lines))
    return manifest


def demo_manifest(folder: Path) -> Path:
    """The demo manifest with its relative URIs made absolute (into a copy of its folder)."""
    shutil.copytree(DEMO / "demo", folder / "demo", dirs_exist_ok=True)
    text = (DEMO / "demo.tsv").read_text().splitlines(keepends=True)
    rows = [text[0]]
    for line in text[1:]:
        cells = line.split("\t")
        cells[1] = str(folder / cells[1])
        rows.append("\t".join(cells))
    manifest = folder / "demo.tsv"
    manifest.write_text("".join(rows))
    return manifest


def environment(root: Path, inputs: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENOFLOW_", "DAGSTER_"))}
    env.update(GENOFLOW_HOME=str(root / "home"), GENOFLOW_ALLOWED_ROOTS=str(inputs), **extra)
    return env


def fresh(root: Path) -> Path:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    return root


def run_side(root: Path, manifest: Path, inputs: Path, jobs: int, timeout: float) -> dict:
    """``genoflow run --json --jobs J`` on a fresh home: wall, CPU, the assets it built."""
    env = environment(fresh(root), inputs)
    argv = [str(BIN / "genoflow"), "run", "--json", "--jobs", str(jobs), str(manifest)]
    wall, cpu, _, _, error = measure(argv, cwd=root, timeout=timeout, env=env)
    if error is not None:
        tail = (root / "stderr.log").read_text()[-2000:]
        raise RuntimeError(f"genoflow run failed: {error}: {tail}")
    return {"wall": wall, "cpu": cpu, "assets": built_assets(env)}


def status(env: dict[str, str]) -> list[dict]:
    """The records ``genoflow status --json`` prints, read in process."""
    from genoflow.cli.report import status_records
    from genoflow.core.settings import Settings
    from genoflow.storage.node import open_node

    settings = Settings.from_env(env)
    if not settings.registry_path.exists():
        return []
    with open_node(settings) as node:
        return status_records(node.dm.context.registry.rows(), node, [])


def built_assets(env: dict[str, str]) -> set[tuple[str, str]]:
    """(name, asset) of every asset that is built and valid."""
    return {
        (r["name"], asset)
        for r in status(env)
        for asset, artifact in r["assets"].items()
        if artifact and artifact.get("valid")
    }


def daemon_side(
    root: Path, manifest: Path, inputs: Path, want: set, timeout: float, jobs: int
) -> dict:
    """Drop ``manifest`` into the folder a running daemon watches; seconds until ``want``.
    The daemon keeps ``jobs`` runs in flight (GENOFLOW_DAEMON_RUNS), as ``run --jobs``."""
    from genoflow.core.settings import Settings
    from genoflow.instance.home import ensure_dagster_home

    watched = fresh(root) / "manifests"
    watched.mkdir()
    env = environment(root, inputs, GENOFLOW_MANIFESTS=str(watched), GENOFLOW_SENSOR_INTERVAL="1",
                      GENOFLOW_DAEMON_RUNS=str(jobs))  # fmt: skip
    settings = Settings.from_env(env)
    env["DAGSTER_HOME"] = str(ensure_dagster_home(settings))
    log = root / "dagster-daemon.log"
    with open(log, "wb") as out:
        daemon = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-m", "genoflow.definitions"],
            env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        started = time.perf_counter()
        while "Checking for new runs for sensor" not in log.read_text(errors="replace"):
            if daemon.poll() is not None or time.perf_counter() - started > 120:
                raise RuntimeError(f"daemon did not tick: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        ready = time.perf_counter() - started
        cpu0 = process_group_cpu(daemon.pid)
        shutil.copy(manifest, root / manifest.name)
        began = time.perf_counter()
        os.replace(root / manifest.name, watched / manifest.name)
        polls = 0
        while not want <= built_assets(env):
            polls += 1
            if time.perf_counter() - began > timeout or daemon.poll() is not None:
                raise RuntimeError(f"not built in {timeout} s: {log.read_text()[-2000:]}")
            time.sleep(0.25)
        wall = time.perf_counter() - began
        runs = run_durations(env)
        return {"wall": wall, "ready": ready, "polls": polls, "cpu_daemon": cpu0, **runs}
    finally:
        stop(daemon)


def process_group_cpu(pgid: int) -> float:
    """CPU seconds so far of the live processes in a process group (from /proc)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def run_durations(env: dict[str, str]) -> dict:
    """From the instance: runs launched, first and last launch, median run seconds."""
    from dagster import DagsterInstance

    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    with DagsterInstance.get() as instance:
        records = instance.get_run_records()
    starts = [r.start_time for r in records if r.start_time]
    spans = [r.end_time - r.start_time for r in records if r.start_time and r.end_time]
    created = [r.create_timestamp.timestamp() for r in records]
    return {
        "runs": len(records),
        "median_run_s": statistics.median(spans) if spans else 0.0,
        "launch_spread_s": max(created) - min(created) if created else 0.0,
        "queue_to_start_s": statistics.median(
            r.start_time - r.create_timestamp.timestamp() for r in records if r.start_time
        ) if starts else 0.0,
    }  # fmt: skip


def stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    time.sleep(1)
    with contextlib.suppress(ProcessLookupError):  # run workers the daemon launched
        os.killpg(process.pid, signal.SIGKILL)


def daemon_path(args: argparse.Namespace) -> list[str]:
    inputs = fresh(WORK / "inputs")
    manifests = {"demo": demo_manifest(inputs), f"{args.small} small BED": small_manifest(
        inputs / "small", args.small)}  # fmt: skip
    rows = []
    for label, manifest in manifests.items():
        runs, daemons = [], []
        for repeat in range(args.repeats):
            runs.append(run_side(WORK / "run", manifest, inputs, args.jobs, args.timeout))
            print(f"{label} run #{repeat}: {runs[-1]['wall']:.1f} s", flush=True)
            want = runs[0]["assets"]
            daemon = daemon_side(WORK / "daemon", manifest, inputs, want, args.timeout, args.jobs)
            daemons.append(daemon)
            print(f"{label} daemon #{repeat}: {json.dumps(daemons[-1])}", flush=True)
        run_wall = statistics.median(r["wall"] for r in runs)
        daemon_wall = statistics.median(d["wall"] for d in daemons)
        last = daemons[-1]
        rows.append(
            f"| {label} | {len(runs[0]['assets'])} | {run_wall:.1f} | "
            f"{statistics.median(r['cpu'] for r in runs):.1f} | {daemon_wall:.1f} | "
            f"{daemon_wall / run_wall:.2f} | {last['runs']} | {last['median_run_s']:.1f} | "
            f"{last['queue_to_start_s']:.1f} | {last['ready']:.1f} |"
        )
    header = (
        f"| manifest | assets | `genoflow run --jobs {args.jobs}` wall s | run CPU s | "
        "drop → all built s (daemon) | daemon / run | runs launched | median run s | "
        "median launch → start s | daemon start → first tick s |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    return [header, *rows]


def many_small(args: argparse.Namespace) -> list[str]:
    inputs = fresh(WORK / "many")
    manifest = small_manifest(inputs / "files", args.many)
    result = run_side(WORK / "many-run", manifest, inputs, 2, args.timeout)
    shutil.rmtree(WORK / "many-run", ignore_errors=True)
    n = args.many
    return [
        "| files | jobs | wall s | CPU s | wall s per file | CPU s per file |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {n} | 2 | {result['wall']:.1f} | {result['cpu']:.1f} | {result['wall'] / n:.3f} | "
        f"{result['cpu'] / n:.3f} |",
    ]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--many", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=2, help="--jobs of the run side")
    parser.add_argument("--only", choices=("daemon", "many"))
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    lines = []
    if args.only in (None, "daemon"):
        lines += daemon_path(args)
    if args.only in (None, "many"):
        lines += ["", *many_small(args)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
