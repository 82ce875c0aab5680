"""Time what reads every partition: backfill plan, schedule tick, automation pass, ``status``.

Invariant: one fresh SQLite Dagster instance and registry in a temporary folder hold N interval
md5 partitions and their manifest rows, none built (the worst case for a backfill: everything is
missing). Nothing is executed; the ticks are evaluated as the daemon would, and ``genoflow status
--json`` runs as a user would run it.

Usage: ``python benchmarks/many_partitions.py [--md5s 100000]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

from dagster import (
    AssetSelection,
    DagsterInstance,
    build_schedule_context,
    evaluate_automation_conditions,
)
from dagster._serdes import serialize_value

from genoflow.definitions import defs
from genoflow.defs.backfill import plan
from genoflow.defs.partitions import PARTITIONS
from genoflow.defs.schedules import requests
from genoflow.storage.registry import Registry


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _rows(count: int, manifest: Path) -> list[SimpleNamespace]:
    return [
        SimpleNamespace(
            md5=hashlib.md5(f"source {i}".encode()).hexdigest(),
            name=f"peaks_{i:06d}.bed",
            uri=f"{manifest.parent}/peaks_{i:06d}.bed",
            format="bed",
            family="intervals",
            size=1000 + i,
            manifest=manifest,
            line=i + 2,
            extra={},
        )
        for i in range(count)
    ]


def measure(count: int) -> dict[str, float]:
    """Seconds for each reader of ``count`` unbuilt partitions."""
    with tempfile.TemporaryDirectory(prefix="many-partitions-") as scratch:
        root = Path(scratch)
        home = root / "home"
        home.mkdir()
        rows = _rows(count, root / "manifest.tsv")
        started = time.perf_counter()
        Registry(home / "registry.db").register(rows)
        registered = time.perf_counter() - started
        (root / "dagster").mkdir()
        with DagsterInstance.from_config(str(root / "dagster")) as instance:
            started = time.perf_counter()
            instance.add_dynamic_partitions(PARTITIONS["intervals"].name, [r.md5 for r in rows])
            added = time.perf_counter() - started
            started = time.perf_counter()
            pending = plan(instance, ["intervals"])
            planned = time.perf_counter() - started
            assert len(pending) == count, len(pending)
            started = time.perf_counter()
            context = build_schedule_context(instance=instance, scheduled_execution_time=now())
            tick = requests(context, "intervals")
            ticked = time.perf_counter() - started
            answer = len(serialize_value(list(tick))) / 1e6
            passes = []
            cursor = None
            for _ in range(2):  # the first pass, then one with nothing new
                started = time.perf_counter()
                result = evaluate_automation_conditions(
                    defs,
                    instance,
                    asset_selection=AssetSelection.groups("intervals"),
                    cursor=cursor,
                )
                passes.append(time.perf_counter() - started)
                cursor = result.cursor
        env = {**os.environ, "GENOFLOW_HOME": str(home), "DAGSTER_HOME": str(root / "dagster")}
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "genoflow.cli", "status", "--json"],
            env=env,
            capture_output=True,
            check=True,
        )
        status = time.perf_counter() - started
        assert done.stdout.count(b'"md5"') == count
    return {
        "register": registered,
        "add": added,
        "plan": planned,
        "tick": ticked,
        "answer": answer,
        "requests": len(tick),
        "status": status,
        "automation_first": passes[0],
        "automation_again": passes[1],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--md5s", default="100000", help="partition counts, comma-separated")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    print(
        "| md5s | register rows s | add partitions s | backfill plan s | schedule tick s "
        "| run requests | tick answer MB | status --json s | automation pass s | next pass s |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for count in (int(value) for value in args.md5s.split(",")):
        m = measure(count)
        print(
            f"| {count:,} | {m['register']:.1f} | {m['add']:.1f} | {m['plan']:.1f} "
            f"| {m['tick']:.1f} | {m['requests']:,} | {m['answer']:.1f} | {m['status']:.1f} "
            f"| {m['automation_first']:.1f} | {m['automation_again']:.1f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
