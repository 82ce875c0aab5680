"""Shared fixtures: the reference tools used as oracles, and the demo data folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
    if os.environ.get("GENOFLOW_REQUIRE_TOOLS") == "1":
        pytest.fail(message)
    pytest.skip(message)


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
