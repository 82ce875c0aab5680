"""The package's layers: held by import-linter, entry points that survive the move, old paths.

The contracts live in ``pyproject.toml`` (``[tool.importlinter]``); ``make lint`` runs them. These
tests prove they pass on the tree, that they fail when a low layer imports Dagster, and that what
users and deployments name from outside (``genoflow.definitions``, ``python -m genoflow.cli``, the
storage classes in an existing ``dagster.yaml``) still resolves.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DagsterInstance

import genoflow
from genoflow.core.settings import Settings
from genoflow.instance import storage
from genoflow.instance.home import dagster_yaml, ensure_dagster_home

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
LAYER_FOLDERS = {
    "core",
    "manifests",
    "processors",
    "storage",
    "build",
    "defs",
    "instance",
    "serve",
    "cli",
}

OLD_STORAGE_YAML = """\
run_storage:
  module: genoflow.dagster_storage
  class: RunStorage
  config:
    base_dir: {history}
event_log_storage:
  module: genoflow.dagster_storage
  class: EventLogStorage
  config:
    base_dir: {runs}
schedule_storage:
  module: genoflow.dagster_storage
  class: ScheduleStorage
  config:
    base_dir: {schedules}
"""


def _lint_imports(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: install the dev extras (make test does)")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_the_layer_contracts_hold_on_the_tree() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "statement", "contract"),
    [
        ("processors/base.py", "import dagster", "No Dagster below the definitions layer"),
        ("core/formats.py", "import genoflow.storage.cache", "Layers"),
        ("storage/cache.py", "import genoflow.processors.engine", "Layers"),
    ],
)
def test_the_contracts_fail_when_a_module_crosses_its_layer(
    tmp_path: Path, module: str, statement: str, contract: str
) -> None:
    copy = tmp_path / "src"
    shutil.copytree(ROOT / "genoflow", copy / "genoflow", ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = copy / "genoflow" / module
    target.write_text(target.read_text() + f"\n{statement}  # noqa\n")

    result = _lint_imports(tmp_path, pythonpath=copy)

    assert result.returncode == 1, result.stdout + result.stderr
    broken = [line for line in result.stdout.splitlines() if line.endswith(" BROKEN")]
    assert any(line.startswith(contract) for line in broken), result.stdout


def test_genoflow_has_at_most_three_top_level_modules_beside_its_layer_folders() -> None:
    package = Path(genoflow.__file__).parent
    modules = sorted(path.name for path in package.glob("*.py"))
    folders = {path.name for path in package.iterdir() if (path / "__init__.py").is_file()}
    assert modules == ["__init__.py", "dagster_storage.py", "definitions.py"]
    assert folders == LAYER_FOLDERS


def test_python_m_genoflow_cli_and_the_console_script_run_the_same_command() -> None:
    by_module = subprocess.run(
        [sys.executable, "-m", "genoflow.cli", "--help"], capture_output=True, text=True
    )
    script = Path(sys.executable).with_name("genoflow")
    by_script = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert by_module.returncode == by_script.returncode == 0, by_module.stderr + by_script.stderr
    assert "status" in by_module.stdout
    assert by_module.stdout.replace("__main__.py", "genoflow") == by_script.stdout


def test_the_code_location_entry_point_names_the_assembled_definitions() -> None:
    from genoflow.definitions import defs
    from genoflow.defs.location import defs as assembled

    assert defs is assembled


def _old_yaml(home: Path) -> str:
    return OLD_STORAGE_YAML.format(
        history=home / "history", runs=home / "history" / "runs", schedules=home / "schedules"
    )


def test_a_deployments_dagster_yaml_naming_the_old_storage_module_still_loads(
    tmp_path: Path,
) -> None:
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(_old_yaml(home))

    with DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, storage.RunStorage)
        assert isinstance(instance.event_log_storage, storage.EventLogStorage)
        assert isinstance(instance.schedule_storage, storage.ScheduleStorage)
        assert instance.get_runs() == []
    assert (home / "dagster.yaml").read_text() == _old_yaml(home)  # not genoflow's to rewrite


def test_a_dagster_yaml_genoflow_wrote_before_the_move_is_rewritten_on_first_open(
    tmp_path: Path,
) -> None:
    settings = Settings.from_env({"GENOFLOW_HOME": str(tmp_path / "home")})
    home = settings.dagster_home
    home.mkdir(parents=True)
    header = dagster_yaml(home).split("\n", 1)[0] + "\ntelemetry:\n  enabled: false\n"
    (home / "dagster.yaml").write_text(header + _old_yaml(home))

    ensure_dagster_home(settings)

    written = (home / "dagster.yaml").read_text()
    assert written == dagster_yaml(home)
    assert "genoflow.dagster_storage" not in written
    assert "module: genoflow.instance.storage" in written
    with DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_storage, storage.RunStorage)
