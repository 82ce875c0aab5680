"""Two genoflow nodes chained by GA4GH DRS: a C2M2 ``file.tsv`` whose rows point at a genoflow DRS
server, built end to end.

What ``make drs-demo`` runs:

1. node A: the demo manifest built into A's home (``GENOFLOW_HOME``, as ``make demo`` does; a
   cache hit when it was built before);
2. ``genoflow serve`` on A's home, on a free loopback port, in the background;
3. ``--out``/file.tsv: the demo C2M2 table (``data/c2m2/file.tsv``) with each row's
   ``access_url`` emptied and its ``persistent_id`` set to A's DRS id of the file,
   ``drs://127.0.0.1:PORT/{md5}``;
4. node B: ``genoflow run`` of that table into a fresh home of its own (``--home-b``, emptied
   first), sharing no folder with A, with ``GENOFLOW_DRS_INSECURE_HOSTS`` allowing plain http to
   A; its summary is printed as it comes;
5. B's staged, sorted and index files compared byte for byte with A's; the server stopped.

It exits 1 when any row failed or any file differs.

Usage::

    python scripts/drs_demo.py [--home-a .genoflow] [--home-b build/drs-demo/node-b]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

from serving import free_port, serving  # scripts/serving.py

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "data" / "manifests" / "demo.tsv"
TABLE = ROOT / "data" / "c2m2" / "file.tsv"
OUT = ROOT / "build" / "drs-demo"
# What would make B share storage with A, or read A's folders: B runs without them.
SHARED = ("DAGSTER_HOME", "GENOFLOW_REGISTRY_URL", "GENOFLOW_REPLICAS", "GENOFLOW_ALLOWED_ROOTS")


def genoflow(home: Path, *args: str, env: dict[str, str] | None = None, drop=()) -> int:
    """``genoflow ARGS`` on ``home``, its output passed through; its exit status."""
    full = {**os.environ, "GENOFLOW_HOME": str(home), **(env or {})}
    for name in ("DAGSTER_HOME", *drop):
        full.pop(name, None)
    command = [sys.executable, "-m", "genoflow.cli", *args]
    return subprocess.run(command, env=full, timeout=3600).returncode


def drs_table(source: Path, target: Path, authority: str) -> list[str]:
    """Write ``source`` (a C2M2 file.tsv) to ``target`` with every row's ``persistent_id`` A's
    DRS id of its md5 and its ``access_url`` empty; returns the md5s."""
    with source.open(newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        columns, rows = list(reader.fieldnames or ()), list(reader)
    for row in rows:
        row["persistent_id"] = f"drs://{authority}/{row['md5']}"
        row["access_url"] = ""
    with target.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return [row["md5"] for row in rows]


def outputs(home: Path, md5: str) -> dict[str, bytes]:
    """The data files (no ``genoflow.json``) of an md5's artifacts, by ``asset/name``."""
    found = {}
    for path in (home / "cache").glob(f"*/{md5[:2]}/{md5}/*/v*/*"):
        if path.name != "genoflow.json" and path.is_file():
            found[f"{path.parent.parent.name}/{path.name}"] = path.read_bytes()
    return found


def compare(home_a: Path, home_b: Path, md5s: list[str]) -> list[str]:
    """Say which of B's files are missing or differ from A's; print the count that match."""
    problems, same = [], 0
    for md5 in dict.fromkeys(md5s):
        ours, theirs = outputs(home_a, md5), outputs(home_b, md5)
        for key in sorted(ours):
            if key not in theirs:
                problems.append(f"{md5}: node B has no {key}")
            elif theirs[key] != ours[key]:
                problems.append(f"{md5}: node B's {key} differs from node A's")
            else:
                same += 1
    print(f"drs-demo: {same} files of node B (staged, sorted, index) are byte-identical to A's")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_a = Path(os.environ.get("GENOFLOW_HOME") or ROOT / ".genoflow")
    parser.add_argument("--home-a", type=Path, default=default_a, help="node A's home")
    parser.add_argument("--home-b", type=Path, default=OUT / "node-b", help="node B's home")
    parser.add_argument("--table", type=Path, default=TABLE, help="the C2M2 file.tsv to point at A")
    parser.add_argument("--port", type=int, default=0, help="A's port (0: a free one)")
    args = parser.parse_args()
    home_a, home_b = args.home_a.resolve(), args.home_b.resolve()
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"drs-demo: node A ({home_a}) builds {DEMO.relative_to(ROOT)}", flush=True)
    if genoflow(home_a, "run", str(DEMO)) != 0:
        return 1
    shutil.rmtree(home_b, ignore_errors=True)
    port = args.port or free_port()
    with serving(home_a, OUT / "serve-a.log", port=port) as base:
        authority = base.removeprefix("http://")
        table = OUT / "file.tsv"
        md5s = drs_table(args.table, table, authority)
        print(f"drs-demo: node A serves DRS at {base}/ga4gh/drs/v1; {table.relative_to(ROOT)} "
              f"names {len(md5s)} files as drs://{authority}/{{md5}}", flush=True)  # fmt: skip
        print(f"drs-demo: node B ({home_b}) runs it", flush=True)
        env = {"GENOFLOW_DRS_INSECURE_HOSTS": authority}
        status = genoflow(home_b, "run", str(table), env=env, drop=SHARED)
    problems = compare(home_a, home_b, md5s)
    for problem in problems:
        print(f"drs-demo: {problem}")
    return 1 if status != 0 or problems else 0


if __name__ == "__main__":
    sys.exit(main())
