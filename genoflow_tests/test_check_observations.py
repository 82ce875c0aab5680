"""Issue 15: the checks prove from what the build observed, and still catch every fault.

Each chain is built through a real cache in this process, so its artifacts are sealed and the
checks rest on the build's observations (the md5 staging computed over the bytes it wrote, the
index htslib wrote by reading the whole output) plus one region query per contig. Faults are
injected in two places: inside a build (a processor replaced on its module, as the families look
it up at call time), where the check must catch them from the observations; and in a published
file, where the seal breaks and the check re-reads in full.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pysam
import pytest

from genoflow.build import steps
from genoflow.core.errors import ProcessingError
from genoflow.core.settings import Settings
from genoflow.processors import intervals
from genoflow.processors.base import Result
from genoflow.storage.cache import Artifact, Cache
from genoflow.storage.registry import SourceRow

BED = "chr2\t1\t9\nchr1\t5\t10\nchr1\t1\t3\nchr3\t7\t8\nchr1\t20\t30\n"


def _home(tmp_path: Path, text: str = BED) -> tuple[Cache, Settings, list[SourceRow]]:
    data = text.encode()
    src = tmp_path / "in.bed"
    src.write_bytes(data)
    md5 = hashlib.md5(data).hexdigest()
    environ = {
        "GENOFLOW_HOME": str(tmp_path / "home"),
        "GENOFLOW_SORT_MEMORY": "64M",
        "GENOFLOW_THREADS": "1",
        "GENOFLOW_ALLOWED_ROOTS": str(tmp_path),
    }
    settings = Settings.from_env(environ)
    row = SourceRow(md5, "in.bed", str(src), "bed", "intervals", len(data), "m.tsv", 2, {})
    return Cache(settings.cache_root), settings, [row]


def _publish(cache: Cache, built: Artifact | steps.Built) -> Artifact:
    assert isinstance(built, steps.Built)
    return steps.publish(cache, built)


def _chain(tmp_path: Path) -> tuple[Artifact, Artifact, Artifact, list[SourceRow]]:
    cache, settings, rows = _home(tmp_path)
    source = _publish(cache, steps.build_source(cache, rows, md5=rows[0].md5, settings=settings))
    sorted_ = _publish(cache, steps.build_sorted(cache, source, settings))
    index = _publish(cache, steps.build_index(cache, sorted_, settings))
    return source, sorted_, index, rows


def _flip(path: Path) -> None:
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _rewrite(gz: Path, lines: list[str], *, index: bool = True) -> None:
    """Replace a sorted BGZF file by ``lines`` and (``index``) index it again, as a build would."""
    plain = gz.with_suffix("")
    plain.write_text("".join(lines))
    gz.unlink()
    pysam.tabix_compress(str(plain), str(gz))
    plain.unlink()
    if not index:
        return
    for found in (Path(f"{gz}.tbi"), Path(f"{gz}.csi")):
        found.unlink(missing_ok=True)
    pysam.tabix_index(str(gz), preset="bed", force=True, keep_original=True)


def _lines(gz: Path) -> list[str]:
    return list(pysam.BGZFile(str(gz)).read().decode().splitlines(keepends=True))


def test_a_fresh_chain_passes_every_check_from_what_its_build_observed(tmp_path: Path) -> None:
    cache, settings, rows = _home(tmp_path)
    source = _publish(cache, steps.build_source(cache, rows, md5=rows[0].md5, settings=settings))
    proofs = [steps.prove_source(source, rows)]
    sorted_ = _publish(cache, steps.build_sorted(cache, source, settings))
    proofs.append(steps.prove_sorted(sorted_))
    index = _publish(cache, steps.build_index(cache, sorted_, settings))
    proofs.append(steps.prove_index(index))
    assert [(p.problem, p.how) for p in proofs] == [("", "observed")] * 3
    assert proofs[2].measured["per_contig"] == {"chr1": 3, "chr2": 1, "chr3": 1}
    assert source.marker.details["observed"]["md5"] == {source.main.name: rows[0].md5}
    assert source.marker.entries[0].md5 == rows[0].md5
    # Linking the sorted file into the index folder changed its ctime: no longer sealed.
    assert steps.prove_sorted(sorted_).how == "re-read"


def test_a_flipped_byte_in_the_staged_source_breaks_the_seal_and_the_full_rehash_catches_it(
    tmp_path: Path,
) -> None:
    source, _, _, rows = _chain(tmp_path)
    _flip(source.main)
    proof = steps.prove_source(source, rows)
    assert proof.how == "re-read"
    assert "hashes to" in proof.problem and "not to the source's md5" in proof.problem


def test_a_source_loaded_in_another_process_is_rehashed_in_full(tmp_path: Path) -> None:
    source, _, _, rows = _chain(tmp_path)
    reloaded = Cache(source.path.parents[4]).lookup(source.key)
    assert reloaded is not None
    steps.observed._SEALS.clear()  # what a later run's process knows of this artifact
    proof = steps.prove_source(reloaded, rows)
    assert (proof.problem, proof.how) == ("", "re-read")


def test_a_record_dropped_inside_the_sort_fails_the_sorted_check_from_the_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = intervals.sort_intervals

    def dropping(*args: object, **kwargs: object) -> Result:
        result = real(*args, **kwargs)
        _rewrite(result.files[0], _lines(result.files[0])[:-1])
        return result

    monkeypatch.setattr(intervals, "sort_intervals", dropping)
    cache, settings, rows = _home(tmp_path)
    source = _publish(cache, steps.build_source(cache, rows, md5=rows[0].md5, settings=settings))
    sorted_ = _publish(cache, steps.build_sorted(cache, source, settings))
    proof = steps.prove_sorted(sorted_)
    assert proof.how == "observed"
    assert proof.problem == "the index holds 4 records, the build read 5"


def test_a_pair_of_contig_blocks_swapped_inside_the_sort_fails_the_sorted_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = intervals.sort_intervals

    def swapping(*args: object, **kwargs: object) -> Result:
        result = real(*args, **kwargs)
        lines = _lines(result.files[0])  # chr1 ×3, chr2, chr3: chr2 and chr3 trade places
        _rewrite(result.files[0], [*lines[:3], lines[4], lines[3]])
        return result

    monkeypatch.setattr(intervals, "sort_intervals", swapping)
    cache, settings, rows = _home(tmp_path)
    source = _publish(cache, steps.build_source(cache, rows, md5=rows[0].md5, settings=settings))
    sorted_ = _publish(cache, steps.build_sorted(cache, source, settings))
    proof = steps.prove_sorted(sorted_)
    assert proof.how == "observed"
    assert proof.problem == "contig 'chr2' after 'chr3'"


def test_a_pair_swapped_within_a_contig_inside_the_sort_cannot_be_indexed_so_nothing_publishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = intervals.sort_intervals

    def swapping(*args: object, **kwargs: object) -> Result:
        result = real(*args, **kwargs)
        lines = _lines(result.files[0])
        _rewrite(result.files[0], [lines[1], lines[0], *lines[2:]])
        return result

    monkeypatch.setattr(intervals, "sort_intervals", swapping)
    cache, settings, rows = _home(tmp_path)
    source = _publish(cache, steps.build_source(cache, rows, md5=rows[0].md5, settings=settings))
    with pytest.raises(OSError):  # htslib: "unsorted positions"
        steps.build_sorted(cache, source, settings)


def test_records_swapped_or_dropped_after_publishing_are_found_by_the_full_reread(
    tmp_path: Path,
) -> None:
    _, sorted_, _, _ = _chain(tmp_path)
    sorted_.main.chmod(0o644)
    lines = _lines(sorted_.main)
    _rewrite(sorted_.main, [lines[1], lines[0], *lines[2:]], index=False)
    proof = steps.prove_sorted(sorted_)
    assert proof.how == "re-read" and "after" in proof.problem
    _rewrite(sorted_.main, lines[:-1], index=False)
    proof = steps.prove_sorted(sorted_)
    assert proof.how == "re-read"
    assert proof.problem == "re-reading found 4 records, the build wrote 5"


def test_an_index_that_misses_a_contig_fails_the_index_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = intervals.index_intervals

    def missing(*args: object, **kwargs: object) -> Result:
        result = real(*args, **kwargs)
        gz, index = result.files
        kept = tmp_path / "kept.bed.gz"
        # Without the last contig the other records keep their offsets: only chr3 is missing.
        lines = [line for line in _lines(gz) if not line.startswith("chr3\t")]
        pysam.tabix_compress(str(_plain(tmp_path, lines)), str(kept))
        pysam.tabix_index(str(kept), preset="bed", force=True, keep_original=True)
        index.unlink()
        index.write_bytes(Path(f"{kept}.tbi").read_bytes())
        return Result(result.files, len(lines), len(lines), result.metadata)

    monkeypatch.setattr(intervals, "index_intervals", missing)
    cache, settings, rows = _home(tmp_path)
    source = _publish(cache, steps.build_source(cache, rows, md5=rows[0].md5, settings=settings))
    sorted_ = _publish(cache, steps.build_sorted(cache, source, settings))
    index = _publish(cache, steps.build_index(cache, sorted_, settings))
    proof = steps.prove_index(index)
    assert proof.how == "observed" and "chr3" not in proof.measured["per_contig"]
    assert proof.problem == "region queries found 4 records, the sorted input holds 5"


def _plain(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "kept.bed"
    path.write_text("".join(lines))
    return path


def test_a_damaged_index_after_publishing_is_queried_in_full(tmp_path: Path) -> None:
    _, _, index, _ = _chain(tmp_path)
    _flip(index.files[1])
    try:
        proof = steps.prove_index(index)
    except ProcessingError:
        return  # the index no longer reads: the check reports that as its failure
    assert proof.how == "re-read" and proof.problem
