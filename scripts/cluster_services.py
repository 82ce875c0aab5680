"""Starting and stopping the local cluster's processes, each by its own PID.

Invariant: a process is started in a session of its own, so its PID is also the id of the process
group its children join; :meth:`Service.stop` signals that PID, waits (bounded), then kills what
is left of that group — never a process found by name.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STOP_TIMEOUT = 30.0


class ServiceError(RuntimeError):
    """A service of the local cluster did not start; the message names it and its log."""


@dataclass
class Service:
    """One started process.

    Attributes:
        name: what it is (``redis``, ``worker-1`` …).
        process: the process, started in its own session.
        log: where its stdout and stderr go.
        stop_signal: the signal that asks it to stop cleanly.
        group: send ``stop_signal`` to the whole process group (the daemon's code servers and
            run coordinators, a worker's pool), not only to the leader.
        stopper: replaces the signal-then-kill stop (for services with their own stop helper).
        cleanup: run after the process is gone (remove a private folder).
    """

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    stop_signal: int = signal.SIGTERM
    group: bool = True
    stopper: Callable[[subprocess.Popen[bytes]], None] | None = None
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Ask the process to stop, kill it after ``timeout``, then whatever its group left."""
        try:
            if self.stopper is not None:
                self.stopper(self.process)
            elif self.alive():
                self.signal(self.stop_signal)
                try:
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=timeout)
            _kill_group(self.pid)
        finally:
            for step in self.cleanup:
                step()

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process, or to its whole group when ``group`` is set."""
        if self.group:
            os.killpg(self.pid, signum)
        else:
            self.process.send_signal(signum)


def _kill_group(pgid: int) -> None:
    """SIGKILL the processes still left in the group of a session leader started here."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return  # the group is empty: every child ended with its parent


def launch(
    name: str,
    command: list[str],
    *,
    log: Path,
    env: dict[str, str],
    cwd: Path,
    user: dict[str, Any] | None = None,
    stop_signal: int = signal.SIGTERM,
    group: bool = True,
) -> Service:
    """Start ``command`` in a session of its own, output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as sink:
        process = subprocess.Popen(
            command,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
            **(user or {}),
        )
    return Service(name, process, log, stop_signal, group)


def wait_for(service: Service, ready: Callable[[], bool], *, what: str, timeout: float) -> None:
    """Poll ``ready`` until it holds; fail at once if ``service`` exits, or after ``timeout``.

    Raises:
        ServiceError: the service exited, or was not ready in time.
    """
    deadline = time.monotonic() + timeout
    while not ready():
        if not service.alive():
            raise ServiceError(
                f"{service.name} exited with {service.process.returncode} before {what}: "
                f"see {service.log}\n{_tail(service.log)}"
            )
        if time.monotonic() > deadline:
            raise ServiceError(
                f"{service.name}: no {what} within {timeout:.0f} s: see {service.log}"
            )
        time.sleep(0.2)


def _tail(log: Path, lines: int = 30) -> str:
    if not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def postgres_binary(name: str) -> str:
    """``initdb``/``postgres`` from PATH, else from Debian's versioned folder.

    Raises:
        ServiceError: PostgreSQL is not installed.
    """
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if not found:
        raise ServiceError(f"{name} is not installed: apt-get install postgresql")
    return found


def as_postgres_user() -> dict[str, Any]:
    """Popen arguments that drop root to the ``postgres`` user: initdb refuses to run as root."""
    if os.geteuid() != 0:
        return {}
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "postgres"], check=True
        )
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


def postgres_service(port: int, *, log: Path, databases: tuple[str, ...]) -> Service:
    """A fresh PostgreSQL server on 127.0.0.1:``port`` (trust auth) holding ``databases``.

    Its files live in a private folder of the system temp folder, owned by the user it runs as
    (a folder under a root-only parent would be out of its reach); the folder is removed when
    the service stops. It stops on SIGINT (PostgreSQL's fast shutdown).
    """
    user = as_postgres_user()
    folder = Path(tempfile.mkdtemp(prefix="genoflow-cluster-postgres-"))
    if user:
        entry = pwd.getpwnam(user["user"])
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    try:
        init = [postgres_binary("initdb"), "-D", "data", "-U", "postgres", "-A", "trust",
                "--no-sync", "-E", "UTF8", "--locale=C"]  # fmt: skip
        made = subprocess.run(init, cwd=folder, capture_output=True, **user)
        if made.returncode != 0:
            raise ServiceError(f"initdb failed: {made.stderr.decode(errors='replace')}")
        command = [postgres_binary("postgres"), "-D", "data", "-h", "127.0.0.1",
                   "-p", str(port), "-k", str(folder), "-c", "fsync=off",
                   "-c", "max_connections=200"]  # fmt: skip
        service = launch("postgres", command, log=log, env=dict(os.environ), cwd=folder,
                         user=user, stop_signal=signal.SIGINT, group=False)  # fmt: skip
    except BaseException:
        shutil.rmtree(folder)
        raise
    service.cleanup.append(lambda: shutil.rmtree(folder))
    try:
        wait_for(service, lambda: _create(port, databases), what="connections", timeout=60)
    except BaseException:
        service.stop()
        raise
    return service


def _create(port: int, databases: tuple[str, ...]) -> bool:
    import psycopg2

    try:
        connection = psycopg2.connect(
            host="127.0.0.1", port=port, user="postgres", dbname="postgres"
        )
    except psycopg2.OperationalError:
        return False
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            for name in databases:
                cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        connection.close()
    return True
