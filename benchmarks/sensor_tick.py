"""Time the manifest sensor's ticks on one large manifest, from first read to nothing left.

Invariant: each size and kind runs against a fresh SQLite Dagster instance and a fresh registry
in a temporary folder, with a manifest of N distinct interval sources (BED rows, each its own
md5): a plain manifest (``name, uri, md5, format, size``), or a CFDE C2M2 ``file.tsv`` naming
the same sources (its rows named ``id_namespace:local_id filename``, the format from the EDAM
term). A tick is timed as what Dagster bounds by its gRPC timeout (60 s by default): the sensor
function, including Dagster's resolution of its run requests, plus the serialization of its
result. Between ticks the partition requests are applied, as the daemon does. Ticks repeat until
one requests nothing; that last one shows the cost of a tick over an unchanged folder. Then the
manifest is changed four times, each change timed as one tick that must request exactly its new
md5s: 10 rows added, 1 more row appended, 1 row's md5 changed (each read by its new lines only,
against the lines the sensor kept of its previous content), and 1 more row's md5 changed with
those kept lines deleted first, so the manifest is read whole (what every change cost before).

Usage: ``python benchmarks/sensor_tick.py [--rows 10000,100000] [--kinds plain,c2m2]
[--output FILE] [--profile FILE]``
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, build_sensor_context
from dagster._serdes import serialize_value

from genoflow.definitions import defs
from genoflow.defs.resources import GenoflowResource
from genoflow.defs.sensors import SENSOR_NAME
from genoflow.manifests.c2m2 import C2M2_COLUMNS

Writer = Callable[..., Path]


def _md5(number: int, changed: frozenset[int]) -> str:
    salt = " changed" if number in changed else ""
    return hashlib.md5(f"source {number}{salt}".encode()).hexdigest()


def write_manifest(
    folder: Path, rows: int, *, start: int = 0, changed: frozenset[int] = frozenset()
) -> Path:
    """A TSV of ``rows`` BED sources (numbered from ``start``); the files need not exist. A row
    numbered in ``changed`` has another md5."""
    lines = ["name\turi\tmd5\tformat\tsize\tsample\n"]
    for i in range(start, rows):
        md5 = _md5(i, changed)
        lines.append(f"peaks_{i:06d}.bed\tdata/peaks_{i:06d}.bed\t{md5}\tbed\t{1000 + i}\tS{i}\n")
    return _settled(folder / "manifest.tsv", lines)


def write_c2m2(
    folder: Path, rows: int, *, start: int = 0, changed: frozenset[int] = frozenset()
) -> Path:
    """A C2M2 ``file.tsv`` (every C2M2 column) of the same sources as :func:`write_manifest`."""
    lines = ["\t".join(C2M2_COLUMNS) + "\n"]
    for i in range(start, rows):
        values = {
            "id_namespace": "cfde_bench",
            "local_id": f"FILE{i:06d}",
            "project_id_namespace": "cfde_bench",
            "project_local_id": "sensor_tick",
            "creation_time": "2026-01-01T00:00:00+00:00",
            "size_in_bytes": str(1000 + i),
            "sha256": hashlib.sha256(f"source {i}".encode()).hexdigest(),
            "md5": _md5(i, changed),
            "filename": f"peaks_{i:06d}.bed",
            "file_format": "format:3003",
            "data_type": "data:1255",
            "mime_type": "text/plain",
            "access_url": f"data/peaks_{i:06d}.bed",
        }
        lines.append("\t".join(values.get(column, "") for column in C2M2_COLUMNS) + "\n")
    return _settled(folder / "file.tsv", lines)


def _settled(path: Path, lines: list[str]) -> Path:
    """Write ``path`` through a sibling and a rename, dated a minute ago (so it is read now)."""
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text("".join(lines))
    past = time.time() - 60
    os.utime(temp, (past, past))
    temp.replace(path)
    return path


WRITERS: dict[str, Writer] = {"plain": write_manifest, "c2m2": write_c2m2}


class _Sensor:
    """The manifest sensor ticking against one instance, as the daemon ticks it."""

    def __init__(self, instance: DagsterInstance, home: Path) -> None:
        self.repository = defs.get_repository_def()
        self.sensor = self.repository.get_sensor_def(SENSOR_NAME)
        self.instance = instance
        self.resources = {"genoflow": GenoflowResource(home=str(home))}

    def tick(
        self, cursor: str | None, profiler: cProfile.Profile | None = None
    ) -> tuple[Any, float]:
        """One tick's result and its seconds (the sensor function, serialization excluded)."""
        started = time.perf_counter()
        # The resource closes its registry at teardown, so its context is entered for each
        # tick, as the daemon does; that is part of the tick.
        with build_sensor_context(
            instance_ref=self.instance.get_ref(),
            cursor=cursor,
            resources=self.resources,
            repository_def=self.repository,
        ) as context:
            if profiler is None:
                data = self.sensor.evaluate_tick(context)
            else:
                data = profiler.runcall(self.sensor.evaluate_tick, context)
        return data, time.perf_counter() - started

    def apply(self, data: Any) -> None:
        """What the daemon does with a result, outside the code server's call."""
        for request in data.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(
                request.partitions_def_name, request.partition_keys
            )


def _first_pass(sensor: _Sensor, rows: int) -> tuple[dict[str, float], str | None]:
    """Ticks until one requests nothing: their figures and the cursor after them."""
    ticks: list[float] = []
    serialized: list[float] = []
    payload, requested, cursor = 0, 0, None
    while True:
        data, seconds = sensor.tick(cursor)
        ticks.append(seconds)
        started = time.perf_counter()
        payload = max(payload, len(serialize_value(data)))
        serialized.append(time.perf_counter() - started)
        sensor.apply(data)
        cursor = data.cursor
        if not data.run_requests:
            break
        requested += len(data.run_requests)
    assert requested == rows, f"{requested} of {rows} md5s requested"
    figures = {
        "first": ticks[0] + serialized[0],
        "slowest": max(t + s for t, s in zip(ticks, serialized, strict=True)),
        "ticks": len(ticks) - 1,
        "payload_mb": payload / 1e6,
        "unchanged": ticks[-1],
    }
    return figures, cursor


def _changes(rows: int) -> list[tuple[str, int, frozenset[int], int, bool]]:
    """(figure, rows written, rows whose md5 changed, md5s it must request, read whole?)."""
    return [
        ("changed", rows + 10, frozenset(), 10, False),
        ("appended", rows + 11, frozenset(), 1, False),
        ("edited", rows + 11, frozenset({rows // 2}), 1, False),
        ("whole", rows + 11, frozenset({rows // 2, rows // 3}), 1, True),
    ]


def measure(rows: int, kind: str = "plain", *, profile: Path | None = None) -> dict[str, float]:
    """Ticks over one manifest of ``rows`` new md5s until nothing is left to request, then one
    tick after each change of :func:`_changes`; the 10-row change profiled into ``profile``."""
    write = WRITERS[kind]
    with tempfile.TemporaryDirectory(prefix="sensor-tick-") as scratch:
        root = Path(scratch)
        (root / "manifests").mkdir()
        (root / "dagster").mkdir()
        os.environ["GENOFLOW_MANIFESTS"] = str(root / "manifests")
        write(root / "manifests", rows)
        with DagsterInstance.from_config(str(root / "dagster")) as instance:
            sensor = _Sensor(instance, root / "home")
            figures, cursor = _first_pass(sensor, rows)
            for figure, written, changed, expected, whole in _changes(rows):
                write(root / "manifests", written, changed=changed)
                if whole:  # without the kept lines, the change is read whole
                    shutil.rmtree(root / "home" / "state" / "manifest-lines")
                profiler = cProfile.Profile() if profile and figure == "changed" else None
                data, figures[figure] = sensor.tick(cursor, profiler)
                if profiler is not None and profile is not None:
                    profiler.dump_stats(profile)
                assert len(data.run_requests) == expected, (figure, len(data.run_requests))
                sensor.apply(data)
                cursor = data.cursor
            figures["cursor"] = len(cursor or "")
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="10000,100000", help="manifest sizes, comma-separated")
    parser.add_argument(
        "--kinds", default="plain", help="plain (name, uri, md5…) and/or c2m2 (a C2M2 file.tsv)"
    )
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
        "| manifest | rows | ticks with requests | first tick s | slowest tick s "
        "| largest result MB | unchanged tick s | 10 rows added: tick s | 1 row appended: tick s "
        "| 1 row changed: tick s | 1 row changed, read whole: tick s | cursor bytes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for rows in (int(value) for value in args.rows.split(",")):
        for kind in args.kinds.split(","):
            m = measure(rows, kind, profile=args.profile)
            lines.append(
                f"| {kind} | {rows:,} | {m['ticks']} | {m['first']:.2f} | {m['slowest']:.2f} "
                f"| {m['payload_mb']:.1f} | {m['unchanged']:.3f} | {m['changed']:.2f} "
                f"| {m['appended']:.2f} | {m['edited']:.2f} | {m['whole']:.2f} | {m['cursor']} |"
            )
            print(lines[-1], flush=True)
    if args.output:
        args.output.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
