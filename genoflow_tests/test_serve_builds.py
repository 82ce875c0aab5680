"""On-demand builds for ``genoflow serve``: one Dagster run per missing md5, across threads and
processes; stale claims reclaimed; late finishers fenced; back-off after a failure; the run-time
cap; ``GET /jobs/{id}``; a queued run coordinator gets the run instead of the pool."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
import threading
import time
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from genoflow.core.settings import ServeSettings, Settings
from genoflow.manifests.reading import read_manifests
from genoflow.serve.catalog import Source
from genoflow.storage import atomic
from genoflow.storage.claims import FAILED, QUEUED, RUNNING, SUCCEEDED, Claim, Claims
from genoflow.storage.registry import Registry

BED = Path(__file__).resolve().parent.parent / "data" / "manifests" / "demo" / "enhancers.bed"
WRONG_MD5 = "0" * 32


def _settings(home: Path) -> Settings:
    return Settings.from_env({"GENOFLOW_HOME": str(home), "GENOFLOW_THREADS": "1"})


def _register(home: Path, *, md5: str | None = None, name: str = "enhancers.bed") -> Source:
    """Register a small BED file (its true md5 unless ``md5`` says otherwise) in ``home``."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / name
    shutil.copy(BED, path)
    md5 = md5 or hashlib.md5(path.read_bytes()).hexdigest()
    manifest = home / f"{name}.tsv"
    manifest.write_text(f"name\turi\tmd5\n{name}\t{path}\t{md5}\n")
    rows = read_manifests([manifest]).rows
    with Registry(_settings(home).registry_target) as registry:
        registry.register(rows)
    return Source(md5, "intervals", "bed", (name,))


def _builds(home: Path, monkeypatch: pytest.MonkeyPatch, **serve: object):
    from genoflow.serve.builds import Builds

    monkeypatch.setenv("GENOFLOW_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    stale_after = serve.pop("stale_after", 60.0)
    return Builds(_settings(home), ServeSettings(**serve), stale_after=stale_after)


def _serve_runs(builds, md5: str) -> list:
    from dagster import RunsFilter

    from genoflow.defs.tags import LAUNCHED_BY, LAUNCHED_BY_SERVE

    runs = builds.instance.get_runs(RunsFilter(tags={LAUNCHED_BY: LAUNCHED_BY_SERVE}))
    return [run for run in runs if run.tags.get("dagster/partition") == md5]


def _published(home: Path, md5: str) -> list[Path]:
    return sorted((home / "cache").glob(f"*/{md5[:2]}/{md5}/*/*/genoflow.json"))


def _ended_before_its_end(home: Path, md5: str) -> None:
    """A chain ended early published no final artifact, and whatever it published before it
    was ended (the staged source, on a fast machine) is whole: every file its marker lists is
    there at its size, and no draft of a live process is left."""
    markers = _published(home, md5)
    assert not [m for m in markers if m.parent.parent.name == "index"], markers
    for marker in markers:
        for entry in json.loads(marker.read_text())["files"]:
            assert (marker.parent / entry["name"]).stat().st_size == entry["size"], entry
    for draft in (home / "cache").rglob("*.tmp.*"):
        assert atomic.owner_alive(draft.name, draft) is not True, draft


# -- claims alone (no Dagster) -----------------------------------------------------------------


def test_racing_takers_in_threads_get_one_claim_and_all_read_its_job(tmp_path: Path) -> None:
    claims = Claims(Registry(tmp_path / "registry.db"))
    barrier, won = threading.Barrier(8), []

    def take(n: int) -> None:
        barrier.wait()
        won.append(claims.take("a" * 32, "intervals", f"job-{n}", "me", replacing=None).job_id)

    threads = [threading.Thread(target=take, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(won)) == 1
    assert claims.get("a" * 32).status == QUEUED


def test_a_late_finisher_cannot_overwrite_the_claim_that_replaced_it(tmp_path: Path) -> None:
    claims = Claims(Registry(tmp_path / "registry.db"))
    first = claims.take("b" * 32, "intervals", "job-old", "host:1", replacing=None)
    running = claims.advance(first, RUNNING)
    assert running is not None
    # The old builder went stale; a new job takes the claim over, fenced on what it read.
    replaced = claims.take("b" * 32, "intervals", "job-new", "host:2", replacing=running)
    assert replaced.job_id == "job-new"
    # A second reclaimer that read the same stale claim loses: the fence no longer matches.
    lost = claims.take("b" * 32, "intervals", "job-third", "host:3", replacing=running)
    assert lost.job_id == "job-new"
    # The old builder finishes late and reports: nothing changes.
    assert claims.advance(running, SUCCEEDED) is None
    assert claims.advance(running, FAILED, error="late", retry_backoff=99) is None
    assert claims.heartbeat([running]) == 0
    assert claims.release(running) is False
    now = claims.get("b" * 32)
    assert (now.job_id, now.status, now.error) == ("job-new", QUEUED, None)
    assert claims.by_job("job-old") is None


# -- builds through the pool --------------------------------------------------------------------


@pytest.mark.system
def test_concurrent_requests_in_threads_start_one_run_that_builds_the_artifact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    source = _register(home)
    builds = _builds(home, monkeypatch)
    try:
        barrier, jobs = threading.Barrier(8), []

        def ask() -> None:
            barrier.wait()
            jobs.append(builds.request(source))

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len({job.id for job in jobs}) == 1
        first = jobs[0]
        assert first.status in ("queued", "running")
        seen = {first.status}
        while (job := builds.job(first.id)).status not in ("succeeded", "failed"):
            seen.add(job.status)
            time.sleep(0.05)
        assert job.status == "succeeded", job.error
        assert seen <= {"queued", "running"}
        assert [run.run_id for run in _serve_runs(builds, source.md5)] == [first.id]
        assert {path.parent.parent.name for path in _published(home, source.md5)} == {
            "source",
            "sorted",
            "index",
        }
        # The artifact is there: a later request answers with the job that built it.
        assert builds.request(source).id == first.id
    finally:
        builds.close()


def _ask_in_process(home: str, source: Source, barrier, answers) -> None:
    import os

    from genoflow.serve.builds import Builds

    os.environ["GENOFLOW_HOME"] = home
    os.environ["DAGSTER_HOME"] = f"{home}/dagster"
    builds = Builds(_settings(Path(home)), ServeSettings())
    barrier.wait()
    job = builds.request(source)
    answers.put(job.id)
    builds.wait(job.id, 120)  # closing first would release a job still waiting in the queue
    builds.close()


@pytest.mark.system
def test_concurrent_requests_from_separate_processes_start_one_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    source = _register(home)
    context = multiprocessing.get_context("spawn")
    barrier, answers = context.Barrier(3), context.Queue()
    children = [
        context.Process(target=_ask_in_process, args=(str(home), source, barrier, answers))
        for _ in range(3)
    ]
    for child in children:
        child.start()
    ids = {answers.get(timeout=300) for _ in children}
    for child in children:
        child.join(timeout=300)
    assert len(ids) == 1
    builds = _builds(home, monkeypatch)
    try:
        assert [run.run_id for run in _serve_runs(builds, source.md5)] == list(ids)
        assert builds.wait(ids.pop(), 120).status == "succeeded"
    finally:
        builds.close()


@pytest.mark.system
def test_a_stale_claim_is_reclaimed_and_its_late_finisher_is_fenced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    source = _register(home)
    builds = _builds(home, monkeypatch, stale_after=5.0)
    try:
        claims = builds.claims
        # A builder on another host, beating recently: its claim holds.
        fresh = claims.take(source.md5, "intervals", "job-fresh", "other.example:1", replacing=None)
        assert builds.request(source).id == "job-fresh"
        # It stops beating: after stale_after its claim is taken over by a new run.
        stale = claims.advance(fresh, RUNNING)
        with claims.registry.begin() as connection:
            connection.exec_driver_sql(
                "UPDATE build_claim SET heartbeat_at = heartbeat_at - 60 WHERE md5 = ?",
                (source.md5,),
            )
        stale = claims.get(source.md5)
        job = builds.request(source)
        assert job.id != "job-fresh"
        # The old builder reports late: the new job's claim is untouched.
        assert claims.advance(stale, FAILED, error="late") is None
        assert builds.wait(job.id, 120).status == "succeeded"
        assert builds.job("job-fresh") is None  # it never was a run of this server
    finally:
        builds.close()


@pytest.mark.system
def test_a_claim_whose_local_owner_died_is_reclaimed_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket
    import subprocess
    import sys

    home = tmp_path / "home"
    source = _register(home)
    builds = _builds(home, monkeypatch)
    try:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        owner = f"{socket.gethostname()}:{dead.pid}"
        builds.claims.take(source.md5, "intervals", "job-dead", owner, replacing=None)
        job = builds.request(source)
        assert job.id != "job-dead"
        assert builds.wait(job.id, 120).status == "succeeded"
    finally:
        builds.close()


@pytest.mark.system
def test_after_a_failure_the_failed_job_answers_until_the_back_off_has_passed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from genoflow.serve.jobs import miss_response

    home = tmp_path / "home"
    source = _register(home, md5=WRONG_MD5)  # staging refuses the file: its md5 differs
    builds = _builds(home, monkeypatch, retry_backoff=4.0)
    try:
        first = builds.wait(builds.request(source).id, 120)
        assert first.status == "failed"
        assert "md5" in first.error
        again = builds.request(source)
        assert again.id == first.id and again.status == "failed"
        assert again.retry_at > time.time()
        answer = miss_response(again)
        assert answer.status_code == 503
        assert 1 <= int(answer.headers["Retry-After"]) <= 4
        assert first.error.encode() in answer.body
        time.sleep(max(0.0, again.retry_at - time.time()) + 0.1)
        retried = builds.request(source)
        assert retried.id != first.id and retried.status in ("queued", "running")
        assert miss_response(retried).status_code == 202
    finally:
        builds.close()


@pytest.mark.system
def test_a_build_over_the_time_cap_is_ended_failed_and_publishes_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster import DagsterRunStatus

    home = tmp_path / "home"
    source = _register(home)
    builds = _builds(home, monkeypatch, job_timeout=0.5)
    try:
        job = builds.wait(builds.request(source).id, 120)
        assert job.status == "failed"
        assert "GENOFLOW_JOB_TIMEOUT=0.5 s" in job.error
        assert builds.instance.get_run_by_id(job.id).status == DagsterRunStatus.FAILURE
        _ended_before_its_end(home, source.md5)
    finally:
        builds.close()


@pytest.mark.system
def test_the_jobs_endpoint_shows_status_steps_artifacts_and_the_dagster_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from genoflow.serve.jobs import miss_response, routes

    home = tmp_path / "home"
    source = _register(home)
    builds = _builds(home, monkeypatch, dagster_url="http://dagster.example:3000")
    app = Starlette(routes=routes())
    app.state.builds = builds
    try:
        job = builds.request(source)
        answer = miss_response(job)
        assert answer.status_code == 202
        assert answer.headers["Location"] == f"/jobs/{job.id}"
        assert int(answer.headers["Retry-After"]) > 0
        builds.wait(job.id, 120)
        with TestClient(app) as client:
            body = client.get(f"/jobs/{job.id}").json()
            assert body["status"] == "succeeded"
            assert body["artifacts"] == {
                "data": f"/data/{source.md5}",
                "index": f"/index/{source.md5}",
            }
            assert body["dagster_run"] == f"http://dagster.example:3000/runs/{job.id}"
            assert {step["step"] for step in body["steps"]} >= {
                "intervals__source",
                "intervals__sorted",
                "intervals__index",
            }
            assert all(step["started"] and step["ended"] for step in body["steps"])
            unknown = client.get("/jobs/00000000-0000-0000-0000-000000000000")
            assert unknown.status_code == 404 and unknown.json()["error"] == "NotFound"
            assert client.get("/jobs/..%2Fetc").status_code == 404
    finally:
        builds.close()


def test_a_job_answer_never_shows_a_signed_url_token() -> None:
    from genoflow.serve.builds import Job
    from genoflow.serve.jobs import job_body, miss_response

    error = "[stage] https://bucket.example/x.bam?X-Goog-Signature=s3cr3t: 403"
    job = Job("11111111-2222-3333-4444-555555555555", "c" * 32, "alignments", "failed", error, 0)
    assert "s3cr3t" not in str(job_body(job))
    assert b"s3cr3t" not in miss_response(job).body


@pytest.mark.system
def test_with_a_queued_run_coordinator_the_run_goes_to_the_daemons_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster import DagsterRunStatus

    from genoflow.instance.home import dagster_storage_yaml

    home = tmp_path / "home"
    source = _register(home)
    dagster_home = home / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(
        dagster_storage_yaml(dagster_home)
        + "run_coordinator:\n  module: dagster._core.run_coordinator\n"
        + "  class: QueuedRunCoordinator\n"
    )
    builds = _builds(home, monkeypatch)
    try:
        assert builds.queued
        job = builds.request(source)
        assert builds.request(source).id == job.id
        assert builds.instance.get_run_by_id(job.id).status == DagsterRunStatus.QUEUED
        assert builds.job(job.id).status == "queued"
        assert _published(home, source.md5) == []  # nothing built here: the daemon would
    finally:
        builds.close()


@pytest.mark.system
def test_close_releases_waiting_jobs_so_the_next_request_starts_them_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    first, second = _register(home), _register(home, name="other.bed", md5="1" * 32)
    builds = _builds(home, monkeypatch)
    running = builds.request(first)
    waiting = builds.request(second)  # one builder: it waits in the queue
    while builds.job(running.id).status == "queued":
        time.sleep(0.05)
    builds.close(grace=600)  # well within its grace: the build finishes
    assert builds.job(running.id).status == "succeeded"  # the build in flight finished
    assert builds.claims.get(second.md5) is None or builds.claims.get(second.md5).job_id != (
        waiting.id
    )
    assert builds.job(waiting.id).status == "failed"  # its run was canceled, never half-built
    assert isinstance(builds.claims.get(first.md5), Claim)


# -- the home page's status column, and the drain's grace -----------------------------------


_PAGE_SCRIPT = """
import json, sys
from starlette.testclient import TestClient
from genoflow.core.settings import ServeSettings, Settings
from genoflow.serve.app import create_app
settings = Settings.from_env({"GENOFLOW_HOME": sys.argv[1]})
with TestClient(create_app(settings, ServeSettings())) as client:
    page = client.get("/")
print(json.dumps({"status": page.status_code, "html": page.text,
                  "dagster": sorted(m for m in sys.modules if m.split(".")[0] == "dagster")}))
"""


def _page_row(html: str, md5: str) -> str:
    import re

    found = re.search(rf"<tr>(?:(?!</tr>).)*<code>{md5}</code>.*?</tr>", html)
    assert found, f"no row for {md5}"
    return found.group(0)


def _home_page(home: Path) -> dict:
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _PAGE_SCRIPT, str(home)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "DAGSTER_HOME": str(home / "dagster")},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_home_page_links_each_sources_current_job_and_imports_no_dagster_without_one(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    idle = _register(home)
    failed = _register(home, name="failed.bed", md5="2" * 32)
    gone = _register(home, name="gone.bed", md5="3" * 32)  # built once, its artifact gone since
    claims = Claims(Registry(_settings(home).registry_target))
    job_id = "11111111-2222-3333-4444-555555555555"
    taken = claims.take(failed.md5, "intervals", job_id, "other.example:1", replacing=None)
    claims.advance(taken, FAILED, error="the md5 differs", retry_backoff=60)
    done = claims.take(gone.md5, "intervals", "job-done", "other.example:1", replacing=None)
    claims.advance(done, SUCCEEDED)

    answer = _home_page(home)
    assert answer["status"] == 200
    assert answer["dagster"] == []  # no job in flight: the page read only the registry
    html = answer["html"]
    assert "not built" in _page_row(html, idle.md5) and "/jobs/" not in _page_row(html, idle.md5)
    assert f'<a href="/jobs/{job_id}">failed</a>' in _page_row(html, failed.md5)
    assert "not built" in _page_row(html, gone.md5)

    running_id = "66666666-7777-8888-9999-000000000000"
    queued = claims.take(idle.md5, "intervals", running_id, "other.example:1", replacing=None)
    claims.advance(queued, RUNNING)
    html = _home_page(home)["html"]
    assert f'<a href="/jobs/{running_id}">building</a>' in _page_row(html, idle.md5)


def test_the_status_cell_says_built_building_failed_or_not_built() -> None:
    from genoflow.serve.builds import Job
    from genoflow.serve.pages import status_cell

    job = Job("11111111-2222-3333-4444-555555555555", "c" * 32, "intervals", "running", None, None)
    assert status_cell(True, job) == "built"
    assert status_cell(False, job) == f'<a href="/jobs/{job.id}">building</a>'
    queued = Job(job.id, job.md5, job.family, "queued", None, None)
    assert status_cell(False, queued) == f'<a href="/jobs/{job.id}">building</a>'
    failed = Job(job.id, job.md5, job.family, "failed", "no", 0.0)
    assert status_cell(False, failed) == f'<a href="/jobs/{job.id}">failed</a>'
    assert status_cell(False, None).startswith("not built")


@pytest.mark.system
def test_the_job_of_an_md5_is_its_claims_job_brought_in_line_with_its_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    source = _register(home)
    builds = _builds(home, monkeypatch)
    try:
        assert builds.job_of(source.md5) is None
        job = builds.request(source)
        assert builds.job_of(source.md5).id == job.id
        builds.wait(job.id, 120)
        assert builds.jobs_of([source.md5, "f" * 32]) == {source.md5: builds.job(job.id)}
        assert builds.job_of(source.md5).status == "succeeded"
    finally:
        builds.close()


@pytest.mark.system
def test_close_kills_a_build_still_running_after_its_grace_and_releases_its_claim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster import DagsterRunStatus

    home = tmp_path / "home"
    source = _register(home)
    builds = _builds(home, monkeypatch)
    job = builds.request(source)
    while builds.job(job.id).status == "queued":
        time.sleep(0.05)
    started = time.monotonic()
    builds.close(grace=0.2)
    assert time.monotonic() - started < 30  # bounded: the build was not waited for
    run = builds.instance.get_run_by_id(job.id)
    if run.status == DagsterRunStatus.SUCCESS:  # it finished within the grace after all
        assert len(_published(home, source.md5)) == 3
        return
    assert run.status == DagsterRunStatus.FAILURE
    assert "shut down" in builds.job(job.id).error
    assert builds.claims.get(source.md5) is None  # released: the next request builds it
    _ended_before_its_end(home, source.md5)
    assert not list((home / "cache").rglob("*.tmp.*"))  # the killed build's drafts swept
    again = _builds(home, monkeypatch)
    try:
        retried = again.request(source)
        assert retried.id != job.id
        assert again.wait(retried.id, 120).status == "succeeded", again.job(retried.id).error
        assert len(_published(home, source.md5)) == 3
    finally:
        again.close()


def test_a_miss_while_the_server_shuts_down_answers_503_with_retry_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from genoflow.serve.app import create_app

    home = tmp_path / "home"
    source = _register(home)
    monkeypatch.setenv("GENOFLOW_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    app = create_app(_settings(home), ServeSettings())
    with TestClient(app) as client:
        app.state.builds._open().close(grace=0)  # the lifespan's shutdown has begun
        for path in (f"/data/{source.md5}", f"/index/{source.md5}", f"/view/{source.md5}"):
            answer = client.get(path)
            assert answer.status_code == 503, (path, answer.text)
            assert answer.headers["Retry-After"] == "5"
            assert answer.json()["error"] == "ServiceUnavailable"
    assert _published(home, source.md5) == []
