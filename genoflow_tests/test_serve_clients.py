"""The browser-side clients against a running ``genoflow serve``: @gmod/bam and @gmod/tabix run
by node read by Range what samtools and tabix read locally, and igv.js in headless Chromium shows
``/view/{id}`` with features loaded, asked through igv.js's own API in the page.

The artifacts are built by ``genoflow run`` (with ``GENOFLOW_PUBLIC_URL`` set, so their
metadata links to the viewer) from demo files; the JavaScript comes from npm through
``make test-clients`` and ``make web``. With ``GENOFLOW_SCREENSHOTS=<folder>`` the viewer's
screenshots are also copied there (the README's come from
``GENOFLOW_SCREENSHOTS=docs/screenshots``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pysam
import pytest

from genoflow.core.checksums import md5_file

from .conftest import REPO, require_tool, run_cli
from .support.serve import serving
from .support.unavailable import unavailable

pytestmark = [pytest.mark.system, pytest.mark.timeout(600)]

DEMO = REPO / "data" / "manifests"
JS = REPO / "genoflow_tests" / "js"
IGV = REPO / "genoflow" / "serve" / "web" / "node_modules" / "igv" / "dist" / "igv.min.js"
PUBLIC = "http://genoflow.example.org:8080"
FILES = {"bam": "sample3.bam", "vcf": "cohort.vcf.gz", "bed": "enhancers.bed", "csv": "samples.csv"}


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        unavailable("node is not on PATH: apt-get install nodejs npm (CI's .ci/run does)")
    if not (JS / "node_modules" / "@gmod" / "bam").is_dir():
        unavailable("the JavaScript test clients are not installed: run `make test-clients`")
    return node


def _node_json(*args: str) -> dict:
    done = subprocess.run(
        [_node(), *args], cwd=JS, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    """A home built from :data:`FILES` with ``GENOFLOW_PUBLIC_URL`` set, and a server over it;
    yields ``(base_url, home, {kind: md5})``."""
    folder = tmp_path_factory.mktemp("clients")
    md5s = {kind: md5_file(DEMO / "demo" / name) for kind, name in FILES.items()}
    lines = ["name\turi\tmd5"]
    lines += [f"{FILES[kind]}\t{DEMO / 'demo' / FILES[kind]}\t{md5}" for kind, md5 in md5s.items()]
    manifest = folder / "clients.tsv"
    manifest.write_text("\n".join(lines) + "\n")
    home = folder / "home"
    env = {"GENOFLOW_ALLOWED_ROOTS": str(DEMO), "GENOFLOW_PUBLIC_URL": PUBLIC}
    built = run_cli(home, "run", str(manifest), env=env)
    assert built.returncode == 0, built.stdout + built.stderr
    with serving(home, folder / "serve.log") as base:
        yield base, home, md5s


def _local(home: Path, family: str, md5: str, pattern: str) -> Path:
    found = sorted((home / "cache" / family / md5[:2] / md5 / "index").glob(f"v*/{pattern}"))
    assert found, f"no {pattern} published for {md5}"
    return found[-1]


def _ranged(requests: list[dict], data_url: str) -> None:
    """Every read of the data file asked for a byte range and got 206."""
    reads = [request for request in requests if request["url"] == data_url]
    assert reads, requests
    assert all(r["range"] and r["status"] == 206 and r["contentRange"] for r in reads), reads


def test_gmod_bam_reads_by_range_the_records_samtools_view_finds(site) -> None:
    base, home, md5s = site
    md5 = md5s["bam"]
    local = _local(home, "alignments", md5, "*.bam")
    with pysam.AlignmentFile(str(local)) as bam:
        used = [(s.contig, bam.get_reference_length(s.contig)) for s in bam.get_index_statistics()]
        regions = [f"{name}:1-{length}" for name, length in used[:3]] + [f"{used[0][0]}:1-9200000"]
        expected = {
            region: [
                {
                    "name": r.query_name,
                    "flag": r.flag,
                    "pos": r.reference_start + 1,
                    "cigar": r.cigarstring or "",  # no CIGAR: pysam None, @gmod/bam ""
                }
                for r in bam.fetch(region=region)
            ]
            for region in regions
        }
    data = f"{base}/data/{md5}"
    read = _node_json("read_bam.mjs", data, f"{base}/index/{md5}", "bai", *regions)
    assert all(expected[region] for region in regions)
    assert read["regions"] == expected
    _ranged(read["requests"], data)


@pytest.mark.parametrize("kind", ["vcf", "bed"])
def test_gmod_tabix_reads_by_range_the_lines_tabix_finds(site, kind: str) -> None:
    base, home, md5s = site
    tabix = require_tool("tabix")
    md5 = md5s[kind]
    local = _local(home, "intervals", md5, "*.gz")
    with pysam.TabixFile(str(local)) as indexed:
        contigs = list(indexed.contigs)[:3]
    regions = [f"{name}:1-250000000" for name in contigs] + [f"{contigs[0]}:1-5000000"]
    expected = {}
    for region in regions:
        out = subprocess.run([tabix, str(local), region], capture_output=True, text=True)
        expected[region] = out.stdout.splitlines()
    data = f"{base}/files/{md5}/{FILES[kind].removesuffix('.gz')}.gz"
    read = _node_json("read_tabix.mjs", data, data + ".tbi", "tbi", *regions)
    assert all(expected[region] for region in regions[:-1])
    assert read["regions"] == expected
    assert read["header"].startswith("##fileformat=VCF") == (kind == "vcf")
    _ranged(read["requests"], data)


def _screenshot(path: Path) -> None:
    keep = os.environ.get("GENOFLOW_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)


@pytest.mark.parametrize("kind", ["bam", "vcf", "bed"])
def test_igv_js_in_chromium_shows_the_view_page_with_features_loaded(site, kind, tmp_path) -> None:
    base, home, md5s = site
    chromium = require_tool("chromium")
    _node()
    if not IGV.is_file():
        unavailable("igv.js is not installed: run `make web`")
    md5 = md5s[kind]
    shot = tmp_path / f"viewer-{kind}.png"
    report = _node_json("view.mjs", chromium, f"{base}/view/{md5}", str(shot))
    assert report["view"] == "ready", report
    [track] = report["tracks"]
    assert track["name"] == FILES[kind]
    assert track["features"] > 0, report
    contig, span = report["locus"].split(":")
    start, end = (int(n.replace(",", "")) for n in span.split("-"))
    if kind == "bam":
        with pysam.AlignmentFile(str(_local(home, "alignments", md5, "*.bam"))) as bam:
            names = {r.query_name for r in bam.fetch(contig, start - 1, end)}
        assert {feature["name"] for feature in track["sample"]} <= names
    assert all(f["chr"] == contig and f["start"] < end for f in track["sample"]), track
    # Everything the page loaded came from the server: no CDN, no genome list, no search.
    assert all(url.startswith(base + "/") for url in report["requests"]), report["requests"]
    assert not [line for line in report["console"] if "pageerror" in line], report["console"]
    assert shot.stat().st_size > 10_000
    _screenshot(shot)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_the_view_page_checks_its_locus_and_escapes_what_it_shows(site) -> None:
    base, _, md5s = site
    md5 = md5s["bed"]
    status, page = _get(f"{base}/view/{md5}?locus=chr1:1000-2000")
    assert status == 200
    assert '"locus": "chr1:1000-2000"' in page
    assert "/static/igv/igv.min.js" in page and "https://" not in page
    hostile = urllib.request.quote("</script><script>alert(1)</script>")
    status, page = _get(f"{base}/view/{md5}?locus={hostile}")
    assert status == 400 and "<script>alert" not in page
    status, page = _get(f"{base}/view/{md5}?locus=chrNope:1-10")
    assert status == 400 and "chr1" in page
    assert _get(f"{base}/view/{md5s['csv']}")[0] == 404  # a table has no genome view
    assert _get(f"{base}/view/{'0' * 32}")[0] == 404
    status, sizes = _get(f"{base}/view/{md5}/chrom.sizes")
    assert status == 200 and sizes.startswith("chr1\t")
    assert _get(f"{base}/static/igv/../../viewer.py")[0] == 404


def test_with_a_public_url_each_materialization_links_to_its_viewer(site) -> None:
    from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

    from genoflow.core.settings import Settings

    _, home, md5s = site
    dagster_home = Settings.from_env({"GENOFLOW_HOME": str(home)}).dagster_home
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        for family, asset, kind, key, path in [
            ("alignments", "index", "bam", "viewer", "view"),
            ("intervals", "sorted", "bed", "viewer", "view"),
            ("passthrough", "source", "csv", "served_at", "data"),
        ]:
            records = instance.fetch_materializations(
                AssetRecordsFilter(AssetKey([family, asset]), asset_partitions=[md5s[kind]]),
                limit=1,
            ).records
            metadata = records[0].asset_materialization.metadata
            assert metadata[key].value == f"{PUBLIC}/{path}/{md5s[kind]}"
