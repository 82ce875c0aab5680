"""What the two ways of sorting an interval file share: the job, GNU sort, the output sink.

Invariant: GNU sort always runs with ``LC_ALL=C``, its memory cap (``-S``) and its spill folder
(``-T``) inside the job's private scratch folder, and is killed and reaped on every path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genoflow.processors.commands import Child
from genoflow.processors.engine import Tools
from genoflow.processors.intervals.bgzf import Sink, open_sink
from genoflow.processors.intervals.records import RecordReader

__all__ = ["SortJob", "SortStats"]


@dataclass
class SortStats:
    """What one sort saw; reported as the result's metadata.

    Attributes:
        path: ``direct`` (records streamed from the file into sort) or ``streamed`` (every line
            read and re-keyed by Python first).
    """

    path: str
    records: int = 0
    max_end: int = 0
    header_lines: int = 0
    line_skip: int = 0
    blank_lines: int = 0
    fasta_lines: int = 0
    moved_lines: int = 0
    crlf_lines: int = 0


@dataclass(frozen=True)
class SortJob:
    """One sort of one file.

    Attributes:
        reader: the file's record reader (its format, and its VCF header state).
        tools: the engine that compresses.
        out: the BGZF file to write.
        scratch: private folder for spill files and temporary copies.
        memory: GNU sort's buffer, in bytes.
        threads: GNU sort's ``--parallel`` and the compressor's threads.
    """

    reader: RecordReader
    tools: Tools
    out: Path
    scratch: Path
    memory: int
    threads: int

    @property
    def name(self) -> str:
        return self.reader.name

    def sort_argv(self, keys: list[str]) -> list[str]:
        """GNU sort's command line with the given key options."""
        return [
            "sort",
            *keys,
            "-S",
            f"{self.memory}b",
            "--parallel",
            str(self.threads),
            "-T",
            str(self.scratch),
        ]

    def gnu_sort(self, keys: list[str], *, stdin: Any, stdout: Any) -> Child:
        """GNU sort as a child (enter it with ``with``)."""
        return Child(
            self.sort_argv(keys),
            what="GNU sort",
            name=self.name,
            stage="sort",
            scratch=self.scratch,
            hint="check free space and permissions in the work folder",
            stdin=stdin,
            stdout=stdout,
            env={"LC_ALL": "C"},
        )

    @contextlib.contextmanager
    def sink(self) -> Iterator[Sink]:
        """The BGZF writer for :attr:`out`; removed again unless the block completes."""
        with open_sink(
            self.out,
            self.tools,
            threads=self.threads,
            name=self.name,
            stage="sort",
            scratch=self.scratch,
        ) as sink:
            yield sink
