"""Shared fixtures: the reference tools used as oracles, the demo data folder, a Dagster instance.

Helpers that are not fixtures (servers, fakes, process races) live in ``genoflow_tests/support``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from genoflow_tests.support.unavailable import unavailable

if TYPE_CHECKING:
    from dagster import DagsterInstance

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"


def require_tool(name: str) -> str:
    """Return the path of a reference CLI tool, or skip (fail under GENOFLOW_REQUIRE_TOOLS=1)."""
    path = shutil.which(name)
    if path:
        return path
    message = (
        f"{name} is not on PATH: install Debian's samtools, tabix and bcftools "
        "(apt-get install samtools tabix bcftools) to run the oracle tests"
    )
    unavailable(message)


@pytest.fixture
def samtools() -> str:
    return require_tool("samtools")


@pytest.fixture
def tabix() -> str:
    return require_tool("tabix")


@pytest.fixture
def bcftools() -> str:
    return require_tool("bcftools")


@pytest.fixture
def bgzip() -> str:
    return require_tool("bgzip")


@pytest.fixture
def data_dir() -> Path:
    return DATA


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    """An ephemeral Dagster instance (``instance_for_test``), disposed after the test."""
    from dagster import instance_for_test  # imported here: most tests never need dagster

    with instance_for_test() as instance:
        yield instance


def run_cli(
    home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``genoflow ARGS`` in a child process on its own GENOFLOW_HOME (DAGSTER_HOME inside)."""
    full = {**os.environ, "GENOFLOW_HOME": str(home), "GENOFLOW_THREADS": "2", **(env or {})}
    if "DAGSTER_HOME" not in (env or {}):
        full.pop("DAGSTER_HOME", None)
    return subprocess.run(
        [sys.executable, "-m", "genoflow.cli", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
