"""Shared fixtures: the reference tools used as oracles, and the demo data folder."""

from __future__ import annotations

import os
import shutil
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
