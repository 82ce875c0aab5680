"""Time the manifest sensor's ticks on one large manifest, from first read to nothing left.

Invariant: each size runs against a fresh SQLite Dagster instance and a fresh registry in a
temporary folder, with a manifest of N distinct interval sources (BED rows, each its own md5).
A tick is timed as what Dagster bounds by its gRPC timeout (60 s by default): the sensor
function, including Dagster's resolution of its run requests, plus the serialization of its
result. Between ticks the partition requests are applied, as the daemon does. Ticks repeat until
one requests nothing; that last one shows the cost of a tick over an unchanged folder. Then 10
rows are added to the manifest and one more tick is timed: only its new lines are read, against
the lines the sensor kept of its previous content.

Usage: ``python benchmarks/sensor_tick.py [--rows 10000,100000] [--output FILE] [--profile FILE]``
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, build_sensor_context
from dagster._serdes import serialize_value

from genoflow.definitions import defs
from genoflow.defs.resources import GenoflowResource
from genoflow.defs.sensors import SENSOR_NAME


def write_manifest(folder: Path, rows: int, *, start: int = 0) -> Path:
    """A TSV of ``rows`` BED sources (numbered from ``start``); the files need not exist."""
    lines = ["name\turi\tmd5\tformat\tsize\tsample\n"]
    for i in range(start, rows):
        md5 = hashlib.md5(f"source {i}".encode()).hexdigest()
        lines.append(f"peaks_{i:06d}.bed\tdata/peaks_{i:06d}.bed\t{md5}\tbed\t{1000 + i}\tS{i}\n")
    path = folder / f"manifest_{rows}.tsv"
    path.write_text("".join(lines))
    past = time.time() - 60
    os.utime(path, (past, past))
    return path


def measure(rows: int, *, profile: Path | None = None) -> dict[str, float]:
    """Ticks over one manifest of ``rows`` new md5s until nothing is left to request, then one
    tick after 10 rows were added to it, profiled into ``profile`` if given."""
    repository = defs.get_repository_def()
    sensor = repository.get_sensor_def(SENSOR_NAME)
    ticks: list[float] = []
    serialized: list[float] = []
    payload = 0
    with tempfile.TemporaryDirectory(prefix="sensor-tick-") as scratch:
        root = Path(scratch)
        (root / "manifests").mkdir()
        (root / "dagster").mkdir()
        os.environ["GENOFLOW_MANIFESTS"] = str(root / "manifests")
        write_manifest(root / "manifests", rows)
        resources = {"genoflow": GenoflowResource(home=str(root / "home"))}
        requested, cursor = 0, None
        with DagsterInstance.from_config(str(root / "dagster")) as instance:

            def tick(
                cursor: str | None, profiler: cProfile.Profile | None = None
            ) -> tuple[Any, float]:
                context = build_sensor_context(
                    instance_ref=instance.get_ref(),
                    cursor=cursor,
                    resources=resources,
                    repository_def=repository,
                )
                started = time.perf_counter()
                if profiler is None:
                    data = sensor.evaluate_tick(context)
                else:
                    data = profiler.runcall(sensor.evaluate_tick, context)
                return data, time.perf_counter() - started

            while True:
                data, seconds = tick(cursor)
                ticks.append(seconds)
                started = time.perf_counter()
                payload = max(payload, len(serialize_value(data)))
                serialized.append(time.perf_counter() - started)
                # What the daemon does with the result, outside the code server's call.
                for request in data.dynamic_partitions_requests or []:
                    instance.add_dynamic_partitions(
                        request.partitions_def_name, request.partition_keys
                    )
                cursor = data.cursor
                if not data.run_requests:
                    break
                requested += len(data.run_requests)
            assert requested == rows, f"{requested} of {rows} md5s requested"
            grown = write_manifest(root / "manifests", rows + 10)
            grown.replace(root / "manifests" / f"manifest_{rows}.tsv")
            profiler = cProfile.Profile() if profile else None
            data, changed = tick(cursor, profiler)
            if profiler is not None and profile is not None:
                profiler.dump_stats(profile)
            assert len(data.run_requests) == 10, len(data.run_requests)
            cursor_bytes = len(data.cursor or "")
    return {
        "first": ticks[0] + serialized[0],
        "slowest": max(t + s for t, s in zip(ticks, serialized, strict=True)),
        "ticks": len(ticks) - 1,
        "payload_mb": payload / 1e6,
        "unchanged": ticks[-1],
        "changed": changed,
        "cursor": cursor_bytes,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="10000,100000", help="manifest sizes, comma-separated")
    parser.add_argument("--output", type=Path, help="also write the table here (markdown)")
    parser.add_argument(
        "--profile",
        type=Path,
        help="write cProfile stats of the tick after the 10-row change here (of the last size; "
        "read them with python -m pstats FILE)",
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    lines = [
        "| manifest rows | ticks with requests | first tick s | slowest tick s "
        "| largest result MB | unchanged tick s | 10 rows added: tick s | cursor bytes |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for rows in (int(value) for value in args.rows.split(",")):
        m = measure(rows, profile=args.profile)
        lines.append(
            f"| {rows:,} | {m['ticks']} | {m['first']:.2f} | {m['slowest']:.2f} "
            f"| {m['payload_mb']:.1f} | {m['unchanged']:.3f} | {m['changed']:.2f} "
            f"| {m['cursor']} |"
        )
        print(lines[-1], flush=True)
    if args.output:
        args.output.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
