"""Killing a ``genoflow run`` child at a chosen moment, and reading the moment back from disk.

The child arms a trigger (a wrapper around one project function, installed in that child only)
that SIGKILLs its own process there; nothing in the package knows about it. Shared by
``test_reliability_crashes``, ``test_reliability_faults`` and ``scripts/stress_kills.py``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from genoflow.storage.cache import MARKER
from genoflow_tests.support.deployments import (
    REPO,
    artifacts,
    content_problems,
    marker_problems,
    readable_replica_problems,
    replica_rows,
)

MOMENTS = ("staging", "sorting", "before-marker", "before-rename", "before-register", "replicating")


# --- the moments, and the triggers armed inside a child -----------------------------------------


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class _DyingReader:
    """A source file that kills its reader once ``after`` bytes were delivered."""

    def __init__(self, handle: BinaryIO, after: int) -> None:
        self._handle, self._after, self._delivered = handle, after, 0

    def read(self, size: int = -1) -> bytes:
        if self._delivered >= self._after:
            _die()
        data = self._handle.read(size)
        self._delivered += len(data)
        return data

    def fileno(self) -> int:
        return self._handle.fileno()

    def __enter__(self) -> _DyingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


def _arm_staging() -> None:
    from genoflow.storage import staging

    # Every local opener (plain and confined to the allowed roots) opens through open_source_file.
    real = staging.open_source_file

    def open_file(uri: str, roots: Any) -> _DyingReader:
        handle = real(uri, roots)
        return _DyingReader(handle, after=os.fstat(handle.fileno()).st_size // 2)

    staging.open_source_file = open_file


def _arm(module: Any, name: str, *, when: Callable[..., bool] = lambda *a, **k: True) -> None:
    """Replace ``module.name`` by a wrapper that dies when ``when(*args)`` holds, else calls it."""
    real = getattr(module, name)

    def dying(*args: Any, **kwargs: Any) -> Any:
        if when(*args, **kwargs):
            _die()
        return real(*args, **kwargs)

    setattr(module, name, dying)


def _arm_before_marker() -> None:
    from genoflow.storage import cache

    _arm(cache, "_write_marker")


def _arm_before_rename() -> None:
    from genoflow.storage import atomic

    _arm(atomic, "publish_dir")


def _arm_before_register() -> None:
    from genoflow.storage.node import Node

    _arm(Node, "register")


def _arm_replicating() -> None:
    from genoflow.storage.gcs import GcsLocation

    # The data objects are up; the marker that would make them an artifact is not.
    _arm(GcsLocation, "put", when=lambda _self, _src, path, **_: path.endswith(f"/{MARKER}"))


TRIGGERS: dict[str, Callable[[], None]] = {
    "staging": _arm_staging,
    "before-marker": _arm_before_marker,
    "before-rename": _arm_before_rename,
    "before-register": _arm_before_register,
    "replicating": _arm_replicating,
}


def run_armed(moment: str, argv: list[str]) -> int:
    """The child's entry point: arm the trigger of ``moment``, then run ``genoflow ARGV``."""
    TRIGGERS[moment]()
    from genoflow.cli import main

    return main(argv)


def launch_armed(home: Path, moment: str, *args: str, env: dict[str, str]) -> subprocess.Popen:
    """Start ``genoflow ARGS`` in a child that kills itself at ``moment``."""
    code = (
        "import sys; from genoflow_tests.support.crashes import run_armed; "
        "sys.exit(run_armed(sys.argv[1], sys.argv[2:]))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, moment, *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_when(child: subprocess.Popen, condition: Callable[[], bool], timeout: float = 300) -> None:
    """SIGKILL ``child`` from outside as soon as ``condition()`` holds (polled every 2 ms)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if child.poll() is not None or time.monotonic() > deadline:
            return
        time.sleep(0.002)
    child.send_signal(signal.SIGKILL)


def sorting(home: Path) -> bool:
    """A ``sorted`` draft exists and its sort's scratch folder too: a sort is running."""
    drafts = list((home / "cache").glob("*/*/*/sorted/.v*.tmp.*"))
    return bool(drafts) and any((home / "work").glob(".*-sorted.tmp.*"))


# --- reading the moment back from the disk ------------------------------------------------------


def drafts(home: Path) -> list[Path]:
    """Private temp folders next to artifact folders (a build in progress, or a dead one's)."""
    return sorted(p for p in (home / "cache").glob("*/*/*/*/.*.tmp.*") if p.is_dir())


def bucket_objects(objects: Path | None) -> list[Path]:
    """Every object file the emulator keeps (its bucket metadata files excluded)."""
    if objects is None or not objects.exists():
        return []
    return [p for p in objects.rglob("*") if p.is_file() and p.parent != objects]


def bucket_partials(objects: Path | None) -> list[str]:
    """Data objects whose artifact has no marker: not an artifact, debris of a dead copy."""
    return sorted(
        str(p.relative_to(objects))
        for p in bucket_objects(objects)
        if not (p.parent / MARKER).exists() and objects is not None
    )


def bucket_problems(objects: Path | None) -> list[str]:
    """Artifacts in the bucket (marker present) whose files are missing or differ."""
    markers = [p for p in bucket_objects(objects) if p.name == MARKER]
    return [problem for marker in markers for problem in marker_problems(marker.parent)]


def classify(home: Path, objects: Path | None = None, md5: str = "") -> str:
    """Say at which moment a killed ``genoflow run`` died, from what it left on disk.

    Args:
        home: the killed run's GENOFLOW_HOME.
        objects: the emulator's object folder, when the run replicated to a bucket.
        md5: the source the run was building, when the home also holds older artifacts.
    """
    for draft in drafts(home):
        asset, names = draft.parent.name, {p.name for p in draft.iterdir()}
        if MARKER in names:
            return "before-rename"
        if asset == "source":
            return "staging" if not names or "staged" in names else "before-marker"
        if asset == "sorted":
            sorting_now = any((home / "work").glob(".*-sorted.tmp.*"))
            return "sorting" if sorting_now or not names else "before-marker"
        return "indexing"
    rows = replica_rows(home / "registry.db")
    if any(row[6] == "pending" for row in rows) or bucket_partials(objects):
        return "replicating"
    registered = {row[0] for row in rows if not row[3].startswith("gs://")}
    if set(artifacts(home)) - registered:
        return "before-register"
    built = [key for key in artifacts(home) if md5 in key]
    if not built:
        return "before-any-build"
    return "after-last-step" if any("/index/" in key for key in built) else "between-steps"


def reader_problems(home: Path, objects: Path | None = None) -> list[str]:
    """What a reader could be handed that is not a whole artifact: in the cache, through the
    registry, or in the bucket."""
    return (
        content_problems(home)
        + readable_replica_problems(home / "registry.db", objects)
        + bucket_problems(objects)
    )


# --- inputs -------------------------------------------------------------------------------------


def write_big_bed(folder: Path, seed: int, lines: int = 250_000) -> Path:
    """A shuffled BED of a few MB (several staging chunks, a sort that lasts), and its manifest."""
    import hashlib

    rng = random.Random(seed)
    rows = [
        f"chr{rng.randint(1, 22)}\t{start}\t{start + rng.randint(1, 900)}\tpeak{i}_{seed}\n"
        for i, start in enumerate(rng.randrange(0, 2_000_000_000) for _ in range(lines))
    ]
    data = "".join(rows).encode()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"peaks_{seed}.bed").write_bytes(data)
    manifest = folder / f"m_{seed}.tsv"
    md5 = hashlib.md5(data).hexdigest()
    manifest.write_text(f"name\turi\tmd5\npeaks_{seed}.bed\tpeaks_{seed}.bed\t{md5}\n")
    return manifest
