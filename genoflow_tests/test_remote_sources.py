"""Sources named by signed https URLs and gs:// URIs, end to end through `genoflow run`.

The promise checked here: a signed URL's token never reaches the CLI's output, `status`, the
materialization metadata or the Dagster event log.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from .conftest import DATA, run_cli
from .support.gcs_emulator import GcsEmulator, gcs_emulator  # noqa: F401
from .support.signed_url_server import SignedUrlServer, signed_url_server  # noqa: F401

pytestmark = pytest.mark.system  # starts a server (see pyproject markers)

# ruff: noqa: F811 - pytest fixtures imported from their modules

GTF = DATA / "manifests" / "demo" / "genes.gtf"


def _cli(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run_cli(home, *args, env={"GENOFLOW_THREADS": "1", **(env or {})})


def _everything_written(home: Path) -> bytes:
    """Every byte genoflow wrote: the Dagster event log and runs (what the UI reads), the
    registry (with its WAL), every genoflow.json and artifact."""
    return b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())


def test_a_signed_url_source_is_built_and_its_token_shown_nowhere(
    tmp_path: Path, signed_url_server: SignedUrlServer
) -> None:
    data = GTF.read_bytes()
    signed_url_server.put("genes.gtf", data)
    url = signed_url_server.url("genes.gtf")
    manifest = tmp_path / "m.tsv"
    manifest.write_text(f"name\turi\tmd5\ngenes.gtf\t{url}\t{hashlib.md5(data).hexdigest()}\n")
    home = tmp_path / "home"

    run = _cli(home, "run", str(manifest), "--json")
    status = _cli(home, "status", "--json")

    assert run.returncode == 0, run.stderr
    assert '"built"' in run.stdout
    secret = signed_url_server.secret
    for text in (run.stdout, run.stderr, status.stdout, status.stderr):
        assert secret not in text
    assert secret.encode() not in _everything_written(home)


def test_an_expired_signed_url_fails_fast_with_a_clear_message(
    tmp_path: Path, signed_url_server: SignedUrlServer
) -> None:
    data = GTF.read_bytes()
    signed_url_server.put("genes.gtf", data)
    url = signed_url_server.url("genes.gtf", expired=True)
    manifest = tmp_path / "m.tsv"
    manifest.write_text(f"name\turi\tmd5\ngenes.gtf\t{url}\t{hashlib.md5(data).hexdigest()}\n")
    home = tmp_path / "home"

    run = _cli(home, "run", str(manifest))

    assert run.returncode == 1
    assert "HTTP 403" in run.stderr
    assert signed_url_server.expired_secret not in run.stdout + run.stderr
    assert len(signed_url_server.requests_for("genes.gtf")) == 1


def test_a_gs_source_is_staged_through_gcsfs(tmp_path: Path, gcs_emulator: GcsEmulator) -> None:
    bucket = "sources"
    gcs_emulator.create_bucket(bucket)
    data = GTF.read_bytes()
    env = {"STORAGE_EMULATOR_HOST": gcs_emulator.endpoint}
    from genoflow.storage.gcs import make_filesystem

    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    make_filesystem(endpoint_url=gcs_emulator.endpoint, token="anon").pipe_file(
        f"{bucket}/inputs/genes.gtf", data
    )
    manifest = tmp_path / "m.tsv"
    manifest.write_text(
        "name\turi\tmd5\n"
        f"genes.gtf\tgs://{bucket}/inputs/genes.gtf\t{hashlib.md5(data).hexdigest()}\n"
        f"same-genes.gtf\tgs://{bucket}/inputs/genes.gtf\t\n"  # md5 from the object's md5Hash
    )

    run = _cli(tmp_path / "home", "run", str(manifest), "--json", env=env)

    assert run.returncode == 0, run.stderr
    records = {record["name"]: record for record in json.loads(run.stdout)}
    assert records["same-genes.gtf"]["md5"] == hashlib.md5(data).hexdigest()
    assert set(records["genes.gtf"]["assets"].values()) == {"built"}
