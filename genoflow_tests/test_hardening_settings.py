"""Broken settings give one line naming the setting, never a traceback, for every command.

Each case runs every CLI command (``run``, ``status``, ``status --json``, ``verify``,
``verify --repair``, ``backfill``, ``backfill --dry-run`` and ``dev --help``) in a child
process. ``dev --help`` is safe to run: with broken settings genoflow refuses before it starts
anything, and with good ones it only replaces itself with ``dagster dev --help``, which prints
and exits without starting a server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from genoflow_tests.support.unavailable import unavailable

COMMANDS = (
    ["run", "m.tsv"],
    ["status"],
    ["status", "--json"],
    ["verify"],
    ["verify", "--repair"],
    ["backfill"],
    ["backfill", "--dry-run"],
    ["dev", "--help"],
)

BED = b"chr1\t10\t20\nchr1\t5\t8\n"


def _genoflow(
    folder: Path, args: list[str], env: dict[str, str], prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "GENOFLOW_THREADS": "1", **env}
    full.setdefault("GENOFLOW_HOME", str(folder / "home"))
    if "DAGSTER_HOME" not in env:
        full.pop("DAGSTER_HOME", None)
    return subprocess.run(
        [*prefix, sys.executable, "-m", "genoflow.cli", *args],
        cwd=folder,
        env=full,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder with ``m.tsv``, one valid BED row beside nothing else."""
    import hashlib

    (tmp_path / "a.bed").write_bytes(BED)
    md5 = hashlib.md5(BED).hexdigest()
    (tmp_path / "m.tsv").write_text(f"name\turi\tmd5\na.bed\ta.bed\t{md5}\n")
    return tmp_path


def _assert_every_command_refused(
    folder: Path, env: dict[str, str], setting: str, prefix: tuple[str, ...] = ()
) -> None:
    problems = []
    for args in COMMANDS:
        done = _genoflow(folder, args, env, prefix)
        output = done.stdout + done.stderr
        lines = done.stderr.strip().splitlines()
        if "Traceback" in output or done.returncode != 2 or len(lines) != 1:
            problems.append(f"{args}: rc {done.returncode}\n{output[-2000:]}")
        elif not lines[0].startswith(f"genoflow: [config] {setting}=") or " — " not in lines[0]:
            problems.append(f"{args}: {lines[0]}")
    assert not problems, "\n".join(problems)


def test_a_home_that_is_a_file_is_refused_by_every_command_in_one_line(folder: Path) -> None:
    (folder / "home-file").write_text("not a folder\n")
    env = {"GENOFLOW_HOME": str(folder / "home-file")}
    _assert_every_command_refused(folder, env, "GENOFLOW_HOME")


def test_a_home_under_a_file_is_refused_by_every_command_in_one_line(folder: Path) -> None:
    (folder / "home-file").write_text("not a folder\n")
    env = {"GENOFLOW_HOME": str(folder / "home-file" / "below")}
    _assert_every_command_refused(folder, env, "GENOFLOW_HOME")


def _without_dac_override() -> tuple[str, ...]:
    """A command prefix under which root obeys permission bits, like any other user."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        unavailable("running as root without setpriv: a 0o555 folder cannot be made unwritable")
    return (setpriv, "--bounding-set=-dac_override,-dac_read_search", "--")


@pytest.mark.parametrize("missing", [False, True], ids=["existing", "to-be-created"])
def test_an_unwritable_home_is_refused_by_every_command_in_one_line(
    folder: Path, missing: bool
) -> None:
    prefix = _without_dac_override()
    locked = folder / "locked"
    locked.mkdir(mode=0o555)
    locked.chmod(0o555)
    home = locked / "home" if missing else locked
    try:
        _assert_every_command_refused(folder, {"GENOFLOW_HOME": str(home)}, "GENOFLOW_HOME", prefix)
        assert (
            "not writable"
            in _genoflow(folder, ["status"], {"GENOFLOW_HOME": str(home)}, prefix).stderr
        )
    finally:
        locked.chmod(0o755)


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A folder on a read-only tmpfs (needs the right to mount, as root in CI)."""
    target = tmp_path / "read-only"
    target.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(target)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        unavailable(f"cannot mount a read-only tmpfs here: {mounted.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


@pytest.mark.parametrize("below", ["", "home"], ids=["the-mount", "a-folder-to-create"])
def test_a_home_on_a_read_only_file_system_is_refused_by_every_command(
    folder: Path, read_only: Path, below: str
) -> None:
    env = {"GENOFLOW_HOME": str(read_only / below)}
    _assert_every_command_refused(folder, env, "GENOFLOW_HOME")
    assert "read-only file system" in _genoflow(folder, ["status"], env).stderr


def test_a_dagster_home_on_a_read_only_file_system_is_refused_by_every_command(
    folder: Path, read_only: Path
) -> None:
    _assert_every_command_refused(folder, {"DAGSTER_HOME": str(read_only)}, "DAGSTER_HOME")


def test_a_dagster_home_that_is_a_file_is_refused_by_every_command(folder: Path) -> None:
    (folder / "dagster-file").write_text("")
    env = {"DAGSTER_HOME": str(folder / "dagster-file")}
    _assert_every_command_refused(folder, env, "DAGSTER_HOME")


BROKEN_VALUES = [
    ("GENOFLOW_REGISTRY_URL", "garbage"),
    ("GENOFLOW_REGISTRY_URL", "nosuchdb://host/db"),
    ("GENOFLOW_REGISTRY_URL", "sqlite://"),
    ("GENOFLOW_REGISTRY_URL", "sqlite:////no/such/folder/registry.db"),
    ("GENOFLOW_SORT_MEMORY", "lots"),
    ("GENOFLOW_SORT_MEMORY", "-5G"),
    ("GENOFLOW_SORT_MEMORY", "0"),
    ("GENOFLOW_SORT_MEMORY", "9999T"),
    ("GENOFLOW_THREADS", "two"),
    ("GENOFLOW_THREADS", "0"),
    ("GENOFLOW_THREADS", "-3"),
    ("GENOFLOW_THREADS", "1.5"),
    ("GENOFLOW_THREADS", "99999999999999999999"),
    ("GENOFLOW_REPLICAS", "gs://"),
    ("GENOFLOW_REPLICAS", "/local/folder"),
    ("GENOFLOW_ALLOWED_ROOTS", "/no/such/folder"),
    ("GENOFLOW_HOME", "~no-such-user-here/home"),
]


@pytest.mark.parametrize(("setting", "value"), BROKEN_VALUES)
def test_a_garbage_setting_is_refused_by_every_command_in_one_line_naming_it(
    folder: Path, setting: str, value: str
) -> None:
    _assert_every_command_refused(folder, {setting: value}, setting)


def test_a_registry_url_never_shows_its_password(folder: Path) -> None:
    env = {"GENOFLOW_REGISTRY_URL": "nosuchdb://user:s3cret@host/db?token=t0ken"}
    done = _genoflow(folder, ["status"], env)
    assert done.returncode == 2
    assert "s3cret" not in done.stderr and "t0ken" not in done.stderr
    assert "GENOFLOW_REGISTRY_URL=nosuchdb://user:***@host/db" in done.stderr


@pytest.mark.parametrize(
    "text",
    ["run_storage: [\n", "run_storage:\n  module: no_such_module\n  class: Storage\n"],
    ids=["not-yaml", "unknown-storage-class"],
)
def test_a_dagster_yaml_dagster_refuses_is_refused_by_every_command_in_one_line(
    folder: Path, text: str
) -> None:
    """A dagster.yaml genoflow did not write is validated by opening it, before any work."""
    instance = folder / "instance"
    instance.mkdir()
    (instance / "dagster.yaml").write_text(text)
    _assert_every_command_refused(folder, {"DAGSTER_HOME": str(instance)}, "DAGSTER_HOME")


def test_a_registry_that_refuses_connections_fails_where_used_in_one_line(folder: Path) -> None:
    """Only commands that use the registry fail (status 1: the server may just be down)."""
    env = {"GENOFLOW_REGISTRY_URL": "postgresql+psycopg2://nobody@127.0.0.1:1/db"}
    problems = []
    for args in COMMANDS[:-1]:  # dev --help never opens the registry
        done = _genoflow(folder, args, env)
        output = done.stdout + done.stderr
        failed_clearly = done.returncode == 1 and "GENOFLOW_REGISTRY_URL" in done.stderr
        if "Traceback" in output or not (done.returncode == 0 or failed_clearly):
            problems.append(f"{args}: rc {done.returncode}\n{output[-2000:]}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("command", [["run", "m.tsv"], ["backfill"]], ids=["run", "backfill"])
@pytest.mark.parametrize("jobs", ["0", "-3", "two"])
def test_jobs_below_one_is_refused_with_a_clear_message(
    folder: Path, command: list[str], jobs: str
) -> None:
    done = _genoflow(folder, [*command, "--jobs", jobs], {})
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "argument --jobs:" in done.stderr
    assert ("1 or more" in done.stderr) or ("not a whole number" in done.stderr)
    assert not (folder / "home").exists()  # refused before any work
