"""The ASGI application of ``genoflow serve`` (Starlette, run by uvicorn).

Starlette and uvicorn already come with dagster-webserver, so the service adds no framework to
the install, and its byte-range responses are plain ASGI that the project controls; FastAPI's
OpenAPI page would document a handful of GET routes whose contracts (RFC 9110, htsget) are
specified elsewhere anyway.

Invariants:
- per-process state lives on ``app.state`` and is opened in the lifespan, closed at shutdown:
  ``settings``, ``serve`` (:class:`ServeSettings`), ``catalog`` (registry + cache), ``builds``
  (opened on the first miss, so serving built files never imports Dagster) and
  ``token_checks`` (extra ways a request may prove itself, see :mod:`genoflow.serve.middleware`);
- every route comes from one module's ``routes()``, listed in :data:`ROUTE_MODULES`;
- the layers around the routes, outermost first: access log, bounds, CORS, bearer tokens;
- in front of them all, :class:`ServeApp` answers a plain GET of a small span of a remembered
  artifact itself (:func:`genoflow.serve.files.answer_hot`), exactly as they would: same
  status, headers, body and access-log line; everything else goes through them.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Receive, Scope, Send

from genoflow.core.settings import ServeSettings, Settings
from genoflow.serve import drs, files, htsget, jobs, pages, publish, viewer
from genoflow.serve.auth import Tokens
from genoflow.serve.catalog import Catalog
from genoflow.serve.middleware import AccessLog, Bounds, RequireToken, TokenCheck
from genoflow.serve.signing import signed_url_check
from genoflow.storage.cache import Cache
from genoflow.storage.registry import Registry

# ---- Route modules: each exposes routes() -> list[Route]. Add one line per module. ----
ROUTE_MODULES = [
    drs,
    files,
    htsget,
    jobs,
    pages,
    publish,
    viewer,
]
# ---- end of route modules ----

EXPOSED = ["Content-Range", "Content-Length", "Accept-Ranges", "ETag", "Location", "Retry-After"]
ALLOWED_HEADERS = ["Range", "Authorization", "If-None-Match", "If-Range", "If-Modified-Since",
                   "If-Match", "Content-Type"]  # fmt: skip


class LazyBuilds:
    """``app.state.builds``: the :class:`genoflow.serve.builds.Builds` of this process, opened on
    first use (a miss), with the same methods.

    Args:
        settings: genoflow's settings.
        serve: the server's settings.
    """

    def __init__(self, settings: Settings, serve: ServeSettings) -> None:
        self.settings, self.serve = settings, serve
        self._builds: Any = None
        self._lock = threading.Lock()

    def _open(self) -> Any:
        with self._lock:
            if self._builds is None:
                from genoflow.serve.builds import Builds  # imports Dagster: only on a miss

                self._builds = Builds(self.settings, self.serve)
            return self._builds

    def __getattr__(self, name: str) -> Any:
        return getattr(self._open(), name)

    def close(self) -> None:
        """Close the builds if they were ever opened."""
        with self._lock:
            if self._builds is not None:
                self._builds.close()
                self._builds = None


class ServeApp(Starlette):
    """The service's Starlette application, with the hot path of range reads in front."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and await files.answer_hot(self.state, scope, send):
            return
        await super().__call__(scope, receive, send)


def _lifespan(settings: Settings, serve: ServeSettings):
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        registry = Registry(settings.registry_target)
        builds = LazyBuilds(settings, serve)
        app.state.settings, app.state.serve = settings, serve
        app.state.catalog = Catalog(registry, Cache(settings.cache_root))
        app.state.builds = builds
        try:
            yield
        finally:
            builds.close()
            registry.close()

    return lifespan


def create_app(settings: Settings | None = None, serve: ServeSettings | None = None) -> ServeApp:
    """The service's application; with no arguments its settings come from the environment.

    Raises:
        ConfigError: a setting is unusable, or the tokens file cannot be read.
    """
    settings = settings or Settings.from_env()
    serve = serve or ServeSettings.from_env()
    checks: list[TokenCheck] = []
    tokens = None if serve.tokens_file is None else Tokens(serve.tokens_file)
    stack = [
        Middleware(AccessLog),
        Middleware(Bounds),
        Middleware(
            CORSMiddleware,
            allow_origins=list(serve.origins),
            allow_methods=["GET", "HEAD", "POST", "OPTIONS"],
            allow_headers=ALLOWED_HEADERS,
            expose_headers=EXPOSED,
            max_age=86400,
        ),
    ]
    if serve.tokens_file is not None:
        stack.append(Middleware(RequireToken, tokens=tokens, checks=checks))
        checks.append(signed_url_check(serve.tokens_file))  # htsget ticket URLs
    routes = [route for module in ROUTE_MODULES for route in module.routes()]
    app = ServeApp(routes=routes, middleware=stack, lifespan=_lifespan(settings, serve))
    app.state.token_checks, app.state.tokens = checks, tokens
    return app


class BackgroundStreamHandler(logging.StreamHandler):
    """A stream handler that formats and writes from a thread of its own, every record queued
    meanwhile in one write: the event loop only queues the record.

    Records are written in the order they were emitted; :meth:`close` (run by
    :func:`logging.shutdown` at exit) writes what is queued before it returns.
    """

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._queue: queue.SimpleQueue[logging.LogRecord | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._start = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if self._writer is None:
            with self._start:
                if self._writer is None:
                    self._writer = threading.Thread(target=self._write, daemon=True)
                    self._writer.start()
        self._queue.put(record)

    def _write(self) -> None:
        while True:
            batch = [self._queue.get()]
            with contextlib.suppress(queue.Empty):
                while len(batch) < 1024:
                    batch.append(self._queue.get_nowait())
            lines = []
            for record in batch:
                if record is None:
                    self._flush_lines(lines)
                    return
                try:
                    lines.append(self.format(record) + self.terminator)
                except Exception:  # as StreamHandler.emit: logging reports it and goes on
                    self.handleError(record)
            self._flush_lines(lines)

    def _flush_lines(self, lines: list[str]) -> None:
        # Not under the handler's lock: logging.shutdown holds it while close() waits here.
        if lines:
            self.stream.write("".join(lines))
            self.stream.flush()

    def close(self) -> None:
        writer = self._writer
        if writer is not None and writer.is_alive():
            self._queue.put(None)
            writer.join(timeout=5)
        super().close()


def log_config() -> dict[str, Any]:
    """uvicorn's logging, with its access log replaced by ``genoflow.serve.access`` (which never
    shows a query string or a header)."""
    from uvicorn.config import LOGGING_CONFIG

    config = {**LOGGING_CONFIG, "loggers": dict(LOGGING_CONFIG["loggers"])}
    config["formatters"] = {
        **LOGGING_CONFIG["formatters"],
        "genoflow": {"format": "%(asctime)s %(message)s"},
    }
    config["handlers"] = {
        **LOGGING_CONFIG["handlers"],
        "genoflow": {
            "class": "genoflow.serve.app.BackgroundStreamHandler",
            "formatter": "genoflow",
            "stream": "ext://sys.stderr",
        },
    }
    config["loggers"]["uvicorn.access"] = {"handlers": [], "level": "WARNING", "propagate": False}
    config["loggers"]["genoflow.serve.access"] = {
        "handlers": ["genoflow"],
        "level": "INFO",
        "propagate": False,
    }
    return config
