"""The UI in a real browser: the asset graph and a partition's pages show names and checks.

A small manifest is built with ``genoflow run`` into a private instance, ``dagster-webserver``
serves it on 127.0.0.1, and Debian's headless ``chromium`` renders each page, returning its DOM
(asserted on) and a screenshot. With ``GENOFLOW_SCREENSHOTS=<folder>`` the screenshots are also
copied there (the README's pictures come from ``GENOFLOW_SCREENSHOTS=docs/screenshots``).
"""

from __future__ import annotations

import hashlib
import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import require_tool
from .support.dagster_services import (
    environment,
    free_port,
    graphql,
    start,
    stop,
    wait_for_webserver,
)

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

BED = "chr2\t50\t60\tb\nchr1\t30\t40\ta\nchr1\t10\t20\tc\n"
CSV = "sample,reads\nNA12878,1000\n"
GROUP_PAGE = "/locations/__repository__@genoflow.definitions/asset-groups/intervals/lineage"


def _chromium() -> str:
    try:
        return require_tool("chromium")
    except pytest.skip.Exception:
        pytest.skip(
            "chromium is not on PATH: install Debian's chromium (apt-get install chromium) "
            "to run the browser test"
        )


def render(url: str, screenshot: Path, *, height: int = 800) -> str:
    """Load ``url`` in headless chromium; save a screenshot and return the page's visible text."""
    profile = screenshot.with_suffix(".profile")
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--window-size=1400,{height}",
        # Virtual time waits for the page's GraphQL answers before the DOM is taken.
        "--virtual-time-budget=20000",
        f"--screenshot={screenshot}",
        "--dump-dom",
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    shutil.rmtree(profile, ignore_errors=True)
    keep = os.environ.get("GENOFLOW_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(keep) / screenshot.name)
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", result.stdout, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory):
    """A webserver over an instance where one BED and one CSV were built; yields (url, md5)."""
    _chromium()
    root = tmp_path_factory.mktemp("ui")
    data = root / "manifests" / "data"
    data.mkdir(parents=True)
    (data / "peaks.bed").write_text(BED)
    (data / "table.csv").write_text(CSV)
    bed_md5 = hashlib.md5(BED.encode()).hexdigest()
    csv_md5 = hashlib.md5(CSV.encode()).hexdigest()
    manifest = root / "manifests" / "batch.tsv"
    manifest.write_text(
        f"name\turi\tmd5\npeaks.bed\tdata/peaks.bed\t{bed_md5}\ntable.csv\tdata/table.csv\t{csv_md5}\n"
    )
    env = environment(root)
    built = subprocess.run(
        [sys.executable, "-m", "genoflow.cli", "run", str(manifest)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    logs = root / "logs"
    logs.mkdir()
    port = free_port()
    web = start(
        "dagster-webserver",
        ["-m", "genoflow.definitions", "-h", "127.0.0.1", "-p", str(port)],
        env,
        logs,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_webserver(url, web, logs, timeout=90)
        graphql(url, "mutation { setNuxSeen }")  # no first-visit newsletter dialog on top
        yield url, bed_md5
    finally:
        stop(web)


def test_the_asset_graph_shows_the_chain_with_its_checks_passed(ui, tmp_path) -> None:
    url, _ = ui
    text = render(url + GROUP_PAGE, tmp_path / "asset-graph.png")
    for name in ("source", "sorted", "index"):
        assert re.search(rf"\b{name}\b Latest event", text), name
    assert text.count("Asset checks 1 / 1 Passed") == 3
    assert text.count("100% filled") == 3


def test_a_partition_page_shows_its_md5_status_and_lineage_metadata(ui, tmp_path) -> None:
    url, md5 = ui
    page = f"{url}/assets/intervals/index?view=partitions&partition={md5}"
    text = render(page, tmp_path / "partition.png", height=1000)
    assert f"{md5} Materialized" in text
    assert "names peaks.bed" in text
    assert "records_out 3" in text
    assert "processor genoflow.processors.intervals.index_intervals" in text


def test_the_checks_page_shows_the_partition_passed_its_check(ui, tmp_path) -> None:
    url, md5 = ui
    text = render(f"{url}/assets/intervals/index?view=checks", tmp_path / "checks.png")
    assert "answers_region_queries Succeeded" in text
    assert "Evaluation result Passed" in text
    assert f"Partition {md5}" in text
    assert "records_found 3" in text
