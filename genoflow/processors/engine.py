"""Choose which htslib does the heavy work: the command-line tools on PATH, or pysam's own.

Invariant: every processor call resolves its engine once, at call time, from the
``GENOFLOW_ENGINE`` environment variable, and reports it in its result's metadata, so an
artifact always says which tools produced its bytes. Nothing is read at import time.

``GENOFLOW_ENGINE`` takes:

- ``auto`` (the default): ``htslib-cli`` when every tool the processor needs is on PATH at
  version 1.10 or later, else ``pysam``;
- ``htslib-cli``: the command-line tools (``samtools``; ``bgzip`` and ``tabix``), failing when one
  is missing or too old;
- ``pysam``: the htslib inside the pysam wheel only (a pip-only install). It builds without
  libdeflate and compresses on one thread, so it is slower, but its output is just as valid.

The two engines write the same records in the same order; their compressed bytes differ (zlib
versus libdeflate), each deterministic for a given tool version.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Literal

from genoflow.core.errors import ProcessingError
from genoflow.core.settings import ENGINE_VARIABLE, engine_name

__all__ = ["ENGINE_VARIABLE", "MIN_VERSION", "Engine", "Tools", "choose"]

Engine = Literal["htslib-cli", "pysam"]
MIN_VERSION = (1, 10)
"""Oldest htslib tools accepted: ``samtools sort --write-index`` and ``##idx##`` need 1.10."""

_CHOICES = ("auto", "htslib-cli", "pysam")
_VERSION = re.compile(rb"(\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class Tools:
    """The engine chosen for one processor call.

    Attributes:
        engine: ``htslib-cli`` or ``pysam``.
        paths: for ``htslib-cli``, each tool's absolute path.
        versions: the version of each tool (or of pysam and its htslib).
    """

    engine: Engine
    paths: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def cli(self) -> bool:
        """Whether the command-line tools do the work."""
        return self.engine == "htslib-cli"

    def metadata(self) -> dict[str, object]:
        """What a result records about the engine: its name and the versions that shaped bytes."""
        return {"engine": self.engine, "engine_versions": dict(self.versions)}


def choose(*needed: str, name: str, stage: str) -> Tools:
    """Resolve ``GENOFLOW_ENGINE`` for a processor that needs the tools ``needed``.

    Args:
        needed: command-line tools the ``htslib-cli`` engine would run, e.g. ``"samtools"``.
        name: the file's user-facing name, used in errors.
        stage: the stage asking, used in errors.

    Returns:
        The engine and its tools' versions.

    Raises:
        ProcessingError: ``GENOFLOW_ENGINE`` is not a known choice, or it asks for
            ``htslib-cli`` and a tool is missing or older than 1.10.
    """
    wanted = engine_name()
    if wanted not in _CHOICES:
        raise ProcessingError(
            f"{ENGINE_VARIABLE}={wanted!r} is not one of {', '.join(_CHOICES)}",
            file=name,
            stage=stage,
            hint=f"unset {ENGINE_VARIABLE} or set it to auto, htslib-cli or pysam",
        )
    if wanted != "pysam":
        found, problems = _find(needed)
        if not problems:
            versions = {tool: version for tool, (_, version) in found.items()}
            return Tools("htslib-cli", {t: p for t, (p, _) in found.items()}, versions)
        if wanted == "htslib-cli":
            raise ProcessingError(
                f"{ENGINE_VARIABLE}=htslib-cli but {'; '.join(problems)}",
                file=name,
                stage=stage,
                hint="install samtools and tabix (htslib 1.10 or later), or use pysam",
            )
    return _pysam_tools()


def _find(needed: tuple[str, ...]) -> tuple[dict[str, tuple[str, str]], list[str]]:
    found: dict[str, tuple[str, str]] = {}
    problems: list[str] = []
    for tool in needed:
        path = shutil.which(tool)
        if path is None:
            problems.append(f"{tool} is not on PATH")
            continue
        version = _version(os.path.realpath(path))
        numbers = _VERSION.search(version.encode())
        if numbers is None or tuple(map(int, numbers.groups()[:2])) < MIN_VERSION:
            problems.append(f"{tool} at {path} is version {version or 'unknown'}, below 1.10")
            continue
        found[tool] = (path, version)
    return found, problems


@functools.lru_cache(maxsize=32)
def _version(path: str) -> str:
    """The first version number a tool prints (``samtools 1.16.1`` → ``1.16.1``), or ``""``."""
    try:
        done = subprocess.run([path, "--version"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    found = _VERSION.search(done.stdout.split(b"\n", 1)[0])
    return found.group(0).decode() if found else ""


def _pysam_tools() -> Tools:
    import pysam.version

    versions = {"pysam": pysam.version.__version__, "htslib": pysam.version.__htslib_version__}
    return Tools("pysam", {}, versions)
