"""Atomic folder publish: temp siblings, rename-only publishing, and sweeping dead temp folders."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from genoflow.storage import atomic
from genoflow.storage.replicas import local_owner_gone, owner_id
from genoflow_tests.support.processes import race

PROCESSES = 8
CONTENT = b"identical content \xff\n" * 4096


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path, with its bytes."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def dead_temp_sibling(dest: Path) -> Path:
    """A temp folder created by a process that has exited (as a SIGKILLed builder leaves one)."""
    code = (
        "import sys; from genoflow.storage import atomic; print(atomic.temp_sibling(sys.argv[1]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(dest)], check=True, capture_output=True, text=True
    )
    return Path(done.stdout.strip())


def test_temp_sibling_is_a_private_hidden_folder_in_the_same_parent(tmp_path: Path) -> None:
    dest = tmp_path / "intervals" / "v1"

    temp = atomic.temp_sibling(dest)

    host = socket.gethostname().split(".")[0]
    pattern = rf"\.v1\.tmp\.{re.escape(host)}\.{os.getpid()}\.[0-9a-f]+"
    assert re.fullmatch(pattern, temp.name)
    assert temp.parent == dest.parent
    assert temp.is_dir()
    assert not dest.exists()


def test_temp_siblings_of_one_destination_never_collide(tmp_path: Path) -> None:
    dest = tmp_path / "v1"

    temps = {atomic.temp_sibling(dest) for _ in range(20)}

    assert len(temps) == 20


def test_publish_dir_renames_the_temp_folder_into_place(tmp_path: Path) -> None:
    dest = tmp_path / "v1"
    temp = atomic.temp_sibling(dest)
    (temp / "data.bam").write_bytes(b"\x1f\x8b payload \xff")

    published = atomic.publish_dir(temp, dest)

    assert published is True
    assert (dest / "data.bam").read_bytes() == b"\x1f\x8b payload \xff"
    assert not temp.exists()


def test_publish_dir_returns_false_when_the_destination_already_exists(tmp_path: Path) -> None:
    dest = tmp_path / "v1"
    dest.mkdir()
    (dest / "data.bam").write_bytes(b"first")
    temp = atomic.temp_sibling(dest)
    (temp / "data.bam").write_bytes(b"second")

    assert atomic.publish_dir(temp, dest) is False


def test_losing_publish_removes_its_temp_and_leaves_the_winner_untouched(tmp_path: Path) -> None:
    dest = tmp_path / "v1"
    dest.mkdir()
    (dest / "data.bam").write_bytes(b"winner \x00\xff")
    (dest / "genoflow.json").write_text('{"files": []}\n')
    before = snapshot(dest)
    mtime = dest.stat().st_mtime_ns
    temp = atomic.temp_sibling(dest)
    (temp / "data.bam").write_bytes(b"loser, other bytes")
    (temp / "genoflow.json").write_text("{}\n")

    atomic.publish_dir(temp, dest)

    assert snapshot(dest) == before
    assert dest.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1"]


def test_publish_dir_removes_the_temp_when_the_rename_fails_otherwise(tmp_path: Path) -> None:
    temp = atomic.temp_sibling(tmp_path / "v1")
    (temp / "data.bam").write_bytes(b"payload")

    with pytest.raises(FileNotFoundError):
        atomic.publish_dir(temp, tmp_path / "missing-parent" / "v1")

    assert not temp.exists()


def test_sweep_removes_a_temp_folder_whose_owner_process_is_dead(tmp_path: Path) -> None:
    temp = dead_temp_sibling(tmp_path / "v1")
    (temp / "half.bam").write_bytes(b"half a file")

    removed = atomic.sweep(tmp_path)

    assert removed == [temp]
    assert not temp.exists()


def test_sweep_keeps_a_temp_folder_owned_by_a_live_process(tmp_path: Path) -> None:
    temp = atomic.temp_sibling(tmp_path / "v1")

    removed = atomic.sweep(tmp_path)

    assert removed == []
    assert temp.is_dir()


def test_sweep_keeps_published_folders_and_other_entries(tmp_path: Path) -> None:
    dead_temp_sibling(tmp_path / "v1")
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "data.bam").write_bytes(b"published")
    (tmp_path / ".v1.lock").write_bytes(b"")
    (tmp_path / ".hidden.tmp.notes").mkdir()

    atomic.sweep(tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden.tmp.notes", ".v1.lock", "v1"]
    assert (tmp_path / "v1" / "data.bam").read_bytes() == b"published"


def test_sweep_keeps_a_recent_temp_folder_from_another_host(tmp_path: Path) -> None:
    foreign = tmp_path / ".v1.tmp.otherhost.4242.00ff00ff"
    foreign.mkdir()

    assert atomic.sweep(tmp_path) == []
    assert foreign.is_dir()


def test_sweep_removes_an_old_temp_folder_from_another_host(tmp_path: Path) -> None:
    foreign = tmp_path / ".v1.tmp.otherhost.4242.00ff00ff"
    foreign.mkdir()
    old = time.time() - atomic.FOREIGN_TEMP_MAX_AGE - 60
    os.utime(foreign, (old, old))

    assert atomic.sweep(tmp_path) == [foreign]
    assert not foreign.exists()


def test_sweep_of_a_missing_folder_removes_nothing(tmp_path: Path) -> None:
    assert atomic.sweep(tmp_path / "absent") == []


def test_owner_alive_is_none_for_a_name_that_is_not_a_temp_folder() -> None:
    assert atomic.owner_alive("v1") is None


def _race_to_publish(dest: str, barrier: Barrier, results: Queue) -> None:
    """Build a folder privately, wait for every rival, then try to rename it into place."""
    temp = atomic.temp_sibling(dest)
    (temp / "data.bam").write_bytes(CONTENT)
    atomic.fsync_tree(temp)
    barrier.wait(timeout=60)
    results.put(atomic.publish_dir(temp, dest))


def test_concurrent_publishers_without_a_lock_leave_exactly_one_winner(tmp_path: Path) -> None:
    dest = tmp_path / "intervals" / "v1"
    raced = race(_race_to_publish, [(str(dest),)] * PROCESSES)

    assert raced.exitcodes == [0] * PROCESSES
    assert sorted(raced.outcomes) == [False] * (PROCESSES - 1) + [True]
    assert snapshot(dest) == {"data.bam": CONTENT}
    assert [p.name for p in dest.parent.iterdir()] == ["v1"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_an_owner_on_this_host_is_alive_while_its_pid_runs_and_gone_after() -> None:
    dead = _dead_pid()
    short = socket.gethostname().split(".")[0] or "localhost"
    assert atomic.process_alive(socket.gethostname(), os.getpid()) is True
    assert atomic.process_alive(socket.gethostname(), dead) is False
    assert atomic.owner_alive(f".v1.tmp.{short}.{os.getpid()}.00ff00ff") is True
    assert atomic.owner_alive(f".v1.tmp.{short}.{dead}.00ff00ff") is False
    assert local_owner_gone(owner_id()) is False
    assert local_owner_gone(f"{socket.gethostname()}:{dead}") is True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_a_zombie_owner_is_gone() -> None:
    """A process that ended but was never reaped (its parent died or has not waited yet)
    answers signal 0 like a live one; it owns nothing any more."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 10
        while atomic._proc_stat(child.pid)[0] != "Z" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert atomic._proc_stat(child.pid)[0] == "Z"
        assert atomic.process_alive(socket.gethostname(), child.pid) is False
    finally:
        child.wait()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_a_reused_pid_that_started_after_the_mark_is_not_its_owner(tmp_path) -> None:
    """A draft whose owner died keeps its pid in its name; a newer process given the same pid
    started after the draft was last touched, so it cannot be the owner."""
    host = socket.gethostname()
    assert atomic.process_alive(host, os.getpid(), since=time.time()) is True
    a_day_ago = time.time() - 86400
    assert atomic.process_alive(host, os.getpid(), since=a_day_ago) is False
    short = host.split(".")[0] or "localhost"
    draft = tmp_path / f".v1.tmp.{short}.{os.getpid()}.00ff00ff"
    draft.mkdir()
    assert atomic.owner_alive(draft.name, draft) is True
    os.utime(draft, (a_day_ago, a_day_ago))
    assert atomic.owner_alive(draft.name, draft) is False
    assert atomic.sweep(tmp_path) == [draft]
    assert local_owner_gone(owner_id(), since=a_day_ago) is True
    assert local_owner_gone(owner_id(), since=time.time()) is False


def test_an_owner_on_another_host_is_never_presumed_dead() -> None:
    dead = _dead_pid()
    assert atomic.process_alive("another-host.example", dead) is None
    assert atomic.owner_alive(f".v1.tmp.otherhost.{dead}.00ff00ff") is None
    assert local_owner_gone(f"another-host.example:{dead}") is None
