"""The ``genoflow`` command: run manifests through Dagster, show status, open the UI."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from genoflow.build.steps import CHAINS
from genoflow.cli.report import print_errors, print_status, print_summary, status_records
from genoflow.core.errors import GenoflowError, ManifestError
from genoflow.core.settings import ConfigError, Settings
from genoflow.instance.home import ensure_dagster_home, foreign_dagster_yaml
from genoflow.instance.outcome import Outcome
from genoflow.manifests.reading import Manifest, read_manifests


def _jobs(text: str) -> int:
    """``--jobs``: a whole number of sources at once, at least 1."""
    try:
        jobs = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if jobs < 1:
        raise argparse.ArgumentTypeError(
            f"{jobs} is not allowed: give 1 or more sources processed at once"
        )
    return jobs


def _port(text: str) -> int:
    """``--port``: a TCP port, 1 to 65535."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port from 1 to 65535")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genoflow",
        description="Sorted, BGZF-compressed, indexed artifacts for the files your manifests list.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="stage, sort and index every file of the manifests")
    run.add_argument("manifests", nargs="+", type=Path, help="TSV, CSV or JSON manifests")
    run.add_argument("--jobs", type=_jobs, default=1, help="sources processed at once (default 1)")
    run.add_argument("--json", action="store_true", help="print the outcome as JSON")
    status = commands.add_parser("status", help="show the artifacts of registered sources")
    status.add_argument("select", nargs="*", help="names or md5s (default: every source)")
    status.add_argument("--json", action="store_true", help="print JSON (a list of objects)")
    status.add_argument(
        "--table",
        type=Path,
        metavar="FILE",
        help="write one row per (md5, asset) to FILE: .csv, .tsv, or .parquet (needs pyarrow)",
    )
    verify = commands.add_parser("verify", help="check every registered replica")
    verify.add_argument("--repair", action="store_true", help="restore bad replicas from good ones")
    verify.add_argument("--quick", action="store_true", help="sizes only, no checksums")
    backfill = commands.add_parser(
        "backfill", help="build every missing or stale artifact now (the nightly schedule's work)"
    )
    backfill.add_argument(
        "--family", action="append", choices=sorted(CHAINS), help="only this family (repeatable)"
    )
    backfill.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    backfill.add_argument("--jobs", type=_jobs, default=1, help="sources processed at once")
    register = commands.add_parser(
        "register", help="validate and register manifests' sources and partitions; build nothing"
    )
    register.add_argument("manifests", nargs="+", type=Path, help="TSV, CSV or JSON manifests")
    serve = commands.add_parser("serve", help="serve artifacts over HTTP (data, index, htsget)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8080, help="port to listen on (8080)")
    serve.add_argument("--workers", type=_jobs, default=1, help="server processes (default 1)")
    dev = commands.add_parser(
        "dev", help="start the Dagster UI on this project's instance", add_help=False
    )
    dev.add_argument("args", nargs="*", help="options passed on to `dagster dev` (e.g. -p 3001)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``genoflow`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["dev"]:
        # Everything after `dev` belongs to `dagster dev` (argparse would eat -h and -p).
        args = argparse.Namespace(command="dev", args=argv[1:])
    else:
        args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        settings.check_writable()  # before any command creates a folder or a database
        if foreign_dagster_yaml(settings.dagster_home):
            _open_instance(settings)  # only Dagster can validate it; kept open for the command
        return _dispatch(args, settings)
    except ConfigError as exc:
        print(f"genoflow: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "run":
        return cmd_run(args.manifests, settings, jobs=args.jobs, as_json=args.json)
    if args.command == "status":
        return cmd_status(args.select, settings, as_json=args.json, table=args.table)
    if args.command == "verify":
        return cmd_verify(settings, repair=args.repair, full=not args.quick)
    if args.command == "register":
        return cmd_register(args.manifests, settings)
    if args.command == "serve":
        return cmd_serve(settings, host=args.host, port=args.port, workers=args.workers)
    if args.command == "backfill":
        return cmd_backfill(settings, families=args.family, dry_run=args.dry_run, jobs=args.jobs)
    return cmd_dev(args.args, settings)


def load_manifests(paths: Sequence[Path]) -> tuple[Manifest, list[str]]:
    """Read every manifest; one that cannot be parsed is reported and the others still flow."""
    from genoflow.storage.gcs import gs_md5

    unreadable: list[ManifestError] = []
    manifest = read_manifests(paths, md5_lookup=gs_md5, unreadable=unreadable)
    problems = [str(exc) for exc in unreadable]
    listed = {row.manifest for row in manifest.rows} | {error.manifest for error in manifest.errors}
    problems += [
        f"[manifest] {path}: lists no rows — add one row per file under the header, "
        "or leave the manifest out"
        for path in manifest.paths
        if path not in listed
    ]
    problems += [f"[manifest] invalid row {error}" for error in manifest.errors]
    # Warnings are printed, not returned: they fail nothing (a C2M2 format found by name).
    print_errors(f"[manifest] warning {warning}" for warning in manifest.warnings())
    return manifest, problems


def cmd_run(paths: Sequence[Path], settings: Settings, *, jobs: int, as_json: bool) -> int:
    """Register the manifests' sources and materialize every family chain for every md5.

    Chains the embedded instance's run history and the local cache prove up to date are
    reported ``cached`` without starting Dagster at all; only the rest go through it.
    """
    from genoflow.instance.run_history import recorded_up_to_date
    from genoflow.storage.cache import Cache
    from genoflow.storage.node import open_node
    from genoflow.storage.registry import Registry

    manifest, problems = load_manifests(paths)
    print_errors(problems)
    with Registry(settings.registry_target) as registry:
        registry.register(manifest.rows)
    cache = Cache(settings.cache_root)
    cache.sweep()
    with open_node(settings) as node:
        node.upkeep.reclaim_pending()  # copies left half-written by killed runs
    sources = manifest.sources()
    work = [(md5, rows[0].family) for md5, rows in sources.items()]
    recorded = recorded_up_to_date(settings.dagster_home, cache.lookup, work)
    done = recorded or {}
    todo = [item for item in work if item not in done]
    # Dagster is asked which chains are up to date only when the run database could not say.
    lookup = cache.lookup if recorded is None else None
    ran = _run_through_dagster(todo, settings, lookup, jobs) if todo else {}
    by_item = {**done, **ran}
    outcomes = [by_item[item] for item in work]
    print_summary(sources, outcomes, as_json=as_json)
    failed = bool(problems) or not all(outcome.ok for outcome in outcomes)
    return 1 if failed else 0


def _run_through_dagster(
    work: list[tuple[str, str]],
    settings: Settings,
    lookup: Callable[[Any], Any] | None,
    jobs: int,
) -> dict[tuple[str, str], Outcome]:
    """Add the md5s as partitions and run their chains; with a cache ``lookup``, first leave
    out those the instance shows up to date."""
    from tqdm import tqdm

    from genoflow.instance import runner

    runner.quiet_warnings()
    instance = _open_instance(settings)
    by_family: dict[str, list[str]] = {family: [] for family in CHAINS}
    for md5, family in work:
        by_family[family].append(md5)
    runner.add_partitions(instance, by_family)
    done = {} if lookup is None else runner.up_to_date(instance, lookup, work)
    todo = [item for item in work if item not in done]
    with tqdm(total=len(todo), desc="genoflow", unit="file", disable=None, file=sys.stderr) as bar:
        ran = runner.run_all(todo, settings=settings, jobs=jobs, on_done=lambda _: bar.update())
    return {**done, **{(o.md5, o.family): o for o in ran}}


def _open_instance(settings: Settings) -> Any:
    """The Dagster instance of ``settings``; a ``dagster.yaml`` Dagster refuses (bad YAML, a
    storage class that cannot be imported, a config that fails its schema) is a ConfigError."""
    import yaml
    from dagster import DagsterInvalidConfigError
    from dagster._check import CheckError

    from genoflow.instance import runner

    try:
        return runner.open_instance(settings)
    except (yaml.YAMLError, DagsterInvalidConfigError, CheckError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"its dagster.yaml cannot be used: {first}",
            file=f"DAGSTER_HOME={settings.dagster_home}",
            hint="fix or remove that dagster.yaml (genoflow writes its own when there is none), "
            "or point DAGSTER_HOME at another folder",
        ) from None


def cmd_status(
    select: Sequence[str], settings: Settings, *, as_json: bool, table: Path | None = None
) -> int:
    """Print each registered source's artifacts (``--json``: the documented list shape).

    With ``table``, write them to that file as one row per (md5, asset) instead of printing
    the human table (``--json`` still prints); a table that cannot be written is one line and
    exit status 2, checked before any work where it can be (the suffix, a Parquet engine).
    """
    from genoflow.cli.table import table_format, write_status_table
    from genoflow.storage.node import open_node

    try:
        if table is not None:
            table_format(table)
    except GenoflowError as exc:
        return _refused(exc)
    if settings.registry_url is None and not settings.registry_path.exists():
        records = []
    else:
        with open_node(settings) as node:
            records = status_records(node.dm.context.registry.rows(), node, select)
    if table is not None:
        try:
            rows = write_status_table(records, table)
        except GenoflowError as exc:
            return _refused(exc)
        print(f"wrote {rows} rows to {table}", file=sys.stderr)
    if table is None or as_json:
        print_status(records, as_json=as_json)
    missing = set(select) - {r["name"] for r in records} - {r["md5"] for r in records}
    if missing:
        print(f"genoflow: not registered: {', '.join(sorted(missing))}", file=sys.stderr)
        return 1
    return 0


def _refused(exc: GenoflowError) -> int:
    """A command-line value genoflow cannot use: its one line on stderr, exit status 2."""
    print(f"genoflow: {exc}", file=sys.stderr)
    return 2


def cmd_verify(settings: Settings, *, repair: bool, full: bool) -> int:
    """Check every registered replica this node can reach; invalidate (and repair) bad ones.

    With ``repair``, a bad replica is restored from a valid one; when none is left, its chain
    runs through Dagster as ``genoflow run`` would (a derived artifact is rebuilt from its
    input, a source staged again from its manifests' URIs) and the rebuilt copy is verified.
    """
    from genoflow.cli.report import print_verify
    from genoflow.storage.node import open_node

    with open_node(settings) as node:
        outcomes = node.verify_all(repair=repair, full=full)
        chains = node.chains_to_rebuild(outcomes)
        if chains:
            outcomes = node.settle_rebuilds(outcomes, _rebuild_chains(chains, settings))
    print_verify(outcomes)
    unrepaired = [o for o in outcomes if o.problems and o.restored is None]
    return 1 if unrepaired else 0


def _rebuild_chains(
    chains: list[tuple[str, str]], settings: Settings
) -> dict[tuple[str, str], str]:
    """Run each ``(md5, family)`` chain through Dagster (``runner.run_all``, the path ``genoflow
    run`` takes); return why each chain that did not end ok failed."""
    from genoflow.instance import runner

    runner.quiet_warnings()
    instance = runner.open_instance(settings)
    by_family: dict[str, list[str]] = {family: [] for family in CHAINS}
    for md5, family in chains:
        by_family[family].append(md5)
    runner.add_partitions(instance, by_family)
    return {
        (o.md5, o.family): o.error or "not every asset was built"
        for o in runner.run_all(chains, settings=settings)
        if not o.ok
    }


def cmd_backfill(
    settings: Settings, *, families: Sequence[str] | None, dry_run: bool, jobs: int
) -> int:
    """Build every missing or stale partition not already in progress; print plan and outcome."""
    from genoflow.defs.backfill import plan, summary_rows
    from genoflow.instance import runner

    runner.quiet_warnings()
    pending = plan(_open_instance(settings), families)
    if not pending:
        print("nothing to backfill: every partition is up to date or already in progress")
        return 0
    print(_table(["family", "md5", "assets", "why"], summary_rows(pending)))
    if dry_run:
        print(f"\n{len(pending)} partitions would be built (dry run: nothing was launched)")
        return 0
    work = [(item.md5, item.family) for item in pending]
    outcomes = runner.run_all(work, settings=settings, jobs=jobs)
    rows = [
        [o.family, o.md5, " ".join(f"{a}={s}" for a, s in o.assets.items()), f"{o.seconds:.1f}"]
        for o in outcomes
    ]
    print("\n" + _table(["family", "md5", "assets", "seconds"], rows))
    print(f"\n{sum(o.ok for o in outcomes)} of {len(outcomes)} partitions built")
    print_errors(o.error for o in outcomes if o.error)
    return 0 if all(o.ok for o in outcomes) else 1


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=False)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [header, *rows]
    )


def cmd_register(paths: Sequence[Path], settings: Settings) -> int:
    """Validate the manifests, register their rows and add their md5 partitions; build nothing.

    A deployment can register everything and build only what someone asks ``genoflow serve``
    for. Invalid rows are reported; valid rows are still registered (exit status 1).
    """
    from genoflow.instance import runner
    from genoflow.storage.registry import Registry

    manifest, problems = load_manifests(paths)
    print_errors(problems)
    with Registry(settings.registry_target) as registry:
        new_rows = registry.register(manifest.rows)
    by_family: dict[str, list[str]] = {family: [] for family in CHAINS}
    for md5, rows in manifest.sources().items():
        by_family[rows[0].family].append(md5)
    runner.quiet_warnings()
    added = runner.add_partitions(_open_instance(settings), by_family)
    sources = sum(len(md5s) for md5s in by_family.values())
    print(f"registered {sources} sources ({new_rows} new rows, {added} new partitions)")
    return 1 if problems else 0


def cmd_serve(settings: Settings, *, host: str, port: int, workers: int) -> int:
    """Serve artifacts over HTTP with uvicorn until interrupted (README "Serving")."""
    import uvicorn

    from genoflow.core.settings import ServeSettings
    from genoflow.serve.app import create_app, log_config
    from genoflow.serve.protocol import uvicorn_options

    serve = ServeSettings.from_env()
    create_app(settings, serve)  # refuses a bad setting or tokens file before listening
    print(f"genoflow: serving {settings.home} on http://{host}:{port}/", file=sys.stderr)
    uvicorn.run(
        "genoflow.serve.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=False,
        log_config=log_config(),
        server_header=False,
        timeout_graceful_shutdown=30,
        **uvicorn_options(),  # an overlong request head is refused before it is buffered
    )
    return 0


def cmd_dev(extra: Sequence[str], settings: Settings) -> int:
    """Replace this process with ``dagster dev`` on genoflow's instance and code location."""
    home = ensure_dagster_home(settings)
    env = {**os.environ, "DAGSTER_HOME": str(home), "GENOFLOW_HOME": str(settings.home)}
    beside = Path(sys.executable).parent / "dagster"  # the venv's, even when not activated
    dagster = str(beside) if beside.exists() else "dagster"
    command = [dagster, "dev", "-m", "genoflow.definitions", *extra]
    print(f"DAGSTER_HOME={home}", file=sys.stderr)
    os.execvpe(command[0], command, env)
    return 0  # not reached


def entry() -> int:
    """Console-script entry: a GenoflowError becomes one line on stderr and exit status 1.

    ``genoflow run`` then ends its process at once (:func:`_exit_now`).
    """
    try:
        status = main()
    except GenoflowError as exc:
        print(f"genoflow: {exc}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        return 130
    if sys.argv[1:2] == ["run"]:
        _exit_now(status)
    return status


def _exit_now(status: int) -> None:
    """Flush the output and leave without tearing the interpreter down.

    Once Dagster and the definitions are loaded, the interpreter's own shutdown (freeing every
    module and object one by one) costs about half a CPU second, paid by every ``genoflow
    run``. Nothing is left to it: every database commit happened inside the run, the worker
    pool was joined, and the log handlers and standard streams are flushed here.
    """
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can reach it
            status = status or 1
    os._exit(status)
