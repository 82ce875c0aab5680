"""A genoflow cluster on one machine, on loopback: the services ``make cluster-demo`` runs.

It starts Redis (the Celery broker and result backend), PostgreSQL (the Dagster instance and the
registry, one database each), a fake-gcs-server bucket (the shared replica location),
``dagster-daemon`` (sensors, run queue), optionally ``dagster-webserver``, and Celery workers,
each its own deployment with its own cache folder. Workers share no disk with each other but
the watched manifests folder and the local sources it holds: artifacts move through the bucket.

Invariant: every process started here is recorded, with its PID, as soon as it exists, and
:meth:`LocalCluster.stop` stops each one by that PID (and its process group, which only its own
children share) in reverse order — on success, on error, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dagster import DagsterInstance

from genoflow.defs.jobs import job_name
from scripts.cluster_services import Service, launch, postgres_service, wait_for

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
BUCKET = "genoflow-cluster"
START_TIMEOUT = 120.0
ORCHESTRATOR = "orchestrator"
_STOPPERS = (signal.SIGINT, signal.SIGTERM)
_INHERITED = ("GENOFLOW_", "DAGSTER_", "CELERY_", "STORAGE_EMULATOR_HOST", "PYTHONPATH")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class LocalCluster:
    """The services of one local cluster, started by :meth:`start` and stopped by :meth:`stop`.

    Args:
        root: a folder for the cluster's files (instance, caches, logs, watched manifests).
        workers: how many Celery workers (deployments ``worker-1`` …) to start.
        webserver: start ``dagster-webserver`` too (the UI and its GraphQL API).
        sensor_interval: seconds between two ticks of the manifest sensor.
    """

    root: Path
    workers: int = 2
    webserver: bool = True
    sensor_interval: int = 2
    services: list[Service] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    gcs_endpoint: str = ""

    @property
    def manifests(self) -> Path:
        """The folder the manifest sensor watches (``GENOFLOW_MANIFESTS``)."""
        return self.root / "manifests"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster"

    @property
    def gcs_root(self) -> Path:
        """Where fake-gcs-server keeps the bucket's objects (``gcs/<bucket>/<name>``)."""
        return self.root / "gcs"

    @property
    def replicas(self) -> str:
        return f"gs://{BUCKET}/genoflow"

    @property
    def webserver_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['webserver']}"

    def deployments(self) -> list[str]:
        return [f"worker-{number}" for number in range(1, self.workers + 1)]

    def start(self) -> LocalCluster:
        """Start every service, in dependency order, and wait (bounded) until each answers."""
        for folder in (self.manifests, self.dagster_home, self.gcs_root, self.root / "logs"):
            folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DEPLOY / "dagster.yaml", self.dagster_home / "dagster.yaml")
        try:
            self._start_storage()
            self._start_dagster()
            for deployment in self.deployments():
                self.start_worker(deployment)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every service this cluster started, newest first, each by its PID.

        A second Ctrl-C or SIGTERM while stopping is ignored, so it cannot leave services behind.
        """
        main = threading.current_thread() is threading.main_thread()
        held = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _STOPPERS} if main else {}
        try:
            while self.services:
                self.services.pop().stop()
        finally:
            for sig, handler in held.items():
                signal.signal(sig, handler)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def env(self, deployment: str = ORCHESTRATOR) -> dict[str, str]:
        """The environment of one cluster process: the daemon's, the UI's or a worker's."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(_INHERITED)}
        pg = self.ports["postgres"]
        redis = f"redis://127.0.0.1:{self.ports['redis']}"
        return {
            **base,
            **self.instance_env(),
            "GENOFLOW_REGISTRY_URL": f"postgresql+psycopg2://postgres@127.0.0.1:{pg}/genoflow",
            "GENOFLOW_REPLICAS": self.replicas,
            "GENOFLOW_HOME": str(self.root / deployment),
            "GENOFLOW_DEPLOYMENT": deployment,
            "GENOFLOW_MANIFESTS": str(self.manifests),
            "GENOFLOW_SENSOR_INTERVAL": str(self.sensor_interval),
            # One pool process per worker: on two cores, two workers already fill the machine.
            "GENOFLOW_THREADS": "1",
            "GENOFLOW_EXECUTOR": "celery",
            "CELERY_BROKER_URL": f"{redis}/0",
            "CELERY_RESULT_BACKEND": f"{redis}/1",
            "STORAGE_EMULATOR_HOST": self.gcs_endpoint,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            # deploy/ holds dagster_celery_config, the workers' Celery settings.
            "PYTHONPATH": os.pathsep.join([str(DEPLOY), str(REPO)]),
        }

    def instance_env(self) -> dict[str, str]:
        """The variables ``deploy/dagster.yaml`` reads: where the shared instance lives."""
        return {
            "DAGSTER_HOME": str(self.dagster_home),
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(self.ports["postgres"]),
            "DAGSTER_PG_USER": "postgres",
            "DAGSTER_PG_PASSWORD": "",
            "DAGSTER_PG_DB": "dagster",
        }

    @contextlib.contextmanager
    def instance(self) -> Iterator[DagsterInstance]:
        """The shared Dagster instance, opened from this process."""
        variables = self.instance_env()
        saved = {name: os.environ.get(name) for name in variables}
        os.environ.update(variables)  # the yaml's {env: …} are resolved while it is loaded
        try:
            instance = DagsterInstance.from_config(str(self.dagster_home))
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        with instance:
            yield instance

    def start_worker(self, deployment: str) -> Service:
        """Start one Celery worker (deployment ``deployment``, cache under its own home)."""
        log = self.root / "logs" / f"{deployment}.log"
        command = [sys.executable, "-m", "celery", "-A", "dagster_celery.app", "worker",
                   "-n", f"{deployment}@%h", "-Q", "dagster", "--pool", "prefork",
                   "--concurrency", "1", "--loglevel", "INFO",
                   "--without-gossip", "--without-mingle", "--without-heartbeat"]  # fmt: skip
        service = launch(deployment, command, log=log, env=self.env(deployment), cwd=self.root)
        self.services.append(service)
        wait_for(service, lambda: " ready." in _tail(log), what="worker ready", timeout=90)
        return service

    def launch_chain(self, family: str, md5: str, *, tags: dict[str, str] | None = None) -> str:
        """Launch ``family``'s chain for ``md5`` through the webserver's GraphQL API; its run id.

        This is what a person does from the UI; the run is queued like the sensor's runs.
        """
        from dagster_graphql import DagsterGraphQLClient

        client = DagsterGraphQLClient("127.0.0.1", port_number=self.ports["webserver"])
        return client.submit_job_execution(
            job_name(family),
            repository_location_name="genoflow.definitions",
            tags={"dagster/partition": md5, **(tags or {})},
        )

    def genoflow(self, deployment: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run the ``genoflow`` command as ``deployment`` (``status --json``, ``verify`` …)."""
        command = [sys.executable, "-m", "genoflow.cli", *args]
        return subprocess.run(
            command, env=self.env(deployment), cwd=self.root, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip

    def worker(self, deployment: str) -> Service:
        """The running worker service of ``deployment``."""
        return next(s for s in self.services if s.name == deployment)

    def _start_storage(self) -> None:
        self.ports["redis"] = free_port()
        command = ["redis-server", "--port", str(self.ports["redis"]), "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no", "--dir", str(self.root)]  # fmt: skip
        redis = launch("redis", command, log=self.root / "logs" / "redis.log",
                       env=dict(os.environ), cwd=self.root)  # fmt: skip
        self.services.append(redis)
        self.ports["postgres"] = free_port()
        self.services.append(
            postgres_service(
                self.ports["postgres"],
                log=self.root / "logs" / "postgres.log",
                databases=("dagster", "genoflow"),
            )
        )
        self._start_gcs()
        wait_for(redis, lambda: _answers(self.ports["redis"]), what="PONG", timeout=30)

    def _start_gcs(self) -> None:
        from genoflow_tests.support.gcs_emulator import GcsEmulator, start
        from genoflow_tests.support.gcs_emulator import stop as stop_gcs

        log = self.root / "logs" / "gcs.log"
        process, endpoint, seconds = start(self.gcs_root, log)
        self.services.append(Service("fake-gcs-server", process, log, stopper=stop_gcs))
        self.gcs_endpoint = endpoint
        GcsEmulator(endpoint, self.gcs_root, process.pid, seconds).create_bucket(BUCKET)

    def _start_dagster(self) -> None:
        log = self.root / "logs" / "dagster-daemon.log"
        command = [_script("dagster-daemon"), "run", "-m", "genoflow.definitions"]
        daemon = launch("dagster-daemon", command, log=log, env=self.env(), cwd=self.root)
        self.services.append(daemon)
        if self.webserver:
            self.ports["webserver"] = free_port()
            command = [_script("dagster-webserver"), "-m", "genoflow.definitions",
                       "-h", "127.0.0.1", "-p", str(self.ports["webserver"])]  # fmt: skip
            web = launch("dagster-webserver", command, log=self.root / "logs" / "webserver.log",
                         env=self.env(), cwd=self.root)  # fmt: skip
            self.services.append(web)
            wait_for(web, lambda: _http_ok(f"{self.webserver_url}/server_info"),
                     what="answer", timeout=START_TIMEOUT)  # fmt: skip
        wait_for(daemon, self._sensing, what="sensor heartbeat", timeout=START_TIMEOUT)

    def _sensing(self) -> bool:
        with self.instance() as instance:
            return "SENSOR" in instance.get_daemon_heartbeats()


def _script(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _tail(log: Path, size: int = 65536) -> str:
    if not log.exists():
        return ""
    with open(log, "rb") as handle:
        handle.seek(max(0, log.stat().st_size - size))
        return handle.read().decode(errors="replace")


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so ``with LocalCluster(...)`` stops what it started."""

    def _interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _interrupt)
