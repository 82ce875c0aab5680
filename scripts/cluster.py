"""``make cluster-demo``: the demo manifest on a local cluster of Celery workers, then a report.

Run from the repository root as ``python -m scripts.cluster [--workers N] [--serve]``. It starts
the services of :class:`scripts.local_cluster.LocalCluster`, drops the manifest into the watched
folder, waits (bounded) until every run it caused has ended, checks every artifact on every
worker with ``genoflow verify``, prints which worker ran which step and where each artifact's
replicas are, and stops everything it started — whatever happens on the way.

Exit status: 0 when every run succeeded, every check passed and every replica verified.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from scripts.cluster_report import Outcome, failure_of, names_of, partitions_of, wait_for_runs
from scripts.cluster_services import ServiceError
from scripts.local_cluster import REPO, LocalCluster, stop_on_sigterm

DEMO = REPO / "data" / "manifests" / "demo.tsv"
ROOT_MARK = ".genoflow-cluster"


def drop_manifest(manifest: Path, watched: Path) -> Path:
    """Copy ``manifest`` (and the folder named like it, holding its sources) into ``watched``.

    The sources go first and the manifest last, under a hidden name renamed into place, so the
    sensor never reads a manifest whose files are still being copied.
    """
    folder = manifest.with_suffix("")
    if folder.is_dir():
        shutil.copytree(folder, watched / folder.name, dirs_exist_ok=True)
    hidden = watched / f".{manifest.name}.part"
    shutil.copyfile(manifest, hidden)
    return hidden.rename(watched / manifest.name)


def fresh_root(root: Path) -> Path:
    """Empty ``root`` for a new cluster, refusing a folder this script did not make."""
    if root.exists():
        if any(root.iterdir()) and not (root / ROOT_MARK).exists():
            raise SystemExit(f"{root} exists and is not a cluster folder: choose another --root")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / ROOT_MARK).touch()
    return root


def step_lines(outcome: Outcome, names: dict[str, str]) -> list[str]:
    """One line per step: source name, step, the worker that ran it and what it did."""
    lines = []
    for step in sorted(outcome.steps, key=lambda s: (names.get(s.partition, ""), s.step_key)):
        if step.passed is not None:
            result = "check passed" if step.passed else "CHECK FAILED"
        else:
            result = {"miss": "built", "hit": "cache hit"}.get(step.cache, step.cache or "?")
        name = names.get(step.partition, step.partition[:12])
        lines.append(f"  {name:34} {step.step_key:52} {step.worker:22} {result}")
    return lines


def replica_lines(status: list[dict]) -> list[str]:
    """Each artifact and its replicas, from ``genoflow status --json``."""
    lines = []
    for source in status:
        for asset, detail in (source.get("assets") or {}).items():
            if detail is None:
                lines.append(f"  {source['name']:34} {asset:7} not built")
                continue
            where = ", ".join(f"{r['deployment']}:{r['type']}" for r in detail.get("replicas", []))
            lines.append(f"  {source['name']:34} {asset:7} {where}")
    return lines


def report(cluster: LocalCluster, manifest: Path, *, timeout: float, started: float) -> bool:
    """Wait for the manifest's runs, verify every worker's replicas and print what happened."""
    partitions = partitions_of(manifest)
    names = names_of(manifest)
    with cluster.instance() as instance:
        outcome = wait_for_runs(instance, partitions, timeout=timeout, started=started)
        failures = [f"  {run.run_id[:8]} {failure_of(instance, run)}" for run in outcome.failed]
    wall = time.monotonic() - started
    print(f"\nSteps ({len(outcome.runs)} runs, {len(outcome.steps)} steps):")
    print("\n".join(step_lines(outcome, names)))
    for worker in sorted({step.worker for step in outcome.steps}):
        mine = [step for step in outcome.steps if step.worker == worker]
        built = sum(step.cache == "miss" for step in mine)
        print(f"{worker}: {len(mine)} steps, {built} artifacts built")
    verified = True
    for deployment in cluster.deployments():
        checked = cluster.genoflow(deployment, "verify")
        verified &= checked.returncode == 0
        print(f"genoflow verify on {deployment}: {checked.stdout.strip().splitlines()[-1:]}")
    status = cluster.genoflow(cluster.deployments()[0], "status", "--json")
    print("\nReplicas (deployment:type):")
    print("\n".join(replica_lines(json.loads(status.stdout))))
    failed_checks = [s for s in outcome.steps if s.passed is False]
    if failures:
        print("\nFailed runs:\n" + "\n".join(failures))
    print(f"\n{manifest.name}: {len(partitions)} sources on {cluster.workers} workers, "
          f"{wall:.1f} s from drop to verified")  # fmt: skip
    return not failures and not failed_checks and verified


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.cluster", description=__doc__)
    parser.add_argument("--workers", type=int, default=2, help="Celery workers (default 2)")
    parser.add_argument("--manifest", type=Path, default=DEMO, help="the manifest to drop")
    parser.add_argument("--root", type=Path, default=REPO / ".genoflow" / "cluster",
                        help="the cluster's folder, emptied first")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for runs")
    parser.add_argument("--serve", action="store_true",
                        help="keep the cluster (and its UI) up until Ctrl-C")  # fmt: skip
    args = parser.parse_args(argv)
    stop_on_sigterm()
    root = fresh_root(args.root.resolve())
    print(f"Starting a local cluster with {args.workers} workers in {root} …", flush=True)
    ok = False
    try:
        with LocalCluster(root, workers=args.workers) as cluster:
            ok = run_demo(cluster, args.manifest.resolve(), timeout=args.timeout)
            if args.serve:
                print(f"Serving {cluster.webserver_url}; Ctrl-C stops the cluster.", flush=True)
                while True:
                    time.sleep(3600)
            print("Stopping every service, by PID …", flush=True)
    except KeyboardInterrupt:
        print("Interrupted: every service was stopped.", file=sys.stderr)
        if not args.serve:
            return 130
    except (TimeoutError, ServiceError) as exc:
        print(f"cluster-demo: {exc}\nEvery service was stopped.", file=sys.stderr)
        return 1
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"CPU time of the cluster's processes: {usage.ru_utime + usage.ru_stime:.0f} s")
    return 0 if ok else 1


def run_demo(cluster: LocalCluster, manifest: Path, *, timeout: float) -> bool:
    """List the services, drop ``manifest``, wait for its runs and report."""
    for service in cluster.services:
        print(f"  {service.name:18} pid {service.pid:<8} log {service.log}")
    print(f"UI: {cluster.webserver_url}", flush=True)
    started = time.monotonic()
    dropped = drop_manifest(manifest, cluster.manifests)
    print(f"Dropped {dropped}; waiting for the sensor and the runs …", flush=True)
    return report(cluster, dropped, timeout=timeout, started=started)


if __name__ == "__main__":
    sys.exit(main())
