"""Measure one command: wall clock, CPU, the largest process's RSS and the session's total RSS.

Invariant: a measured command runs in a session of its own, is killed with its whole group when
it overruns or when the measurement is interrupted, and is always reaped; the largest single
process's peak RSS comes from ``os.wait4`` (the child and every descendant it waited for), the
total RSS from sampling every process of the session every 50 ms. CPU (user + sys) is the larger
of wait4's and the sum over the sampled processes (which includes descendants nobody waits for).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Run", "SessionRss", "kill_group", "measure", "terminate"]


@dataclass(frozen=True)
class Run:
    """One measured execution of one side."""

    family: str
    side: str
    repeat: int
    wall: float
    cpu: float
    rss_mb: float
    out_mb: float
    tree_mb: float = 0.0
    engine: str = ""
    error: str | None = None


def terminate(signum: int, frame: object) -> None:
    # `timeout` signals both the process and its group: ignore the repeat so cleanup can finish.
    signal.signal(signum, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def kill_group(pid: int) -> None:
    # A group that has already exited leaves nothing to stop.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


class SessionRss:
    """Samples the summed RSS of every process in one session; :attr:`peak_mb` is the maximum.

    Shared pages (libraries) are counted once per process, so the sum errs on the high side.
    :attr:`cpu_s` sums each sampled process's own CPU time as last seen: it includes processes
    nobody waits for (a process pool's workers under a fork server), which ``wait4`` misses, and
    misses the last interval of each process and those shorter than one.
    """

    def __init__(self, session: int, interval: float = 0.05) -> None:
        self.session = session
        self.interval = interval
        self.peak_mb = 0.0
        self._cpu_ticks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._page = os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> SessionRss:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.sample() / (1 << 20))
            self._stop.wait(self.interval)

    def sample(self) -> int:
        """Bytes resident, summed over the session's processes right now."""
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) == self.session:  # field 6 of stat: the session id
                    total += int(stat.with_name("statm").read_text().split()[1]) * self._page
                    # fields 14 and 15 of stat: user and system clock ticks
                    self._cpu_ticks[int(stat.parent.name)] = int(fields[11]) + int(fields[12])
            except (OSError, IndexError, ValueError):  # the process ended while being read
                continue
        return total

    @property
    def cpu_s(self) -> float:
        """CPU seconds of every process sampled in the session (see the class docstring)."""
        return sum(self._cpu_ticks.values()) / os.sysconf("SC_CLK_TCK")


def measure(
    argv: list[str], *, cwd: Path, timeout: float, env: dict[str, str] | None = None
) -> tuple[float, float, float, float, str | None]:
    """Run ``argv`` in its own session; return wall s, CPU s, peak RSS MB, peak session RSS MB
    and any error."""
    with open(cwd / "stdout.log", "wb") as out, open(cwd / "stderr.log", "wb") as err:
        began = time.perf_counter()
        proc = subprocess.Popen(
            argv, cwd=cwd, stdout=out, stderr=err, start_new_session=True, env=env
        )
        timer = threading.Timer(timeout, kill_group, (proc.pid,))
        timer.start()
        try:
            with SessionRss(proc.pid) as sampler:
                _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            kill_group(proc.pid)
            raise
        finally:
            timer.cancel()
        wall = time.perf_counter() - began
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    error = None
    if code != 0:
        tail = (cwd / "stderr.log").read_bytes()[-600:].decode("utf-8", "replace").strip()
        reason = f"killed after {timeout:g} s" if wall >= timeout else f"exit {code}"
        error = f"{reason}: {tail.splitlines()[-1] if tail else 'no message'}"
    # wait4 counts every descendant that was waited for; the sampled sum also counts those
    # nobody waited for (a fork server's pool workers). Each is a lower bound: take the larger.
    cpu = max(usage.ru_utime + usage.ru_stime, sampler.cpu_s)
    return wall, cpu, usage.ru_maxrss / 1024, sampler.peak_mb, error
