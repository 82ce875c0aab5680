"""End to end with the real daemon and webserver: a dropped manifest becomes verified artifacts.

One test, bounded: it starts ``dagster-webserver`` and ``dagster-daemon`` on 127.0.0.1 with a
private ``DAGSTER_HOME``, ``GENOFLOW_HOME`` and watched folder, copies a manifest in, waits for
every chain, reads lineage, partitions, checks and metadata back through GraphQL, then drops a
second manifest sharing one md5 and checks that only the new md5 runs. It stops what it started.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest

from .support.dagster_services import (
    environment,
    free_port,
    graphql,
    log_tail,
    start,
    stop,
    wait_for_webserver,
)

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

SAM = (
    "@HD\tVN:1.6\tSO:unsorted\n@SQ\tSN:chr1\tLN:10000\n"
    "r1\t0\tchr1\t500\t60\t10M\t*\t0\t0\tACGTACGTAC\tIIIIIIIIII\n"
    "r2\t0\tchr1\t100\t60\t10M\t*\t0\t0\tACGTACGTAC\tIIIIIIIIII\n"
    "r3\t4\t*\t0\t0\t*\t*\t0\t0\tACGTACGTAC\tIIIIIIIIII\n"
)
BED = "chr2\t50\t60\tb\nchr1\t30\t40\ta\nchr1\t10\t20\tc\n"
NEW_BED = "chr3\t5\t9\td\nchr1\t1\t2\te\n"
CSV = "sample,reads\nNA12878,1000\n"
CHAINS = {"alignments": 3, "intervals": 3, "passthrough": 1}
DEADLINE = 150  # seconds for every chain of one manifest to be materialized

ASSET_NODES = """
{ assetNodes { assetKey { path } dependencyKeys { path } kinds description
    tags { key value }
    partitionStats { numMaterialized numPartitions numFailed numMaterializing } } }
"""
MATERIALIZATIONS = """
query ($path: [String!]!, $partition: String!) {
  assetOrError(assetKey: {path: $path}) { ... on Asset {
    assetMaterializations(partitions: [$partition]) {
      runId tags { key value }
      metadataEntries { label __typename
        ... on PathMetadataEntry { path } ... on TextMetadataEntry { text }
        ... on JsonMetadataEntry { jsonString } ... on MarkdownMetadataEntry { mdStr }
        ... on UrlMetadataEntry { url } ... on IntMetadataEntry { intValue }
        ... on FloatMetadataEntry { floatValue } } } } } }
"""
CHECKS = """
query ($path: [String!]!, $check: String!, $partition: String!) {
  assetCheckExecutions(assetKey: {path: $path}, checkName: $check, partition: $partition,
                       limit: 5) { status evaluation { success partition } } }
"""
RUNS = """
{ runsOrError { ... on Runs { results { runId status jobName tags { key value } } } } }
"""
CHECK_NAMES = {
    "source": "md5_and_size_match_manifest",
    "sorted": "records_preserved_and_ordered",
    "index": "answers_region_queries",
}


def _put(folder: Path, name: str, text: str) -> tuple[str, str]:
    (folder / name).write_text(text)
    return name, hashlib.md5(text.encode()).hexdigest()


def _manifest(path: Path, rows: list[tuple[str, str]]) -> None:
    lines = "".join(f"{name}\tdata/{name}\t{md5}\n" for name, md5 in rows)
    path.write_text("name\turi\tmd5\n" + lines)


def _nodes(url: str) -> dict[str, dict]:
    return {"/".join(n["assetKey"]["path"]): n for n in graphql(url, ASSET_NODES)["assetNodes"]}


def _runs(url: str) -> list[dict]:
    return graphql(url, RUNS)["runsOrError"]["results"]


def _tags(entity: dict) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in entity["tags"]}


def _wait(url: str, done, what: str, logs: Path) -> None:
    """Poll until ``done(nodes)`` holds, or fail after DEADLINE seconds with the services' logs."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        nodes = _nodes(url)
        if done(nodes):
            return
        failed = [key for key, node in nodes.items() if node["partitionStats"]["numFailed"]]
        if failed:
            break
        time.sleep(1)
    runs = json.dumps(_runs(url), indent=1)[:3000]
    pytest.fail(
        f"{what}: not done in {DEADLINE} s; failed: {failed}\nruns: {runs}\n"
        f"{log_tail(logs, 'dagster-daemon', 80)}"
    )


def _materialized(count: int, families=CHAINS):
    def done(nodes: dict[str, dict]) -> bool:
        return all(
            nodes[f"{family}/{asset}"]["partitionStats"]["numMaterialized"] >= count
            for family in families
            for asset in ("source", "sorted", "index")[: CHAINS[family]]
        ) and not any(node["partitionStats"]["numMaterializing"] for node in nodes.values())

    return done


def _metadata(url: str, path: list[str], partition: str) -> tuple[dict, dict]:
    data = graphql(url, MATERIALIZATIONS, {"path": path, "partition": partition})
    (event,) = data["assetOrError"]["assetMaterializations"]
    return {entry["label"]: entry for entry in event["metadataEntries"]}, _tags(event)


@pytest.fixture
def deployment(tmp_path):
    """A running webserver and daemon over a private instance; yields (url, watched, logs)."""
    watched = tmp_path / "manifests"
    (watched / "data").mkdir(parents=True)
    logs = tmp_path / "logs"
    logs.mkdir()
    env = environment(
        tmp_path,
        GENOFLOW_MANIFESTS=str(watched),
        GENOFLOW_SENSOR_INTERVAL="2",
        GENOFLOW_BACKFILL_CRON="0 3 1 1 *",  # keeps the nightly backfill out of this test
    )
    port = free_port()
    module = ["-m", "genoflow.definitions"]
    web = start("dagster-webserver", [*module, "-h", "127.0.0.1", "-p", str(port)], env, logs)
    daemon = start("dagster-daemon", ["run", *module], env, logs)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_webserver(url, web, logs, timeout=90)
        yield url, watched, logs
    finally:
        stop(daemon)
        stop(web)


def test_dropped_manifests_become_verified_artifacts_and_only_new_md5s_run(
    deployment, tmp_path
) -> None:
    url, watched, logs = deployment
    data = watched / "data"
    reads, peaks, table = (
        _put(data, "reads.sam", SAM),
        _put(data, "peaks.bed", BED),
        _put(data, "table.csv", CSV),
    )
    _manifest(tmp_path / "first.tsv", [reads, peaks, table])
    shutil.copy(tmp_path / "first.tsv", watched / "first.tsv")
    _wait(url, _materialized(1), "first manifest", logs)

    nodes = _nodes(url)
    assert nodes["intervals/index"]["dependencyKeys"] == [{"path": ["intervals", "sorted"]}]
    assert nodes["intervals/sorted"]["dependencyKeys"] == [{"path": ["intervals", "source"]}]
    assert "bed" in nodes["intervals/sorted"]["kinds"]
    assert _tags(nodes["alignments/index"])["genoflow/family"] == "alignments"
    for node in nodes.values():
        assert node["description"]
        assert node["partitionStats"]["numFailed"] == 0
        assert node["partitionStats"]["numMaterialized"] == node["partitionStats"]["numPartitions"]

    for family, md5 in (
        ("alignments", reads[1]),
        ("intervals", peaks[1]),
        ("passthrough", table[1]),
    ):
        for asset in ("source", "sorted", "index")[: CHAINS[family]]:
            executions = graphql(
                url,
                CHECKS,
                {"path": [family, asset], "check": CHECK_NAMES[asset], "partition": md5},
            )["assetCheckExecutions"]
            assert [e["status"] for e in executions] == ["SUCCEEDED"], (family, asset)
            assert executions[0]["evaluation"]["success"] is True

    source, tags = _metadata(url, ["intervals", "source"], peaks[1])
    assert tags["genoflow/format"] == "bed" and tags["genoflow/family"] == "intervals"
    assert "first.tsv:3" in source["manifests"]["mdStr"]
    assert source["names"]["text"] == "peaks.bed"
    assert source["cache"]["text"] == "miss"
    assert source["seconds"]["__typename"] == "FloatMetadataEntry"
    assert Path(source["path"]["path"]).read_text() == BED
    assert source["upstream"]["path"] == str(data / "peaks.bed")
    index, _ = _metadata(url, ["intervals", "index"], peaks[1])
    assert index["records_out"]["intValue"] == 3
    assert "pysam" in json.loads(index["tools"]["jsonString"])
    assert index["processor_version"]["text"]
    assert {f["name"] for f in json.loads(index["files"]["jsonString"])} >= {"sorted.bed.gz.tbi"}

    before = {run["runId"] for run in _runs(url)}
    assert len(before) == 3, "one chain run per md5, nothing more"
    fresh = _put(data, "fresh.bed", NEW_BED)
    _manifest(tmp_path / "second.tsv", [peaks, fresh])
    shutil.copy(tmp_path / "second.tsv", watched / "second.tsv")
    _wait(url, _materialized(2, ["intervals"]), "second manifest", logs)
    time.sleep(6)  # a few more sensor ticks: nothing else may start
    new_runs = [run for run in _runs(url) if run["runId"] not in before]
    assert [_tags(run)["dagster/partition"] for run in new_runs] == [fresh[1]]
    assert [run["status"] for run in new_runs] == ["SUCCESS"]
    shared = graphql(
        url, MATERIALIZATIONS, {"path": ["intervals", "source"], "partition": peaks[1]}
    )
    assert len(shared["assetOrError"]["assetMaterializations"]) == 1
