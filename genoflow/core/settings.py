"""Settings from the environment, with the defaults of a single machine.

Read only when a command or a run starts — never at import time. Invariant: a variable that
holds an unusable value raises :class:`ConfigError` naming the variable, its value (a URL's
password and query hidden) and what to do; :meth:`Settings.check_writable` refuses a home
genoflow could not write in, before any command does work.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from genoflow.core.errors import GenoflowError, redact

DEFAULT_HOME = ".genoflow"
DEFAULT_SORT_MEMORY = "768M"
MAX_THREADS = 1024
DEFAULT_MAX_EXPANSION = 100.0
EXPANSION_VARIABLE = "GENOFLOW_MAX_EXPANSION"
ENGINE_VARIABLE = "GENOFLOW_ENGINE"
EXECUTOR_VARIABLE = "GENOFLOW_EXECUTOR"
MANIFESTS_VARIABLE = "GENOFLOW_MANIFESTS"
DEFAULT_MANIFESTS = "data/manifests"
DEFAULT_BACKFILL_CRON = "0 2 * * *"
DEFAULT_SENSOR_INTERVAL = 30
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class ConfigError(GenoflowError, ValueError):
    """An environment variable holds a value genoflow cannot use (a ValueError too, as
    :meth:`Settings.from_env` always raised)."""

    default_stage = "config"


def _bad(variable: str, value: str, problem: str, hint: str) -> ConfigError:
    """``[config] VARIABLE=value: problem — hint`` (the caller hides any secret in value)."""
    return ConfigError(problem, file=f"{variable}={value}", hint=hint)


@dataclass(frozen=True)
class Settings:
    """Where genoflow keeps things and how much of the machine a build may use.

    Attributes:
        home: holds ``cache/``, ``work/``, ``registry.db`` and, unless DAGSTER_HOME is set,
            the Dagster instance (``dagster/``).
        sort_memory: the total memory cap of one sort, in bytes, across all its threads.
        threads: threads one build may use.
        dagster_home: the Dagster instance folder.
        deployment: the name of the machines sharing this node's cache (``local``).
        replicas: URIs (``gs://bucket/prefix``, or a peer's ``https://host:port``) every
            published artifact is copied to.
        registry_url: a SQLAlchemy URL for a shared registry; None means the SQLite file.
        allowed_roots: folders local sources may be read from; empty means each manifest's
            own folder and below.
        max_expansion: the cap on decompressed bytes per byte of a compressed input
            (``GENOFLOW_MAX_EXPANSION``, default 100); 0 means no cap.
    """

    home: Path
    sort_memory: int
    threads: int
    dagster_home: Path
    deployment: str = "local"
    replicas: tuple[str, ...] = ()
    registry_url: str | None = None
    allowed_roots: tuple[Path, ...] = ()
    max_expansion: float = DEFAULT_MAX_EXPANSION

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``GENOFLOW_*`` variables (see the README's configuration table).

        Nothing is created or written: see :meth:`check_writable`.

        Raises:
            ConfigError: a variable holds an unusable value (a ValueError too).
        """
        env = os.environ if environ is None else environ
        home = _folder(env, "GENOFLOW_HOME", DEFAULT_HOME)
        dagster_home = _folder(env, "DAGSTER_HOME", str(home / "dagster"))
        return cls(
            home=home,
            sort_memory=_sort_memory(env.get("GENOFLOW_SORT_MEMORY") or DEFAULT_SORT_MEMORY),
            threads=_threads(env.get("GENOFLOW_THREADS")),
            dagster_home=dagster_home,
            deployment=env.get("GENOFLOW_DEPLOYMENT") or "local",
            replicas=_replicas(env.get("GENOFLOW_REPLICAS", ""), PeerSettings.from_env(env)),
            registry_url=_registry_url(env.get("GENOFLOW_REGISTRY_URL") or None),
            allowed_roots=_roots(env.get("GENOFLOW_ALLOWED_ROOTS", "")),
            max_expansion=_max_expansion(env.get("GENOFLOW_MAX_EXPANSION", "")),
        )

    def roots_for(self, manifest: str | Path) -> tuple[Path, ...]:
        """Where a local source listed in ``manifest`` may be read from."""
        return self.allowed_roots or (Path(manifest).resolve().parent,)

    def with_overrides(
        self, *, home: str | None, sort_memory: str | None, threads: int | None
    ) -> Settings:
        """Settings with any non-None value replaced (a resource's config wins over the env)."""
        changed = self
        if home:
            changed = replace(changed, home=Path(home).expanduser().resolve())
        if sort_memory:
            changed = replace(changed, sort_memory=parse_memory(sort_memory))
        if threads:
            changed = replace(changed, threads=threads)
        return changed

    @property
    def cache_root(self) -> Path:
        return self.home / "cache"

    @property
    def registry_path(self) -> Path:
        return self.home / "registry.db"

    @property
    def registry_target(self) -> str:
        """Where the registry lives: ``GENOFLOW_REGISTRY_URL``, else the SQLite file."""
        return self.registry_url or str(self.registry_path)

    def check_writable(self) -> None:
        """Refuse a home (or Dagster instance folder) genoflow could not write in.

        An existing folder is probed by creating and removing a file in it, which tells a
        read-only file system, missing permission and a full disk apart; a folder still to be
        created is judged by the nearest folder that exists. Nothing else is created.

        Raises:
            ConfigError: naming the variable, the folder and what to do.
        """
        inside = self.dagster_home == self.home / "dagster"
        for variable, folder in (
            ("GENOFLOW_HOME", self.home),
            ("GENOFLOW_HOME" if inside else "DAGSTER_HOME", self.dagster_home),
        ):
            problem = _unwritable(folder)
            if problem:
                raise _bad(variable, str(folder), problem, _WRITABLE_HINTS[variable])


_WRITABLE_HINTS = {
    "GENOFLOW_HOME": "point GENOFLOW_HOME at a folder on a writable file system that this user "
    "may write in",
    "DAGSTER_HOME": "point DAGSTER_HOME at a writable folder, or unset it to keep the instance "
    "in GENOFLOW_HOME/dagster",
}


def _unwritable(folder: Path) -> str | None:
    """Why genoflow could not write in ``folder`` (or create it), or None."""
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if existing == folder:
        try:
            handle, probe = tempfile.mkstemp(dir=folder, prefix=".genoflow-write-check.")
        except OSError as exc:
            error = exc.errno
        else:
            os.close(handle)
            os.unlink(probe)
            return None
    elif os.access(existing, os.W_OK | os.X_OK):
        return None
    else:
        error = errno.EROFS if _read_only(existing) else errno.EACCES
    where = "is" if existing == folder else f"cannot be created: {existing} is"
    if error == errno.EROFS:
        return f"{where} on a read-only file system"
    if error in (errno.ENOSPC, errno.EDQUOT):
        return f"{where} on a full disk"
    return f"{where} not writable by this user (uid {os.getuid()})"


def _read_only(folder: Path) -> bool:
    return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)


def _max_expansion(value: str) -> float:
    """``GENOFLOW_MAX_EXPANSION``: a non-negative ratio; empty means the default, 0 no cap."""
    if not value.strip():
        return DEFAULT_MAX_EXPANSION
    try:
        ratio = float(value)
    except ValueError:
        ratio = -1.0
    if not ratio >= 0 or ratio == float("inf"):
        raise _bad(
            "GENOFLOW_MAX_EXPANSION",
            value,
            "is not a ratio of 0 or more",
            f"set it to the most decompressed bytes per compressed byte an input may have "
            f"(default {DEFAULT_MAX_EXPANSION:g}; 0 means no cap), or unset it",
        )
    return ratio


def _roots(value: str) -> tuple[Path, ...]:
    parts = [part.strip() for chunk in value.split(",") for part in chunk.split(os.pathsep)]
    roots = tuple(_resolve("GENOFLOW_ALLOWED_ROOTS", part) for part in parts if part)
    for root in roots:
        if not root.is_dir():
            raise _bad(
                "GENOFLOW_ALLOWED_ROOTS",
                value,
                f"names {root}, which is not a folder",
                "list existing folders, separated by ':' or ','",
            )
    return roots


def _resolve(variable: str, value: str) -> Path:
    try:
        return Path(value).expanduser().resolve()
    except (OSError, RuntimeError) as exc:  # ~nosuchuser, a symlink loop
        raise _bad(
            variable, value, f"cannot be resolved ({exc})", "give an absolute path"
        ) from None


def _folder(env: Mapping[str, str], variable: str, default: str) -> Path:
    """The folder a variable names, resolved; refused when it or a parent is not a folder."""
    value = env.get(variable) or default
    path = _resolve(variable, value)
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                where = "is a file" if parent == path else f"lies under {parent}, a file"
                raise _bad(
                    variable,
                    value,
                    f"{where}, not a folder",
                    f"point {variable} at a folder (it is created if missing)",
                )
            break
    return path


def _threads(value: str | None) -> int:
    if not value:
        return os.cpu_count() or 1
    text = value.strip()
    if not text.isdigit() or not 1 <= int(text) <= MAX_THREADS:
        raise _bad(
            "GENOFLOW_THREADS",
            value,
            f"is not a whole number from 1 to {MAX_THREADS}",
            f"set it to the cores one build may use (this machine has {os.cpu_count()}), "
            "or unset it",
        )
    return int(text)


def _sort_memory(value: str) -> int:
    try:
        size = parse_memory(value)
    except ValueError:
        raise _bad(
            "GENOFLOW_SORT_MEMORY",
            value,
            "is not a positive memory size",
            f"use a number of bytes with K, M, G or T, e.g. {DEFAULT_SORT_MEMORY} or 2G",
        ) from None
    total = _physical_memory()
    if total and size > total:
        raise _bad(
            "GENOFLOW_SORT_MEMORY",
            value,
            f"is more than this machine's {total >> 20} MiB of memory",
            "set a cap a sort can really have; sorting spills to disk beyond it",
        )
    return size


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # not every platform says
        return None


def _replicas(value: str, peers: PeerSettings | None = None) -> tuple[str, ...]:
    """``GENOFLOW_REPLICAS``: ``gs://bucket[/prefix]`` and peers' ``https://host[:port][/path]``
    (plain ``http://`` only for a host ``GENOFLOW_PEER_INSECURE_HOSTS`` names)."""
    replicas = tuple(uri.strip() for uri in value.split(",") if uri.strip())
    for uri in replicas:
        if uri.startswith(("https://", "http://")):
            _check_peer(uri, value, peers or PeerSettings())
            continue
        bucket = uri.removeprefix("gs://").split("/", 1)[0]
        if not uri.startswith("gs://") or not bucket or "?" in uri:
            raise _bad(
                "GENOFLOW_REPLICAS",
                redact(value),
                f"entry {uri.split('?', 1)[0]!r} is not gs://bucket[/prefix] or https://host[:port]",
                "list gs:// prefixes or peers' https:// base URLs separated by ',', or unset it",
            )
    return replicas


def _check_peer(uri: str, value: str, peers: PeerSettings) -> None:
    """A peer's base URL: no query, no credentials; plain http only for an insecure host."""
    shown = redact(uri)
    match = re.fullmatch(r"(https?)://([^\s/?#@]+)(/[^\s?#]*)?", uri)
    if not match:
        raise _bad(
            "GENOFLOW_REPLICAS",
            redact(value),
            f"entry {shown!r} is not a peer's base URL (https://host[:port][/path])",
            "write the peer's base URL without a query or credentials (its token goes in "
            "GENOFLOW_PEER_TOKEN)",
        )
    if match.group(1) == "http" and not peers.insecure(match.group(2)):
        raise _bad(
            "GENOFLOW_REPLICAS",
            redact(value),
            f"entry {shown!r} is plain http, which would send the peer's token in clear",
            f"use https, or name {match.group(2)} in GENOFLOW_PEER_INSECURE_HOSTS (for tests "
            "on loopback)",
        )


@dataclass(frozen=True)
class PeerSettings:
    """How this node talks to peers' ``genoflow serve`` named in ``GENOFLOW_REPLICAS``.

    Attributes:
        token: the bearer token sent to every peer, ``GENOFLOW_PEER_TOKEN`` (a ``read`` token
            pulls; pushing needs a ``publish`` one); never shown in a repr, log or error.
        insecure_hosts: ``host[:port]`` (lower-case) allowed over plain http,
            ``GENOFLOW_PEER_INSECURE_HOSTS`` (comma-separated), for tests on loopback.
    """

    token: str | None = field(default=None, repr=False)
    insecure_hosts: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PeerSettings:
        """Read ``GENOFLOW_PEER_TOKEN`` and ``GENOFLOW_PEER_INSECURE_HOSTS``.

        Raises:
            ConfigError: the token holds whitespace (the variable is not shown).
        """
        env = _environ(environ)
        token = (env.get("GENOFLOW_PEER_TOKEN") or "").strip() or None
        if token is not None and any(char.isspace() or not char.isprintable() for char in token):
            raise _bad(
                "GENOFLOW_PEER_TOKEN",
                "…",
                "holds whitespace or a control character, so it cannot be a bearer token",
                "set it to one token from the peer's GENOFLOW_SERVE_TOKENS file",
            )
        hosts = env.get("GENOFLOW_PEER_INSECURE_HOSTS") or ""
        insecure = frozenset(h.strip().lower() for h in hosts.split(",") if h.strip())
        return cls(token=token, insecure_hosts=insecure)

    def insecure(self, netloc: str) -> bool:
        """Whether plain http is allowed to ``host[:port]`` (its host alone may be listed)."""
        netloc = netloc.lower()
        host = netloc.rsplit(":", 1)[0] if not netloc.endswith("]") else netloc
        return netloc in self.insecure_hosts or host in self.insecure_hosts


def _registry_url(value: str | None) -> str | None:
    """A SQLAlchemy URL whose dialect and driver are installed; a SQLite file's folder must
    exist (the database itself is created on first use)."""
    if value is None:
        return None
    import sqlalchemy as sa  # here, not at import time: only a set URL needs it

    hint = (
        "set a SQLAlchemy URL such as postgresql+psycopg2://user@host/genoflow, "
        "or unset it for the SQLite file in GENOFLOW_HOME"
    )
    try:
        url = sa.engine.make_url(value)
    except (sa.exc.ArgumentError, ValueError):
        shown = value.split("://", 1)[0] + "://…" if "://" in value else redact(value)
        raise _bad("GENOFLOW_REGISTRY_URL", shown, "is not a URL", hint) from None
    shown = url.render_as_string(hide_password=True).split("?", 1)[0]
    try:
        url.get_dialect().import_dbapi()
    except (sa.exc.NoSuchModuleError, ImportError) as exc:
        raise _bad(
            "GENOFLOW_REGISTRY_URL",
            shown,
            f"needs a database driver that is not installed ({exc})",
            hint,
        ) from None
    if url.get_backend_name() == "sqlite":
        _check_sqlite(url.database, shown, hint)
    return value


def _check_sqlite(database: str | None, shown: str, hint: str) -> None:
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        raise _bad(
            "GENOFLOW_REGISTRY_URL",
            shown,
            "is an in-memory database, forgotten when each command ends",
            "name a file: sqlite:////absolute/path/registry.db",
        )
    folder = Path(database).expanduser().resolve().parent
    if not folder.is_dir():
        raise _bad("GENOFLOW_REGISTRY_URL", shown, f"names a file in {folder}, not a folder", hint)


def parse_memory(value: str | int) -> int:
    """Parse a size such as ``768M``, ``2G`` or ``1048576`` into bytes.

    Raises:
        ValueError: when the value is not a positive size.
    """
    if isinstance(value, int):
        size = value
    else:
        match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)i?B?\s*", value.upper())
        if not match:
            raise ValueError(f"not a memory size: {value!r} (use e.g. 768M or 2G)")
        size = int(match.group(1)) * _UNITS[match.group(2)]
    if size <= 0:
        raise ValueError(f"memory size must be positive, got {value!r}")
    return size


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def engine_name(environ: Mapping[str, str] | None = None) -> str:
    """``GENOFLOW_ENGINE`` as written, lower-cased (``auto`` when unset); the processors'
    engine module says which values it takes."""
    return _environ(environ).get(ENGINE_VARIABLE, "auto").strip().lower() or "auto"


def executor_variable(environ: Mapping[str, str] | None = None) -> str:
    """``GENOFLOW_EXECUTOR`` normalised (``in-process`` → ``in_process``), or ``""`` when unset;
    the definitions' executor module says which values it takes."""
    return (_environ(environ).get(EXECUTOR_VARIABLE) or "").strip().lower().replace("-", "_")


def manifests_variable(environ: Mapping[str, str] | None = None) -> str:
    """``GENOFLOW_MANIFESTS``: the watched manifest folder or ``gs://`` prefix."""
    return _environ(environ).get(MANIFESTS_VARIABLE) or DEFAULT_MANIFESTS


def automation_variables(environ: Mapping[str, str] | None = None) -> tuple[str, int]:
    """``GENOFLOW_BACKFILL_CRON`` (checked as a cron string where Dagster is loaded) and
    ``GENOFLOW_SENSOR_INTERVAL`` in seconds.

    Raises:
        ValueError: the interval is not whole seconds ≥ 1.
    """
    env = _environ(environ)
    cron = (env.get("GENOFLOW_BACKFILL_CRON") or DEFAULT_BACKFILL_CRON).strip()
    interval = env.get("GENOFLOW_SENSOR_INTERVAL") or str(DEFAULT_SENSOR_INTERVAL)
    if not interval.isdigit() or int(interval) < 1:
        raise ValueError(f"GENOFLOW_SENSOR_INTERVAL must be whole seconds ≥ 1, got {interval!r}")
    return cron, int(interval)


@dataclass(frozen=True)
class ServeSettings:
    """How ``genoflow serve`` answers and builds (the README's configuration table).

    Attributes:
        origins: CORS origins allowed, ``GENOFLOW_SERVE_ORIGINS`` (comma-separated, default ``*``).
        tokens_file: a file of bearer tokens, one per line, ``GENOFLOW_SERVE_TOKENS``; None
            serves without authentication.
        builders: build processes the server runs at once, ``GENOFLOW_SERVE_BUILDERS`` (1).
        job_timeout: seconds a build may run before it is ended and its job failed,
            ``GENOFLOW_JOB_TIMEOUT`` (21600); 0 means no cap.
        retry_backoff: seconds after a failed build before a request may start another,
            ``GENOFLOW_SERVE_RETRY_BACKOFF`` (60).
        htsget_wait: seconds an htsget request for a missing artifact waits for its build
            before answering 503, ``GENOFLOW_HTSGET_WAIT`` (20).
        dagster_url: the Dagster UI's base URL, for links from jobs, ``GENOFLOW_DAGSTER_URL``.
        public_url: the server's own base URL as clients reach it, ``GENOFLOW_PUBLIC_URL``; it
            puts viewer links in materialization metadata.
    """

    origins: tuple[str, ...] = ("*",)
    tokens_file: Path | None = None
    builders: int = 1
    job_timeout: float = 21600.0
    retry_backoff: float = 60.0
    htsget_wait: float = 20.0
    dagster_url: str | None = None
    public_url: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServeSettings:
        """Read the ``GENOFLOW_SERVE_*``, ``GENOFLOW_JOB_TIMEOUT``, ``GENOFLOW_HTSGET_WAIT``,
        ``GENOFLOW_DAGSTER_URL`` and ``GENOFLOW_PUBLIC_URL`` variables.

        Raises:
            ConfigError: a variable holds an unusable value.
        """
        env = _environ(environ)
        origins = tuple(o.strip() for o in (env.get("GENOFLOW_SERVE_ORIGINS") or "*").split(","))
        tokens = env.get("GENOFLOW_SERVE_TOKENS") or None
        return cls(
            origins=tuple(origin for origin in origins if origin) or ("*",),
            tokens_file=_resolve("GENOFLOW_SERVE_TOKENS", tokens) if tokens else None,
            builders=int(_seconds(env, "GENOFLOW_SERVE_BUILDERS", 1, low=1, high=64, whole=True)),
            job_timeout=_seconds(env, "GENOFLOW_JOB_TIMEOUT", 21600.0, low=0),
            retry_backoff=_seconds(env, "GENOFLOW_SERVE_RETRY_BACKOFF", 60.0, low=0),
            htsget_wait=_seconds(env, "GENOFLOW_HTSGET_WAIT", 20.0, low=0, high=3600),
            dagster_url=_base_url(env, "GENOFLOW_DAGSTER_URL"),
            public_url=_base_url(env, "GENOFLOW_PUBLIC_URL"),
        )


def _seconds(
    env: Mapping[str, str],
    variable: str,
    default: float,
    *,
    low: float,
    high: float = 10**7,
    whole: bool = False,
) -> float:
    value = (env.get(variable) or "").strip()
    if not value:
        return default
    try:
        number = int(value) if whole else float(value)
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        kind = "a whole number" if whole else "a number of seconds"
        raise _bad(variable, value, f"is not {kind} from {low:g} to {high:g}", "fix it or unset it")
    return number


def _base_url(env: Mapping[str, str], variable: str) -> str | None:
    value = (env.get(variable) or "").strip()
    if not value:
        return None
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
        raise _bad(
            variable,
            redact(value),
            "is not an http(s) base URL without a query",
            "set it to e.g. http://host:port, or unset it",
        )
    return value.rstrip("/")


@dataclass(frozen=True)
class DrsSettings:
    """How ``drs://`` sources are resolved (the README's configuration table).

    Attributes:
        token: the bearer token sent to every DRS server without one of its own,
            ``GENOFLOW_DRS_TOKEN``.
        tokens: ``host[:port]`` → bearer token, ``GENOFLOW_DRS_TOKENS``
            (``host[:port]=token,...``); a ``host:port`` entry wins over a bare ``host``.
        insecure_hosts: ``host[:port]`` a DRS server (or an access URL) may be reached on over
            plain http, ``GENOFLOW_DRS_INSECURE_HOSTS`` (comma-separated); a bare host allows
            every port of it.
        prefixes: compact-identifier prefix → DRS server base URL, ``GENOFLOW_DRS_PREFIXES``
            (``prefix=https://host[:port][/path],...``); ``drs://prefix:accession`` is then
            resolved at ``{base}/ga4gh/drs/v1/objects/{accession}``.
        concurrency: how many ``drs://`` ids one manifest read resolves at once,
            ``GENOFLOW_DRS_CONCURRENCY`` (1 to 256, default 16).
    """

    token: str | None = field(default=None, repr=False)
    tokens: Mapping[str, str] = field(default_factory=dict, repr=False)
    insecure_hosts: frozenset[str] = frozenset()
    prefixes: Mapping[str, str] = field(default_factory=dict)
    concurrency: int = 16

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DrsSettings:
        """Read the ``GENOFLOW_DRS_*`` variables; a token is never shown in an error.

        Raises:
            ConfigError: a variable holds an unusable value.
        """
        env = _environ(environ)
        tokens = _pairs(env, "GENOFLOW_DRS_TOKENS", secret=True)
        prefixes = _pairs(env, "GENOFLOW_DRS_PREFIXES", secret=False)
        for prefix, base in prefixes.items():
            if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", prefix) or not re.fullmatch(
                r"https?://[^\s/?#@]+(/[^\s?#]*)?", base
            ):
                raise _bad(
                    "GENOFLOW_DRS_PREFIXES",
                    redact(f"{prefix}={base}"),
                    "needs lower-case prefixes mapped to http(s) base URLs without a query",
                    "set it to e.g. myprefix=https://drs.example.org,other=https://host:8443",
                )
        insecure = env.get("GENOFLOW_DRS_INSECURE_HOSTS") or ""
        return cls(
            token=(env.get("GENOFLOW_DRS_TOKEN") or "").strip() or None,
            tokens=tokens,
            insecure_hosts=frozenset(h.strip().lower() for h in insecure.split(",") if h.strip()),
            prefixes={prefix: base.rstrip("/") for prefix, base in prefixes.items()},
            concurrency=int(
                _seconds(env, "GENOFLOW_DRS_CONCURRENCY", 16, low=1, high=256, whole=True)
            ),
        )

    def token_for(self, host: str, port: int | None) -> str | None:
        """The bearer token for a DRS server at ``host`` (and ``port``), if any."""
        host = host.lower()
        return self.tokens.get(f"{host}:{port}") or self.tokens.get(host) or self.token

    def allows_http(self, host: str, port: int | None) -> bool:
        """Whether ``host`` (and ``port``) may be reached over plain http."""
        host = host.lower()
        return host in self.insecure_hosts or f"{host}:{port}" in self.insecure_hosts


def _pairs(env: Mapping[str, str], variable: str, *, secret: bool) -> dict[str, str]:
    """``key=value,...`` as a dict (keys lower-cased); a secret value is never shown."""
    pairs: dict[str, str] = {}
    for item in (env.get(variable) or "").split(","):
        if not item.strip():
            continue
        key, sign, value = item.strip().partition("=")
        if not sign or not key.strip() or not value.strip():
            shown = f"{key}=…" if secret else item.strip()
            problem = "needs comma-separated key=value pairs"
            raise _bad(variable, shown, problem, "fix it or unset it")
        pairs[key.strip().lower()] = value.strip()
    return pairs


DAEMON_RUNS_VARIABLE = "GENOFLOW_DAEMON_RUNS"
MAX_DAEMON_RUNS = 256


def daemon_runs(environ: Mapping[str, str] | None = None) -> int:
    """``GENOFLOW_DAEMON_RUNS``: how many runs ``dagster-daemon`` keeps in flight on an embedded
    instance (its run queue's ``max_concurrent_runs``); each run gets that share of
    ``GENOFLOW_THREADS`` and ``GENOFLOW_SORT_MEMORY``. Default: this machine's cores.

    Raises:
        ConfigError: not a whole number from 1 to :data:`MAX_DAEMON_RUNS`.
    """
    value = (_environ(environ).get(DAEMON_RUNS_VARIABLE) or "").strip()
    if not value:
        return os.cpu_count() or 1
    if not value.isdigit() or not 1 <= int(value) <= MAX_DAEMON_RUNS:
        raise _bad(
            DAEMON_RUNS_VARIABLE,
            value,
            f"is not a whole number from 1 to {MAX_DAEMON_RUNS}",
            f"set it to the runs the daemon may build at once (this machine has "
            f"{os.cpu_count()} cores), or unset it",
        )
    return int(value)
