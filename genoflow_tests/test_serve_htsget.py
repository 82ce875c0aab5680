"""htsget 1.3 against a running ``genoflow serve``: Debian samtools and bcftools follow tickets.

The home is built by ``genoflow run`` from generated files with several contigs, unplaced
unmapped reads and long spliced reads; each answer over htsget is compared with the same region
read from the local artifact (the ticket may bring more records, never fewer: the htsget result
is re-indexed and re-queried, so the comparison is exact).
"""

from __future__ import annotations

import json
import random
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pysam
import pytest

from genoflow.core.checksums import md5_file
from genoflow.serve.catalog import Catalog
from genoflow.storage.cache import Cache
from genoflow.storage.registry import Registry
from genoflow_tests.conftest import run_cli
from genoflow_tests.support.serve import serving

pytestmark = pytest.mark.system
CONTIGS = [("chr1", 200_000), ("chr2", 150_000), ("chrM", 16_000)]


def _bam(path: Path, rng: random.Random) -> Path:
    header = {"HD": {"VN": "1.6"}, "SQ": [{"SN": n, "LN": ln} for n, ln in CONTIGS]}
    with pysam.AlignmentFile(str(path), "wb", header=header) as out:
        for i in range(6000):
            read = pysam.AlignedSegment(out.header)
            read.query_name, read.query_sequence = f"r{i}", "ACGT" * 25
            read.query_qualities = pysam.qualitystring_to_array("I" * 100)
            if rng.random() < 0.05:
                read.flag, read.reference_id, read.reference_start = 4, -1, -1
            else:
                read.reference_id = rng.randrange(len(CONTIGS))
                read.reference_start = rng.randrange(CONTIGS[read.reference_id][1] - 5000)
                read.cigarstring = "50M2000N50M" if rng.random() < 0.05 else "100M"
                read.mapping_quality = 30
            out.write(read)
    return path


def _vcf(path: Path, rng: random.Random) -> Path:
    lines = ["##fileformat=VCFv4.2", *(f"##contig=<ID={n},length={ln}>" for n, ln in CONTIGS)]
    lines += ['##INFO=<ID=X,Number=1,Type=String,Description="filler">']
    lines += ["#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    for _ in range(6000):
        name, length = CONTIGS[rng.randrange(len(CONTIGS))]
        filler = "".join(rng.choice("ACGT0123") for _ in range(rng.choice([10, 200])))
        lines.append(f"{name}\t{rng.randrange(1, length)}\t.\tA\tC\t50\tPASS\tX={filler}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _manifest(path: Path, files: list[Path]) -> Path:
    rows = ["name\turi\tmd5\tformat", *(f"{f.name}\t{f}\t{md5_file(f)}\t" for f in files)]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("htsget")
    rng = random.Random(11)
    sources = folder / "sources"
    sources.mkdir()
    built = [_bam(sources / "reads.bam", rng), _vcf(sources / "calls.vcf", rng)]
    late = _bam(sources / "late.bam", random.Random(12))
    env = {"GENOFLOW_ALLOWED_ROOTS": str(sources)}
    done = run_cli(folder / "home", "run", str(_manifest(folder / "b.tsv", built)), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    added = run_cli(folder / "home", "register", str(_manifest(folder / "l.tsv", [late])), env=env)
    assert added.returncode == 0, added.stdout + added.stderr
    return folder / "home"


@pytest.fixture(scope="module")
def server(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving(home, tmp_path_factory.mktemp("log") / "serve.log") as base:
        yield base


def _md5(home: Path, name: str) -> str:
    return md5_file(home.parent / "sources" / name)


def _local(home: Path, name: str) -> Path:
    with Registry(home / "registry.db") as registry:
        catalog = Catalog(registry, Cache(home / "cache"))
        files = catalog.files(catalog.resolve(_md5(home, name)))
    assert files is not None
    return files.data


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120).stdout


def _call(url: str, body: dict | None = None, headers: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, dict(answer.headers), json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def test_samtools_follows_a_reads_ticket_and_its_ranges(server, home, samtools, tmp_path):
    local, md5, rng = _local(home, "reads.bam"), _md5(home, "reads.bam"), random.Random(5)
    for _ in range(8):
        name, length = CONTIGS[rng.randrange(len(CONTIGS))]
        start = rng.randrange(length)
        end = min(length, start + rng.choice([1, 500, 20_000]))
        url = f"{server}/reads/{md5}?referenceName={name}&start={start}&end={end}"
        got = tmp_path / "got.bam"
        _run(samtools, "view", "-b", "-o", str(got), url)
        _run(samtools, "index", str(got))
        region = f"{name}:{start + 1}-{end}"
        want = _run(samtools, "view", str(local), region)
        assert _run(samtools, "view", str(got), region) == want


def test_unplaced_unmapped_reads_come_over_htsget(server, home, samtools, tmp_path):
    local, md5 = _local(home, "reads.bam"), _md5(home, "reads.bam")
    got = tmp_path / "star.bam"
    _run(samtools, "view", "-b", "-o", str(got), f"{server}/reads/{md5}?referenceName=*")
    _run(samtools, "index", str(got))
    want = _run(samtools, "view", str(local), "*")
    assert want and _run(samtools, "view", str(got), "*") == want


def test_bcftools_follows_a_variants_ticket(server, home, bcftools, tabix, tmp_path):
    local, md5 = _local(home, "calls.vcf"), _md5(home, "calls.vcf")
    got = tmp_path / "got.vcf.gz"
    url = f"{server}/variants/{md5}?referenceName=chr2&start=1000&end=60000"
    _run(bcftools, "view", "-Oz", "-o", str(got), url)
    _run(tabix, "-p", "vcf", str(got))
    want = _run(tabix, str(local), "chr2:1001-60000")
    assert want and _run(tabix, str(got), "chr2:1001-60000") == want


def test_a_post_with_several_regions_brings_each(server, home, samtools, tmp_path):
    local, md5 = _local(home, "reads.bam"), _md5(home, "reads.bam")
    regions = [{"referenceName": "chr1", "start": 100, "end": 9000}, {"referenceName": "chrM"}]
    status, _, ticket = _call(f"{server}/reads/{md5}", {"format": "BAM", "regions": regions})
    assert status == 200 and ticket["htsget"]["format"] == "BAM"
    raw = b""
    for item in ticket["htsget"]["urls"]:
        request = urllib.request.Request(item["url"], headers=item.get("headers", {}))
        with urllib.request.urlopen(request, timeout=60) as answer:
            raw += answer.read()
    got = tmp_path / "post.bam"
    got.write_bytes(raw)
    _run(samtools, "index", str(got))
    for region in ("chr1:101-9000", "chrM"):
        want = _run(samtools, "view", str(local), region)
        assert _run(samtools, "view", str(got), region) == want


def test_class_header_brings_the_header_only(server, home, samtools):
    md5 = _md5(home, "reads.bam")
    status, _, ticket = _call(f"{server}/reads/{md5}?class=header")
    assert status == 200
    assert {url["class"] for url in ticket["htsget"]["urls"][:-1]} == {"header"}
    url = f"{server}/reads/{md5}?class=header"
    assert "@SQ\tSN:chrM" in _run(samtools, "view", "-H", url)
    assert _run(samtools, "view", url) == ""


@pytest.mark.parametrize(
    ("query", "status", "error"),
    [
        ("?referenceName=chr1&start=10&end=5", 400, "InvalidRange"),
        ("?start=10", 400, "InvalidInput"),
        ("?referenceName=chr1&start=-1", 400, "InvalidInput"),
        ("?referenceName=*&start=1", 400, "InvalidInput"),
        ("?class=body2", 400, "InvalidInput"),
        ("?format=CRAM", 400, "UnsupportedFormat"),
        ("?referenceName=chr99", 404, "NotFound"),
    ],
)
def test_bad_parameters_answer_htsget_errors(server, home, query, status, error):
    got, headers, body = _call(f"{server}/reads/{_md5(home, 'reads.bam')}{query}")
    assert (got, body["htsget"]["error"]) == (status, error)
    assert body["htsget"]["message"]
    assert headers["content-type"].startswith("application/vnd.ga4gh.htsget")


def test_unknown_ids_and_the_wrong_endpoint_answer_not_found(server, home):
    assert _call(f"{server}/reads/{'0' * 32}")[2]["htsget"]["error"] == "NotFound"
    status, _, body = _call(f"{server}/reads/{_md5(home, 'calls.vcf')}")
    assert (status, body["htsget"]["error"]) == (404, "NotFound")
    status, _, body = _call(f"{server}/variants/{_md5(home, 'calls.vcf')}?format=BCF")
    assert (status, body["htsget"]["error"]) == (400, "UnsupportedFormat")


def test_a_post_body_that_is_not_json_is_invalid_input(server, home):
    request = urllib.request.Request(f"{server}/reads/{_md5(home, 'reads.bam')}", data=b"{nope")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 400
    assert json.loads(caught.value.read())["htsget"]["error"] == "InvalidInput"


def test_service_info_describes_each_data_type(server):
    for path, datatype in [("/service-info", "reads"), ("/variants/service-info", "variants")]:
        status, _, body = _call(server + path)
        assert status == 200 and body["type"]["artifact"] == "htsget"
        assert body["htsget"]["datatype"] == datatype


def test_a_miss_waits_then_answers_503_and_htslib_reports_it_busy(home, samtools, tmp_path):
    env = {"GENOFLOW_HTSGET_WAIT": "0"}
    with serving(home, tmp_path / "serve.log", env=env) as base:
        url = f"{base}/reads/{_md5(home, 'late.bam')}?referenceName=chr1&start=0&end=100"
        status, headers, body = _call(url)
        assert status == 503 and int(headers["retry-after"]) >= 1
        assert body["htsget"]["error"] == "ServiceUnavailable"
        failed = subprocess.run([samtools, "view", url], capture_output=True, text=True)
    # htslib maps 503 to EBUSY and gives up at once: no retry, exit 1.
    assert failed.returncode != 0 and "Device or resource busy" in failed.stderr


def test_with_tokens_ticket_urls_are_signed_and_need_no_header(home, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("secret-token\n")
    with serving(home, tmp_path / "serve.log", env={"GENOFLOW_SERVE_TOKENS": str(tokens)}) as base:
        url = f"{base}/reads/{_md5(home, 'reads.bam')}?referenceName=chr1&start=0&end=1000"
        assert _call(url)[0] == 401
        status, _, ticket = _call(url, headers={"Authorization": "Bearer secret-token"})
        assert status == 200
        first = ticket["htsget"]["urls"][0]
        assert "sig=" in first["url"] and "secret-token" not in json.dumps(ticket)
        request = urllib.request.Request(first["url"], headers=first["headers"])
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 206
        forged = first["url"].replace("sig=", "sig=x")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(urllib.request.Request(forged, headers=first["headers"]))
        assert caught.value.code == 401
