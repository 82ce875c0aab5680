"""Atomic folder publish: the rename is the correctness guarantee.

A folder is built under a private sibling name ``.{name}.tmp.{host}.{pid}.{rand}`` in the same
parent (so the final ``os.rename`` never crosses a filesystem), its files and the folder are
fsynced, and then it is renamed into place. A published folder is never overwritten: when the
rename finds the destination already there, another builder won with the same content and our
copy is discarded. Every error path removes the temp folder; :func:`sweep` removes temp folders
whose owner process is dead (left by a SIGKILL). A failure leaves no folder at all: the empty
parents made for a temp folder are removed again (:func:`prune_empty`, ``rmdir`` only), and a
builder whose freshly made parent vanished that way makes it again (:func:`within_parents`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp\.(?P<host>[^.]+)\.(?P<pid>\d+)\.(?P<rand>[0-9a-f]+)$")
# A temp folder from another host cannot be probed for liveness; after this long it is debris.
FOREIGN_TEMP_MAX_AGE = 24 * 3600.0
# How often a folder is made again after a concurrent prune removed it before it was used.
MAKE_ATTEMPTS = 8
T = TypeVar("T")


def _host() -> str:
    return socket.gethostname().split(".")[0].replace(".", "-") or "localhost"


def temp_sibling(dest: str | Path) -> Path:
    """Create and return a private temp folder next to ``dest`` (parents created as needed)."""
    dest = Path(dest)
    temp = dest.parent / f".{dest.name}.tmp.{_host()}.{os.getpid()}.{secrets.token_hex(4)}"
    within_parents(dest.parent, temp.mkdir)
    return temp


def within_parents(folder: str | Path, create: Callable[[], T]) -> T:
    """Make ``folder`` (and its parents), then run ``create`` to make something inside it.

    A failed builder removes the empty folders it leaves (:func:`prune_empty`), so a folder
    just made may vanish before ``create`` runs; both steps are then tried again, a bounded
    number of times.
    """
    folder = Path(folder)
    for attempt in range(MAKE_ATTEMPTS):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return create()
        except FileNotFoundError:
            if attempt == MAKE_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")  # the loop returns or raises


def prune_empty(folder: str | Path, *, stop: str | Path) -> None:
    """Remove ``folder`` and then each parent below ``stop`` while they are empty.

    Only ``rmdir`` is used, so a folder holding anything (another builder's lock, temp folder
    or artifact) is never removed; the first such folder ends the walk. A folder already gone
    is skipped. This is cleanup after a failure: it never raises, so it cannot hide the error
    that caused it.
    """
    folder, stop = Path(folder), Path(stop)
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            return  # not empty (ENOTEMPTY/EEXIST), busy or not ours to remove: leave it
        folder = folder.parent


def fsync_tree(folder: str | Path) -> None:
    """fsync every regular file directly inside ``folder``, then the folder itself."""
    folder = Path(folder)
    for entry in folder.iterdir():
        if entry.is_file() and not entry.is_symlink():
            fd = os.open(entry, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(folder)


def fsync_dir(folder: str | Path) -> None:
    """fsync a folder so that renames and creations inside it survive a crash."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_dir(temp: str | Path, dest: str | Path) -> bool:
    """Rename a finished temp folder onto ``dest``; never overwrite a published one.

    Args:
        temp: the finished folder (its contents already fsynced).
        dest: the final folder name.

    Returns:
        True when our folder was published; False when ``dest`` already existed (another
        builder won), in which case ``temp`` has been removed.

    Raises:
        OSError: any other rename failure; ``temp`` is removed first.
    """
    temp, dest = Path(temp), Path(dest)
    try:
        os.rename(temp, dest)
    except OSError as exc:
        remove_tree(temp)
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False
        raise
    fsync_dir(dest.parent)
    return True


def remove_tree(path: str | Path) -> None:
    """Remove a folder tree if it exists; a folder already gone is not an error."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)


def process_alive(host: str, pid: str | int, *, since: float | None = None) -> bool | None:
    """Whether process ``pid`` of ``host`` still runs: the one owner-liveness rule.

    On this host (its name as ``socket.gethostname`` gives it, or the short form temp folder
    names carry) the pid is probed: False when no such process exists, when it is a zombie (it
    has ended and only waits to be reaped), or when it started after ``since`` (the pid was
    reused by a newer process, so it cannot be the owner that left its mark by then). A process
    of another user counts as alive. An owner on another host is never presumed dead, since its
    pid cannot be checked from here: the answer is None, and the caller decides by age.

    Args:
        host: The host the owner recorded.
        pid: Its process id (a string that is not a number also gives None).
        since: When the owner was known to be running (epoch seconds): the mtime of what it
            made, or the time it last wrote its row. None skips the pid-reuse test.

    Returns:
        True (alive), False (gone) or None (cannot be told from this host).
    """
    if host not in (socket.gethostname(), _host()) or not str(pid).isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    state, started = _proc_stat(int(pid))
    if state == "Z":
        return False
    return not (since is not None and started is not None and started > since + START_SLACK)


# /proc/stat's boot time has whole seconds; a process start time read from it is this exact.
START_SLACK = 2.0
_BOOT_TIME: list[float] = []


def _proc_stat(pid: int) -> tuple[str | None, float | None]:
    """The state letter of process ``pid`` and when it started (epoch seconds), from /proc;
    (None, None) where /proc cannot tell (another OS, or the process just ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if not _BOOT_TIME:
            for line in Path("/proc/stat").read_text().splitlines():
                if line.startswith("btime "):
                    _BOOT_TIME.append(float(line.split()[1]))
    except OSError:
        return None, None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    started = None
    if _BOOT_TIME and len(fields) > 19:
        started = _BOOT_TIME[0] + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return fields[0] if fields else None, started


def owner_alive(name: str, path: str | Path | None = None) -> bool | None:
    """Whether the process that owns temp folder ``name`` still runs (:func:`process_alive`;
    None also when ``name`` is not a temp folder name). With ``path`` (the folder itself), a
    process that started after the folder was last modified is not its owner (a reused pid)."""
    match = _TEMP.match(name)
    if not match:
        return None
    return process_alive(match["host"], match["pid"], since=_mtime(path))


def _mtime(path: str | Path | None) -> float | None:
    if path is None:
        return None
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def sweep(parent: str | Path) -> list[Path]:
    """Remove the dead temp folders directly inside ``parent``.

    A temp folder is dead when its owner process (same host) no longer exists, or when it comes
    from another host and is older than :data:`FOREIGN_TEMP_MAX_AGE`.

    Returns:
        The folders removed.
    """
    parent = Path(parent)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except FileNotFoundError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if not match or not entry.is_dir(follow_symlinks=False):
            continue
        if _is_dead(match, Path(entry.path)):
            remove_tree(entry.path)
            removed.append(Path(entry.path))
    return removed


def _is_dead(match: re.Match[str], path: Path) -> bool:
    alive = process_alive(match["host"], match["pid"], since=_mtime(path))
    if alive is not None:
        return not alive
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False
    return age > FOREIGN_TEMP_MAX_AGE
