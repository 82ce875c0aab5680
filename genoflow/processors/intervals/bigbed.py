"""bigBed → BED conversion through pybigtools.

Invariant: the BED written carries every field of every bigBed record (chrom, start, end and the
``rest`` columns, tab-joined), or the conversion fails and ``dst`` does not exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import pybigtools

from genoflow.core.errors import ProcessingError
from genoflow.processors import native_stderr
from genoflow.processors.limits import ExpansionGuard

_QUOTED = re.compile(r'"[^"]*"')
_STAGE = "convert"
_GUARD_EVERY = 1 << 14  # records between two looks at the BED's size


def bigbed_to_bed(
    src: str | Path, dst: str | Path, *, name: str, guard: ExpansionGuard | None = None
) -> int:
    """Write the records of bigBed ``src`` as BED lines into ``dst`` (unsorted across contigs).

    pybigtools (0.3) hands back each record's extra fields split on whitespace, so a field that
    contains a space, or an empty field, cannot be told apart from field boundaries. When the
    file's autoSql declares its fields, a record whose field count disagrees fails the
    conversion rather than shifting columns silently.

    Args:
        src: the bigBed file.
        dst: the BED file to write (replaced if present).
        name: the user-facing file name for error messages.
        guard: the expansion cap the BED written counts against (bigBed data is compressed).

    Returns:
        The number of records written.

    Raises:
        ProcessingError: when ``src`` is not a readable bigBed, a record cannot be converted, or
            the BED grows beyond the expansion cap.
    """
    src, dst = Path(src), Path(dst)
    failure: BaseException | None = None
    written = 0
    # pybigtools prints its own "Error when opening: <path>" (and Rust panics) on descriptor 2,
    # naming a staged copy the user never listed: keep those back; the error below says it all.
    with native_stderr.capture(dst.parent, drop=_from_pybigtools):
        try:
            written = _convert(src, dst, name=name, guard=guard)
        except BaseException as exc:  # a Rust panic is a BaseException, not an Exception
            dst.unlink(missing_ok=True)
            failure = exc
    if failure is None:
        return written
    if isinstance(failure, ProcessingError) or not _is_rust_panic(failure):
        raise failure
    damaged = f"not a readable bigBed file: pybigtools failed on its data ({failure})"
    raise _error(damaged, name) from failure


def _convert(src: Path, dst: Path, *, name: str, guard: ExpansionGuard | None) -> int:
    try:
        reader = pybigtools.open(str(src))
    except (pybigtools.BBIReadError, ValueError) as exc:  # ValueError: no such file
        raise _error(f"not a readable bigBed file: {exc}", name) from exc
    try:
        if not reader.is_bigbed:
            raise _error("is a bigWig, not a bigBed", name)
        extra = _declared_extra_fields(reader.sql())
        return _write_records(reader, dst, extra=extra, name=name, guard=guard)
    finally:
        reader.close()


def _from_pybigtools(line: str) -> bool:
    """pybigtools' own stderr: its open failures and Rust panic reports with their backtraces."""
    stripped = line.strip()
    return (
        stripped.startswith(("Error when opening:", "thread '", "stack backtrace:", "note: "))
        or stripped.startswith("at ")
        or stripped.split(":", 1)[0].isdigit()
        or stripped.startswith("called `")
    )


def _is_rust_panic(error: BaseException) -> bool:
    """pyo3 raises ``pyo3_runtime.PanicException`` when the Rust side panics on bad data."""
    return type(error).__module__ == "pyo3_runtime"


def _write_records(
    reader: pybigtools.BBIReader,
    dst: Path,
    *,
    extra: int | None,
    name: str,
    guard: ExpansionGuard | None,
) -> int:
    written = 0
    with open(dst, "wb") as out:
        for chrom in reader.chroms():
            prefix = chrom.encode("utf-8", "surrogateescape") + b"\t"
            for record in reader.records(chrom):
                start, end, *rest = record
                if extra is not None and len(rest) != extra:
                    raise _error(
                        f"record {chrom}:{start}-{end} has {len(rest)} extra fields where the "
                        f"autoSql declares {extra}: a field holds a space or is empty, which "
                        "pybigtools cannot convert faithfully",
                        name,
                    )
                fields = [str(start), str(end), *rest]
                out.write(prefix + "\t".join(fields).encode("utf-8", "surrogateescape") + b"\n")
                written += 1
                if guard is not None and not written % _GUARD_EVERY:
                    guard.reached(out.tell())
        if guard is not None:
            guard.reached(out.tell())
    return written


def _declared_extra_fields(autosql: str) -> int | None:
    """Fields beyond chrom/start/end that the autoSql declares, or None when it says nothing.

    A writer that records no autoSql (pybigtools' own default) leaves the generic ``bed3``
    table, which says nothing about the extra fields actually stored.
    """
    declared = _QUOTED.sub("", autosql).count(";")
    return declared - 3 if declared > 3 else None


def _error(message: str, name: str) -> ProcessingError:
    hint = "check that the file is a valid bigBed, or convert it with bigBedToBed"
    return ProcessingError(message, file=name, stage=_STAGE, hint=hint)
