"""Reading and validating manifests: TSV, CSV, JSON, row errors and cross-row conflicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genoflow.core.errors import ManifestError, SourceError
from genoflow.manifests.reading import (
    URI_RESOLVERS,
    ManifestRow,
    RowError,
    read_manifest,
    read_manifests,
    resolve_uri,
)

MD5_A = "0123456789abcdef0123456789abcdef"
MD5_B = "fedcba9876543210fedcba9876543210"
MD5_C = "c" * 32
HEADER = "name\turi\tmd5"


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="")
    return path


def tsv(path: Path, *rows: str, header: str = HEADER) -> Path:
    return write_text(path, "\n".join([header, *rows]) + "\n")


def only_error(path: Path) -> RowError:
    manifest = read_manifest(path)
    assert manifest.rows == []
    assert len(manifest.errors) == 1
    return manifest.errors[0]


def only_row(path: Path) -> ManifestRow:
    manifest = read_manifest(path)
    assert manifest.errors == []
    assert len(manifest.rows) == 1
    return manifest.rows[0]


# -- reading ---------------------------------------------------------------------------------


def test_reads_a_tsv_row_with_all_fields(tmp_path: Path) -> None:
    path = tsv(
        tmp_path / "m.tsv", f"a.vcf\ta.vcf\t{MD5_A}\tvcf\t12", header=HEADER + "\tformat\tsize"
    )
    row = only_row(path)
    assert (row.manifest, row.line, row.name, row.md5) == (path, 2, "a.vcf", MD5_A)
    assert (row.format, row.family, row.size, dict(row.extra)) == ("vcf", "intervals", 12, {})
    assert row.uri == str(tmp_path / "a.vcf")


def test_reads_a_csv_manifest(tmp_path: Path) -> None:
    path = write_text(tmp_path / "m.csv", f"name,uri,md5\nr.bam,r.bam,{MD5_A}\n")
    assert only_row(path).format == "bam"


def test_reads_quoted_csv_fields_with_commas(tmp_path: Path) -> None:
    text = f'name,uri,md5,note\nr.bam,r.bam,{MD5_A},"tumour, left"\n'
    assert only_row(write_text(tmp_path / "m.csv", text)).extra == {"note": "tumour, left"}


def test_reads_a_json_list_of_objects(tmp_path: Path) -> None:
    items = [{"name": "a.vcf", "uri": "a.vcf", "md5": MD5_A, "size": 7, "lab": "x"}]
    row = only_row(write_text(tmp_path / "m.json", json.dumps(items)))
    assert (row.line, row.size, dict(row.extra)) == (1, 7, {"lab": "x"})
    assert row.location() == f"{tmp_path / 'm.json'}:#1"


@pytest.mark.parametrize("separator", ["\t", ","])
def test_sniffs_the_delimiter_of_a_txt_manifest(tmp_path: Path, separator: str) -> None:
    text = separator.join(["name", "uri", "md5"]) + "\n" + separator.join(["a.bed", "a.bed", MD5_A])
    assert only_row(write_text(tmp_path / "m.txt", text + "\n")).name == "a.bed"


@pytest.mark.parametrize("suffix", [".tsv", ".json"])
def test_strips_a_utf8_bom(tmp_path: Path, suffix: str) -> None:
    if suffix == ".json":
        body = json.dumps([{"name": "a.vcf", "uri": "a.vcf", "md5": MD5_A}])
    else:
        body = f"{HEADER}\na.vcf\ta.vcf\t{MD5_A}\n"
    path = tmp_path / f"m{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    assert only_row(path).name == "a.vcf"


def test_skips_blank_and_comment_lines_keeping_physical_line_numbers(tmp_path: Path) -> None:
    rows = f"a.vcf\ta.vcf\t{MD5_A}\n   \nb.vcf\tb.vcf\t{MD5_B}\n"
    text = f"# made by hand\n\n{HEADER}\n\n# first\n{rows}"
    manifest = read_manifest(write_text(tmp_path / "m.tsv", text))
    assert [row.line for row in manifest.rows] == [6, 8]
    assert manifest.errors == []


def test_counts_crlf_lines_like_lf_lines(tmp_path: Path) -> None:
    text = f"{HEADER}\r\na.vcf\ta.vcf\t{MD5_A}\r\n\r\nb.vcf\tb.vcf\t{MD5_B}\r\n"
    manifest = read_manifest(write_text(tmp_path / "m.tsv", text))
    assert [(row.line, row.md5) for row in manifest.rows] == [(2, MD5_A), (4, MD5_B)]


def test_numbers_the_row_after_a_multiline_field_by_its_physical_line(tmp_path: Path) -> None:
    text = f'name,uri,md5,note\na.vcf,a.vcf,{MD5_A},"two\nlines"\nb.vcf,b.vcf,{MD5_B},x\n'
    manifest = read_manifest(write_text(tmp_path / "m.csv", text))
    assert [(row.line, row.extra["note"]) for row in manifest.rows] == [
        (2, "two\nlines"),
        (4, "x"),
    ]


def test_matches_column_names_case_insensitively_after_stripping(tmp_path: Path) -> None:
    path = tsv(tmp_path / "m.tsv", f"a.vcf\ta.vcf\t{MD5_A}\tS1", header=" Name \tURI\tMd5\tSample")
    assert only_row(path).extra == {"sample": "S1"}


def test_keeps_extra_columns(tmp_path: Path) -> None:
    path = tsv(tmp_path / "m.tsv", f"a.vcf\ta.vcf\t{MD5_A}\tS1\t", header=HEADER + "\tsample\tlab")
    assert only_row(path).extra == {"sample": "S1", "lab": ""}


def test_normalises_md5_to_lower_case_without_whitespace(tmp_path: Path) -> None:
    path = tsv(tmp_path / "m.tsv", f"a.vcf\ta.vcf\t  {MD5_A.upper()} ")
    assert only_row(path).md5 == MD5_A


def test_treats_a_short_row_as_having_empty_optional_fields(tmp_path: Path) -> None:
    path = tsv(tmp_path / "m.tsv", f"a.vcf\ta.vcf\t{MD5_A}", header=HEADER + "\tformat\tsize")
    row = only_row(path)
    assert (row.format, row.size) == ("vcf", None)


def test_takes_the_format_column_over_the_name(tmp_path: Path) -> None:
    path = tsv(tmp_path / "m.tsv", f"p.bed\tp.bed\t{MD5_A}\tNarrowPeak", header=HEADER + "\tformat")
    assert only_row(path).format == "narrowPeak"


def test_takes_the_format_from_the_uri_when_the_name_has_none(tmp_path: Path) -> None:
    path = tsv(tmp_path / "m.tsv", f"sample1\thttps://h.org/d/s1.bw?sig=x\t{MD5_A}")
    row = only_row(path)
    assert (row.format, row.family) == ("bigWig", "passthrough")


def test_reads_a_header_only_manifest_as_empty(tmp_path: Path) -> None:
    manifest = read_manifest(tsv(tmp_path / "m.tsv"))
    assert (manifest.rows, manifest.errors) == ([], [])


def test_reads_an_empty_json_list_as_empty(tmp_path: Path) -> None:
    manifest = read_manifest(write_text(tmp_path / "m.json", "[]"))
    assert (manifest.rows, manifest.errors) == ([], [])


# -- URIs ------------------------------------------------------------------------------------


def test_resolves_a_relative_uri_against_the_manifest_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tsv(Path("sub") / "m.tsv", f"a.vcf\t../data/./a.vcf\t{MD5_A}")
    assert only_row(path).uri == str(tmp_path / "data" / "a.vcf")


def test_keeps_an_absolute_path(tmp_path: Path) -> None:
    path = tsv(tmp_path / "m.tsv", f"a.vcf\t/srv/data/a.vcf\t{MD5_A}")
    assert only_row(path).uri == "/srv/data/a.vcf"


@pytest.mark.parametrize(
    "uri", ["file:///srv/my%20data/a%2Bb.vcf", "file://localhost/srv/my%20data/a%2Bb.vcf"]
)
def test_percent_decodes_file_uris(tmp_path: Path, uri: str) -> None:
    path = tsv(tmp_path / "m.tsv", f"a.vcf\t{uri}\t{MD5_A}")
    assert only_row(path).uri == "/srv/my data/a+b.vcf"


@pytest.mark.parametrize(
    "uri", ["https://h.org/a.vcf?X-Sig=1", "http://h.org/a.vcf", "gs://b/a.vcf"]
)
def test_passes_remote_uris_through_unchanged(tmp_path: Path, uri: str) -> None:
    assert resolve_uri(uri, base=tmp_path) == uri


def test_rejects_an_unsupported_scheme_without_showing_the_query(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="unsupported uri scheme 's3'") as caught:
        resolve_uri("s3://bucket/a.vcf?token=secret", base=tmp_path)
    assert "secret" not in str(caught.value)


def test_rejects_a_file_uri_on_another_host(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="remote host"):
        resolve_uri("file://server/a.vcf", base=tmp_path)


def test_uses_a_resolver_registered_for_a_new_scheme(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(URI_RESOLVERS, "s3", lambda uri, base: uri.upper())
    assert only_row(tsv(tmp_path / "m.tsv", f"a.vcf\ts3://b/a.vcf\t{MD5_A}")).uri == "S3://B/A.VCF"


# -- invalid rows ----------------------------------------------------------------------------


def test_formats_a_row_error_with_the_manifest_path_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    manifest = read_manifest(tsv(Path("demo.tsv"), f"a.vcf\ta.vcf\t{MD5_A}", "b.vcf\tb.vcf\txyz"))
    assert [str(error) for error in manifest.errors] == [
        "demo.tsv:3: malformed md5 'xyz' (need 32 hex digits)"
    ]


def test_reports_json_row_errors_by_object_index(tmp_path: Path) -> None:
    items = [{"name": "a.vcf", "uri": "a.vcf", "md5": MD5_A}, {"name": "b.vcf", "uri": "b.vcf"}]
    path = write_text(tmp_path / "m.json", json.dumps(items))
    manifest = read_manifest(path)
    assert [row.name for row in manifest.rows] == ["a.vcf"]
    assert [str(error) for error in manifest.errors] == [
        f"{path}:#2: missing required field(s) md5"
    ]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (f"\ta.vcf\t{MD5_A}", "missing required field(s) name"),
        (f"  \ta.vcf\t{MD5_A}", "missing required field(s) name"),
        (f"a.vcf\t\t{MD5_A}", "missing required field(s) uri"),
        ("a.vcf\ta.vcf", "missing required field(s) md5"),
        (f"a.vcf\ta.vcf\t{MD5_A[:31]}", "malformed md5"),
        (f"a.vcf\ta.vcf\t{MD5_A[:31]}g", "malformed md5"),
        (f"a.vcf\ta.vcf\t{MD5_A}0", "malformed md5"),
        (f"a.txt\ta.txt\t{MD5_A}", "unknown format"),
        (f"d/a.vcf\ta.vcf\t{MD5_A}", "path separator"),
        (f"d\\a.vcf\ta.vcf\t{MD5_A}", "path separator"),
        (f"../a.vcf\ta.vcf\t{MD5_A}", "path separator"),
        (f"..\ta.vcf\t{MD5_A}", "starts with '.'"),
        (f".hidden.vcf\ta.vcf\t{MD5_A}", "starts with '.'"),
        (f"a\x01.vcf\ta.vcf\t{MD5_A}", "control character"),
        (f"{'n' * 252}.vcf\ta.vcf\t{MD5_A}", "longer than 255 bytes"),
        (f"a.vcf\tftp://h/a.vcf\t{MD5_A}", "unsupported uri scheme 'ftp'"),
        (f"a.vcf\tfile:a.vcf\t{MD5_A}", "absolute path"),
        (f"a.vcf\ta.vcf\t{MD5_A}\textra", "4 fields but the header has 3"),
        (f'a.vcf\t"a"b.vcf\t{MD5_A}', "unparseable row"),
    ],
)
def test_reports_an_invalid_row_with_its_line(tmp_path: Path, row: str, reason: str) -> None:
    path = tsv(tmp_path / "m.tsv", f"ok.vcf\tok.vcf\t{MD5_B}", row)
    manifest = read_manifest(path)
    assert [r.name for r in manifest.rows] == ["ok.vcf"]
    assert len(manifest.errors) == 1
    assert manifest.errors[0].line == 3
    assert reason in manifest.errors[0].reason
    assert str(manifest.errors[0]).startswith(f"{path}:3: ")


@pytest.mark.parametrize(
    ("header", "row", "reason"),
    [
        ("format", f"a.vcf\ta.vcf\t{MD5_A}\tfasta", "unknown format 'fasta'"),
        ("size", f"a.vcf\ta.vcf\t{MD5_A}\t-5", "negative size -5"),
        ("size", f"a.vcf\ta.vcf\t{MD5_A}\t1.5", "not a whole number"),
        ("size", f"a.vcf\ta.vcf\t{MD5_A}\t12k", "not a whole number"),
    ],
)
def test_reports_invalid_optional_fields(
    tmp_path: Path, header: str, row: str, reason: str
) -> None:
    error = only_error(tsv(tmp_path / "m.tsv", row, header=f"{HEADER}\t{header}"))
    assert (error.line, reason in error.reason) == (2, True)


@pytest.mark.parametrize("name", ["a\x00.vcf", "a\n.vcf", "a\u0085.vcf"])
def test_rejects_names_with_control_characters(tmp_path: Path, name: str) -> None:
    items = [{"name": name, "uri": "a.vcf", "md5": MD5_A}]
    assert (
        "control character" in only_error(write_text(tmp_path / "m.json", json.dumps(items))).reason
    )


def test_rejects_a_non_integer_json_size(tmp_path: Path) -> None:
    items = [{"name": "a.vcf", "uri": "a.vcf", "md5": MD5_A, "size": 1.5}]
    assert (
        "not a whole number"
        in only_error(write_text(tmp_path / "m.json", json.dumps(items))).reason
    )


def test_rejects_a_json_object_repeating_a_field_in_another_case(tmp_path: Path) -> None:
    text = json.dumps([{"name": "a.vcf", "Name": "b.vcf", "uri": "a.vcf", "md5": MD5_A}])
    assert "given twice" in only_error(write_text(tmp_path / "m.json", text)).reason


def test_reports_every_problem_of_a_row_at_once(tmp_path: Path) -> None:
    reason = only_error(tsv(tmp_path / "m.tsv", "d/a.vcf\tftp://h/x\tnope")).reason
    assert "path separator" in reason
    assert "malformed md5" in reason
    assert "unsupported uri scheme" in reason


@pytest.mark.parametrize(
    "row",
    [
        f"a.txt\thttps://u:pw@h.org/a.txt?X-Goog-Signature=secret\t{MD5_A}",
        "a.vcf\ts3://b/a.vcf?token=secret\tbad",
        "a.vcf\thttps://[broken/a.vcf?token=secret\tbad",
        "a.vcf\tgs://?token=secret\tbad",
    ],
)
def test_never_echoes_a_uri_query_or_credentials(tmp_path: Path, row: str) -> None:
    text = str(only_error(tsv(tmp_path / "m.tsv", row)))
    assert "secret" not in text
    assert "pw" not in text


# -- conflicts across rows -------------------------------------------------------------------


def test_drops_every_row_of_a_name_given_two_md5s(tmp_path: Path) -> None:
    path = tsv(
        tmp_path / "m.tsv",
        f"a.vcf\tx/a.vcf\t{MD5_A}",
        f"b.vcf\tb.vcf\t{MD5_C}",
        f"a.vcf\ty/a.vcf\t{MD5_B}",
        f"a.vcf\tz/a.vcf\t{MD5_A}",
    )
    manifest = read_manifest(path)
    assert [row.name for row in manifest.rows] == ["b.vcf"]
    assert [error.line for error in manifest.errors] == [2, 4, 5]
    assert all("conflicting md5s" in error.reason for error in manifest.errors)
    assert f"{MD5_B} at {path}:4" in manifest.errors[0].reason


def test_detects_a_name_conflict_across_manifests(tmp_path: Path) -> None:
    first = tsv(tmp_path / "one.tsv", f"a.vcf\ta.vcf\t{MD5_A}", f"c.vcf\tc.vcf\t{MD5_C}")
    second = tsv(tmp_path / "two.tsv", f"a.vcf\ta2.vcf\t{MD5_B}")
    manifest = read_manifests([first, second])
    assert manifest.paths == [first, second]
    assert [row.name for row in manifest.rows] == ["c.vcf"]
    assert [(e.manifest, e.line) for e in manifest.errors] == [(first, 2), (second, 2)]


def test_keeps_a_name_repeated_with_the_same_md5(tmp_path: Path) -> None:
    path = tsv(tmp_path / "m.tsv", f"a.vcf\tx/a.vcf\t{MD5_A}", f"a.vcf\ty/a.vcf\t{MD5_A}")
    assert len(read_manifest(path).rows) == 2


def test_groups_replicas_of_one_md5_as_one_source(tmp_path: Path) -> None:
    first = tsv(tmp_path / "one.tsv", f"a.vcf\ta.vcf\t{MD5_A}", f"b.vcf\tb.vcf\t{MD5_B}")
    second = tsv(tmp_path / "two.tsv", f"copy.vcf.gz\thttps://h.org/a.vcf\t{MD5_A}")
    sources = read_manifests([first, second]).sources()
    assert list(sources) == [MD5_A, MD5_B]
    assert [row.name for row in sources[MD5_A]] == ["a.vcf", "copy.vcf.gz"]


def test_drops_later_rows_whose_md5_has_another_format(tmp_path: Path) -> None:
    path = tsv(
        tmp_path / "m.tsv",
        f"a.sam\ta.sam\t{MD5_A}",
        f"a.bam\ta.bam\t{MD5_A}",
        f"a.bed\ta.bed\t{MD5_A}",
        f"b.sam\tb.sam\t{MD5_A}",
    )
    manifest = read_manifest(path)
    assert [row.name for row in manifest.rows] == ["a.sam", "b.sam"]
    assert [error.line for error in manifest.errors] == [3, 4]
    # Each dropped row is labelled with its own value and the one that won.
    assert "has format bam here" in manifest.errors[0].reason
    assert "has format bed here" in manifest.errors[1].reason
    assert all("says sam" in error.reason for error in manifest.errors)


# -- unreadable manifests --------------------------------------------------------------------


def _raises_manifest_error(path: Path, match: str) -> None:
    with pytest.raises(ManifestError, match=match) as caught:
        read_manifest(path)
    assert caught.value.file == str(path)
    assert caught.value.stage == "manifest"


def test_fails_on_a_missing_manifest(tmp_path: Path) -> None:
    _raises_manifest_error(tmp_path / "nope.tsv", "manifest not found")


def test_fails_on_a_folder(tmp_path: Path) -> None:
    _raises_manifest_error(tmp_path, "cannot read")


def test_fails_on_non_utf8_bytes_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "m.tsv"
    path.write_bytes(f"{HEADER}\na.vcf\ta.vcf\t{MD5_A}\n".encode() + b"caf\xe9\n")
    _raises_manifest_error(path, r"not UTF-8: byte 0xe9 on line 3")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "no header row"),
        ("# only a comment\n\n", "no header row"),
        ("name\turi\n", "lacks required column.*md5"),
        ("name\turi\tmd5\tName\n", "repeats column.*name"),
        ("name\t\turi\tmd5\n", "column 2 has no name"),
        ('"name\turi\tmd5\n', "unreadable header"),
    ],
)
def test_fails_on_a_table_without_a_usable_header(tmp_path: Path, text: str, match: str) -> None:
    _raises_manifest_error(write_text(tmp_path / "m.tsv", text), match)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "not valid JSON"),
        ("[{]", "not valid JSON"),
        ('{"name": "a"}', "list of objects, not a dict"),
        ('[{"name": "a"}, "b"]', "item #2 is a str"),
        ('[{"name": "a", "name": "b"}]', "duplicate key 'name'"),
        ("[" * 100_000, "not valid JSON"),
    ],
)
def test_fails_on_unusable_json(tmp_path: Path, text: str, match: str) -> None:
    _raises_manifest_error(write_text(tmp_path / "m.json", text), match)


# -- fuzzing ---------------------------------------------------------------------------------

SUFFIXES = st.sampled_from([".tsv", ".csv", ".json", ".txt"])
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _read_or_manifest_error(path: Path) -> None:
    try:
        manifest = read_manifest(path)
    except ManifestError:
        return
    for error in manifest.errors:
        assert str(error).startswith(f"{path}:")


@FUZZ
@given(text=st.text(), suffix=SUFFIXES)
def test_fuzzed_text_yields_rows_or_a_manifest_error(
    tmp_path: Path, text: str, suffix: str
) -> None:
    _read_or_manifest_error(write_text(tmp_path / f"fuzz{suffix}", text))


@FUZZ
@given(body=st.text(alphabet=st.sampled_from('\t,\n\r"#./:% aZ0f\\\x00\x85é')), suffix=SUFFIXES)
def test_fuzzed_rows_under_a_valid_header_yield_rows_or_errors(
    tmp_path: Path, body: str, suffix: str
) -> None:
    header = "name,uri,md5,format,size" if suffix == ".csv" else "name\turi\tmd5\tformat\tsize"
    _read_or_manifest_error(write_text(tmp_path / f"fuzz{suffix}", f"{header}\n{body}"))


@FUZZ
@given(data=st.binary(), suffix=SUFFIXES)
def test_fuzzed_bytes_yield_rows_or_a_manifest_error(
    tmp_path: Path, data: bytes, suffix: str
) -> None:
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    _read_or_manifest_error(path)


@FUZZ
@given(
    items=st.lists(
        st.dictionaries(
            st.sampled_from(["name", "URI", "md5", "format", "size", "x"]),
            st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text()),
        )
    )
)
def test_fuzzed_json_objects_yield_rows_or_errors(tmp_path: Path, items: list[dict]) -> None:
    _read_or_manifest_error(write_text(tmp_path / "fuzz.json", json.dumps(items)))


def test_an_empty_md5_on_a_gs_row_is_taken_from_the_lookup(tmp_path: Path) -> None:
    path = tmp_path / "m.tsv"
    path.write_text("name\turi\tmd5\na.bed\tgs://b/a.bed\t\nb.bed\tb.bed\t\n")
    seen = []

    def lookup(uri: str) -> str:
        seen.append(uri)
        return "AB" * 16

    manifest = read_manifest(path, md5_lookup=lookup)

    assert [row.md5 for row in manifest.rows] == ["ab" * 16]
    assert seen == ["gs://b/a.bed"]
    assert "missing required field(s) md5" in str(manifest.errors[0])


def test_an_unreadable_md5hash_is_a_row_error(tmp_path: Path) -> None:
    path = tmp_path / "m.tsv"
    path.write_text("name\turi\tmd5\na.bed\tgs://b/a.bed\t\nc.bed\tgs://b/c.bed\t\n")

    def lookup(uri: str) -> str | None:
        if uri.endswith("a.bed"):
            raise SourceError("object not found", file=uri)
        return None

    manifest = read_manifest(path, md5_lookup=lookup)

    assert manifest.rows == []
    assert "object not found" in str(manifest.errors[0])
    assert "no md5Hash" in str(manifest.errors[1])


def test_unreadable_manifests_can_be_collected_while_the_others_flow(tmp_path: Path) -> None:
    good = tmp_path / "good.tsv"
    good.write_text("name\turi\tmd5\na.bed\ta.bed\t" + "a" * 32 + "\n")
    bad = tmp_path / "bad.tsv"
    bad.write_bytes(b"name\turi\tmd5\n\xff\xfe\n")
    unreadable: list[ManifestError] = []
    manifest = read_manifests([bad, good], unreadable=unreadable)
    assert [row.name for row in manifest.rows] == ["a.bed"]
    assert manifest.paths == [good]
    assert [str(exc).startswith(f"[manifest] {bad}: not UTF-8") for exc in unreadable] == [True]
    with pytest.raises(ManifestError, match="not UTF-8"):
        read_manifests([bad, good])
