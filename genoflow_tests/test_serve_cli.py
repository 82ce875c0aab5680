"""``genoflow register`` and ``genoflow serve``: the commands, and real clients (Debian samtools,
tabix, bcftools; pysam) reading a running server over http, each compared with the same query
on the local file."""

from __future__ import annotations

import concurrent.futures
import http.client
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from genoflow.serve.catalog import Catalog, Files
from genoflow.storage.cache import Cache
from genoflow.storage.registry import Registry
from genoflow_tests.conftest import run_cli
from genoflow_tests.support.serve import DEMO, build_home, serving

BAM_MD5 = "60d89f3d549838c4a81131c2757bba7b"
VCF_MD5 = "d5193146fe5507a02ea5fe63fca2e27b"
BED_MD5 = "c32ab45bb03db2009d546949af1d515c"


def _manifest(path: Path, body: str) -> Path:
    path.write_text("name\turi\tmd5\tformat\n" + body)
    return path


def test_register_registers_rows_and_partitions_and_builds_nothing(tmp_path):
    from dagster import DagsterInstance

    manifest = _manifest(
        tmp_path / "m.tsv",
        f"trio.vcf\t{DEMO}/demo/trio.vcf\t{VCF_MD5}\t\n"
        f"broken.vcf\t{DEMO}/demo/trio.vcf\tnot-an-md5\t\n",
    )
    home = tmp_path / "home"
    done = run_cli(home, "register", str(manifest), env={"GENOFLOW_ALLOWED_ROOTS": str(DEMO)})
    assert done.returncode == 1  # the invalid row is reported; the valid one still registered
    assert "m.tsv:3: malformed md5" in done.stderr
    assert "registered 1 sources (1 new rows, 1 new partitions)" in done.stdout
    with Registry(home / "registry.db") as registry:
        assert [row.name for row in registry.rows()] == ["trio.vcf"]
    assert not (home / "cache").exists() or not any((home / "cache").rglob("genoflow.json"))
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert instance.get_dynamic_partitions("intervals_md5") == [VCF_MD5]
        assert instance.get_runs() == []


@pytest.mark.parametrize("args", [["--port", "http"], ["--port", "70000"], ["--workers", "0"]])
def test_serve_refuses_bad_arguments(tmp_path, args):
    done = run_cli(tmp_path / "home", "serve", *args, timeout=60)
    assert done.returncode == 2


def test_serve_refuses_a_missing_tokens_file_before_listening(tmp_path):
    env = {"GENOFLOW_SERVE_TOKENS": str(tmp_path / "nope")}
    done = run_cli(tmp_path / "home", "serve", "--port", "1", env=env, timeout=60)
    assert done.returncode == 2
    assert "[config] GENOFLOW_SERVE_TOKENS=" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_home(tmp_path_factory.mktemp("serve-cli"), run_cli)


@pytest.fixture(scope="module")
def server(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    with serving(home, log) as base:
        yield base


def _files(home: Path, md5: str) -> Files:
    with Registry(home / "registry.db") as registry:
        catalog = Catalog(registry, Cache(home / "cache"))
        files = catalog.files(catalog.resolve(md5))
    assert files is not None
    return files


def _run(command: list[str], cwd: Path) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.system
def test_samtools_reads_a_region_over_http_finding_the_index_by_name(
    server, home, samtools, tmp_path
):
    local = _files(home, BAM_MD5).data
    region = "chr1:1-50000000"
    over_http = _run([samtools, "view", f"{server}/files/{BAM_MD5}/x.bam", region], tmp_path)
    assert over_http == _run([samtools, "view", str(local), region], tmp_path)
    assert over_http.count("\n") > 0


@pytest.mark.system
def test_tabix_and_bcftools_read_a_vcf_region_over_http(server, home, tabix, bcftools, tmp_path):
    local = _files(home, VCF_MD5).data
    url = f"{server}/files/{VCF_MD5}/trio.vcf.gz"
    region = "chr1:1-50000000"
    over_http = _run([tabix, url, region], tmp_path)
    assert over_http == _run([tabix, str(local), region], tmp_path)
    assert over_http.count("\n") > 0
    view = [bcftools, "view", "-H", "-r", region]
    assert _run([*view, url], tmp_path) == _run([*view, str(local)], tmp_path)


@pytest.mark.system
def test_pysam_reads_bam_and_tabix_regions_over_http(server, home, tmp_path, monkeypatch):
    import pysam

    monkeypatch.chdir(tmp_path)  # htslib may keep a copy of a remote index in the cwd
    bam, bed = _files(home, BAM_MD5).data, _files(home, BED_MD5).data
    with (
        pysam.AlignmentFile(f"{server}/files/{BAM_MD5}/x.bam") as remote,
        pysam.AlignmentFile(str(bam)) as local,
    ):
        far = [read.to_string() for read in remote.fetch("chr1", 0, 50_000_000)]
        assert far and far == [read.to_string() for read in local.fetch("chr1", 0, 50_000_000)]
    with (
        pysam.TabixFile(f"{server}/files/{BED_MD5}/e.bed.gz") as remote,
        pysam.TabixFile(str(bed)) as local,
    ):
        contig = local.contigs[0]
        assert list(remote.fetch(contig)) == list(local.fetch(contig))


def _raw_get(base: str, target: str) -> tuple[int, bytes]:
    parts = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.putrequest("GET", target, skip_accept_encoding=True)
        connection.endheaders()
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


@pytest.mark.system
@pytest.mark.parametrize(
    "target",
    [
        "/data/../../../../etc/passwd",
        "/data/..%2f..%2f..%2fregistry.db",
        f"/files/{BAM_MD5}/..%2Fgenoflow.json",
        f"/files/{BAM_MD5}/../index/v2/genoflow.json",
        "/index/%2e%2e/%2e%2e/registry.db",
        "/data/sample3.bam%00.txt",
        "/data/%00",
    ],
)
def test_traversal_encoded_slashes_and_nuls_never_reach_a_file(server, target):
    status, body = _raw_get(server, target)
    assert status in (400, 404)
    assert b"root:" not in body and b"source_md5" not in body and b"SQLite" not in body


@pytest.mark.system
def test_tokens_never_reach_the_server_log(home, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("header-token-9f8e7d\n")
    log = tmp_path / "serve.log"
    with serving(home, log, {"GENOFLOW_SERVE_TOKENS": str(tokens)}) as base:
        parts = urllib.parse.urlsplit(base)
        for headers in ({"Authorization": "Bearer header-token-9f8e7d"}, {}):
            connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
            connection.request("GET", "/data/sample3.bam?token=query-token-1a2b3c", headers=headers)
            assert connection.getresponse().status == (200 if headers else 401)
            connection.close()
    text = log.read_text()
    assert '"GET /data/sample3.bam HTTP/1.1" 200' in text
    assert '"GET /data/sample3.bam HTTP/1.1" 401' in text
    assert "header-token-9f8e7d" not in text and "query-token-1a2b3c" not in text


def _get(base: str, target: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    parts = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        connection.request(method, target)
        answer = connection.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        connection.close()


@pytest.mark.system
def test_a_miss_starts_one_build_and_the_file_is_served_once_built(server, home):
    md5 = "574967c71e1172ba3e44ca3b796aae24"  # cohort.vcf.gz: registered, never built
    assert _get(server, f"/data/{md5}", "HEAD")[0] == 404
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        targets = [f"/data/{md5}", f"/index/{md5}", "/data/cohort.vcf.gz", f"/data/{md5}"]
        answers = list(pool.map(lambda target: _get(server, target), targets))
    assert {status for status, _, _ in answers} == {202}
    locations = {headers["location"] for _, headers, _ in answers}
    assert len(locations) == 1 and next(iter(locations)).startswith("/jobs/")
    assert all(int(headers["retry-after"]) >= 0 for _, headers, _ in answers)
    deadline = time.monotonic() + 240
    while (answer := _get(server, f"/data/{md5}"))[0] != 200:
        assert answer[0] == 202, answer[2]  # a failed build answers its error
        assert time.monotonic() < deadline, "the build did not finish within 240 s"
        time.sleep(1)
    status, _, body = _get(server, f"/index/{md5}")
    assert status == 200 and body[:4] == b"\x1f\x8b\x08\x04"  # a BGZF-compressed .tbi
