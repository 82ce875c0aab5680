"""Run command-line tools as children with pipefail semantics.

Invariant: a :class:`Child` is always killed (if still running) and reaped when its ``with`` block
ends, whatever happened inside; a non-zero exit status of any child becomes a
:class:`~genoflow.core.errors.ProcessingError` naming the file, the stage, the tool and what the
tool wrote on stderr. Stderr goes to an anonymous temporary file, so a chatty tool can never block.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from genoflow.core.errors import ProcessingError

__all__ = ["STDERR_LIMIT", "Child", "pump", "write_all"]

STDERR_LIMIT = 2000
"""Bytes of a tool's stderr kept for an error message."""

_PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = 1031  # Linux fcntl: larger pipes mean fewer wake-ups between the two ends


class Child:
    """One running tool: ``with Child(argv, ...) as child: ...; child.finish()``.

    Args:
        argv: the command line.
        what: how errors name the tool and step, e.g. ``"bgzip"`` or ``"samtools sort"``.
        name: the file's user-facing name, used in errors.
        stage: the stage, used in errors.
        scratch: folder for the anonymous stderr file.
        hint: what to tell the user on failure (computed on failure when callable).
        stdin, stdout: as for :class:`subprocess.Popen` (a file, a descriptor or ``PIPE``).
        env: extra environment variables.
    """

    def __init__(
        self,
        argv: list[str],
        *,
        what: str,
        name: str,
        stage: str,
        scratch: Path,
        hint: str | Callable[[], str] | None = None,
        stdin: Any = None,
        stdout: Any = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.argv = argv
        self.what = what
        self.name = name
        self.stage = stage
        self.hint = hint
        self._scratch = scratch
        self._stdin, self._stdout = stdin, stdout
        self._env = {**os.environ, **env} if env else None

    def __enter__(self) -> Child:
        self._stderr = tempfile.TemporaryFile(dir=self._scratch)
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=self._stdin,
                stdout=self._stdout,
                stderr=self._stderr,
                env=self._env,
            )
        except OSError as exc:
            self._stderr.close()
            raise ProcessingError(
                f"cannot run {self.what}: {exc}", file=self.name, stage=self.stage
            ) from exc
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                _widen(pipe)
        return self

    @property
    def stdin(self) -> IO[bytes]:
        assert self.proc.stdin is not None, "started without stdin=PIPE"
        return self.proc.stdin

    @property
    def stdout(self) -> IO[bytes]:
        assert self.proc.stdout is not None, "started without stdout=PIPE"
        return self.proc.stdout

    def failed(self) -> bool:
        """Whether the tool has already exited with a non-zero status."""
        code = self.proc.poll()
        return code is not None and code != 0

    def finish(self) -> str:
        """Wait for the tool; return its stderr, or raise its failure (pipefail semantics)."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        if self.proc.wait() != 0:
            raise self.failure()
        return self.messages()

    def messages(self) -> str:
        """What the tool wrote on stderr so far (at most :data:`STDERR_LIMIT` bytes)."""
        self._stderr.seek(0)
        return self._stderr.read(STDERR_LIMIT).decode("utf-8", "replace").strip()

    def failure(self) -> ProcessingError:
        """The error for a tool that failed: its exit status and its own message."""
        code = self.proc.wait()
        said = self.messages() or "no message"
        hint = self.hint() if callable(self.hint) else self.hint
        return ProcessingError(
            f"{self.what} failed (exit status {code}): {said}",
            file=self.name,
            stage=self.stage,
            hint=hint,
        )

    def __exit__(self, *exc_info: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        for pipe in (self.proc.stdin, self.proc.stdout):
            # The tool is gone: its status and message are reported where it failed.
            if pipe is not None:
                with contextlib.suppress(BrokenPipeError):
                    pipe.close()
        self.proc.wait()
        self._stderr.close()


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte to a descriptor (a pipe accepts at most its capacity per call)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def pump(
    source: IO[bytes], sink: Callable[[bytes], None], *, chunk: int = _PIPE_SIZE, count: bool = True
) -> int:
    """Copy a pipe to ``sink`` a chunk at a time; return the newlines seen (records copied).

    With ``count=False`` (the sink counts for itself) the newlines are not counted: 0.
    """
    fd = source.fileno()
    lines = 0
    while data := os.read(fd, chunk):
        if count:
            lines += data.count(b"\n")
        sink(data)
    return lines


def _widen(pipe: IO[bytes]) -> None:
    import fcntl

    # Best effort: the system may cap pipe sizes below 1 MiB, which only costs speed.
    with contextlib.suppress(OSError):
        fcntl.fcntl(pipe.fileno(), _F_SETPIPE_SZ, _PIPE_SIZE)
