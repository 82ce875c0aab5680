"""Run GA4GH's ``drs-compliance-suite`` (DRS 1.2.0) against ``genoflow serve`` and summarise it.

What ``make drs-compliance`` runs (and CI after the tests): builds the demo manifest into a home
of its own under ``--out``, then twice starts ``genoflow serve`` on loopback and runs the suite
against its ``/ga4gh/drs/v1`` with a config naming every DRS object of every source (``{md5}``,
and for sorted families ``{md5}.sorted``, ``{md5}.index`` and the bundle ``{md5}.bundle``):

- ``none``: no tokens file, every request without credentials;
- ``bearer``: ``GENOFLOW_SERVE_TOKENS`` on, every request with a bearer token made for the run.

Each pass writes the suite's JSON report (``report-none.json``, ``report-bearer.json``) under
``--out``; the script prints each one's counts and every failed case, and exits 1 when any case
failed, or none passed.

The suite runs in its own virtualenv (``--suite-python``; it pins Flask 2.2, requests 2.28 and
pytest 7.1). Its 1.0.3 wheel imports a top-level module ``supported_drs_versions`` that its
repository keeps beside the package and the wheel leaves out, so the script writes that
one-line module under ``--out`` and puts it on the suite's ``PYTHONPATH``.

Usage::

    python scripts/drs_compliance.py --suite-python .venv-drs/bin/python --out build/drs-compliance
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

from serving import serving  # scripts/serving.py

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "data" / "manifests" / "demo.tsv"
DRS = "/ga4gh/drs/v1"
SHIM = 'SUPPORTED_DRS_VERSIONS = ["1.2.0"]\n'
SUMMARY_KEYS = ("passed", "failed", "skipped", "warned", "unknown")


def build_home(home: Path, manifest: Path) -> None:
    """``genoflow run`` the manifest into ``home`` (a cache hit when it was built before)."""
    env = {**os.environ, "GENOFLOW_HOME": str(home)}
    env.pop("DAGSTER_HOME", None)
    command = [sys.executable, "-m", "genoflow.cli", "run", str(manifest)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        sys.exit(f"genoflow run {manifest} failed:\n{done.stdout}\n{done.stderr}")


def object_ids(home: Path) -> list[tuple[str, bool]]:
    """Every DRS id of the home's registered sources, with whether it is a bundle."""
    from genoflow.core.settings import Settings
    from genoflow.storage.registry import Registry

    settings = Settings.from_env({"GENOFLOW_HOME": str(home)})
    with Registry(settings.registry_target) as registry:
        families = {row.md5: row.family for row in registry.rows()}
    found: list[tuple[str, bool]] = []
    for md5, family in sorted(families.items()):
        found.append((md5, False))
        if family != "passthrough":
            found += [(f"{md5}.sorted", False), (f"{md5}.index", False), (f"{md5}.bundle", True)]
    return found


def config(ids: list[tuple[str, bool]], token: str | None) -> dict:
    """The suite's config file: service-info and every object, with the pass's credentials."""
    auth = {"auth_type": "bearer" if token else "none", "auth_token": token or ""}
    return {
        "service_info": auth,
        "drs_object_info": [{"drs_id": i, **auth, "is_bundle": bundle} for i, bundle in ids],
        "drs_object_access": [{"drs_id": i, **auth} for i, bundle in ids if not bundle],
    }


def run_suite(suite_python: str, base: str, cfg: Path, report: Path, out: Path) -> None:
    """The suite's own CLI (``compliance_suite.report_runner``), writing ``report``."""
    env = {**os.environ, "PYTHONPATH": str(out / "shim")}
    command = [
        suite_python, "-m", "compliance_suite.report_runner",
        "--server_base_url", base + DRS,
        "--platform_name", "genoflow serve",
        "--platform_description", "genoflow's DRS 1.2 endpoint over a demo home",
        "--drs_version", "1.2.0",
        "--config_file", str(cfg),
        "--report_path", str(report),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=out, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0 or not report.is_file():
        sys.exit(f"drs-compliance-suite did not complete:\n{done.stdout}\n{done.stderr}")


def failures(report: dict) -> list[str]:
    """``test: case: message`` of every case that did not pass or skip."""
    found = []
    for phase in report.get("phases", []):
        for test in phase.get("tests", []):
            for case in test.get("cases", []):
                if case.get("status") not in ("PASS", "SKIP"):
                    found.append(
                        f"{test.get('test_name')}: {case.get('case_name')}: {case.get('message')}"
                    )
    return found


def run_pass(name: str, args: argparse.Namespace, ids: list[tuple[str, bool]]) -> bool:
    """One pass (``none`` or ``bearer``): serve, run the suite, print its summary."""
    out: Path = args.out
    env: dict[str, str] = {}
    token = secrets.token_urlsafe(24) if name == "bearer" else None
    if token is not None:
        tokens = out / "tokens.txt"
        tokens.write_text(token + "\n")
        env["GENOFLOW_SERVE_TOKENS"] = str(tokens)
    cfg = out / f"config-{name}.json"
    cfg.write_text(json.dumps(config(ids, token), indent=2))
    report = out / f"report-{name}.json"
    with serving(args.home, out / f"serve-{name}.log", env) as base:
        run_suite(args.suite_python, base, cfg, report, out)
    parsed = json.loads(report.read_text())
    counts = parsed.get("summary", {})
    failed = failures(parsed)
    shown = " ".join(f"{key}={counts.get(key, 0)}" for key in SUMMARY_KEYS)
    where = report.relative_to(ROOT) if report.is_relative_to(ROOT) else report
    print(f"drs-compliance-suite ({name} auth, {len(ids)} objects): {shown}; report {where}")
    for line in failed:
        print(f"  FAILED {line}")
    return not failed and counts.get("passed", 0) > 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--suite-python", required=True, help="the suite virtualenv's python")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "drs-compliance")
    parser.add_argument("--manifest", type=Path, default=DEMO)
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.suite_python = os.path.abspath(args.suite_python)  # a venv's symlink: not resolved
    args.home = args.out / "home"
    (args.out / "shim").mkdir(parents=True, exist_ok=True)
    (args.out / "shim" / "supported_drs_versions.py").write_text(SHIM)
    build_home(args.home, args.manifest.resolve())
    ids = object_ids(args.home)
    passed = [run_pass(name, args, ids) for name in ("none", "bearer")]
    return 0 if all(passed) else 1


if __name__ == "__main__":
    sys.exit(main())
