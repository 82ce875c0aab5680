"""The content-addressed layout: validated artifact keys that never name a path outside the root."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genoflow.core.errors import StorageError
from genoflow.storage.cache import Cache
from genoflow.storage.layout import ASSETS, FAMILIES, ArtifactKey

MD5 = "d41d8cd98f00b204e9800998ecf8427e"


@pytest.mark.parametrize(
    "md5",
    [
        MD5.upper(),
        MD5[:31],
        MD5 + "0",
        "z" * 32,
        "",
        "../" + MD5[3:],
        MD5 + "\n",
    ],
)
def test_rejects_an_md5_that_is_not_32_lower_case_hex_digits(md5: str) -> None:
    with pytest.raises(StorageError, match="md5"):
        ArtifactKey("intervals", md5, "sorted", "1")


@pytest.mark.parametrize("family", ["reads", "", "Intervals", "../intervals"])
def test_rejects_an_unknown_family(family: str) -> None:
    with pytest.raises(StorageError, match="family"):
        ArtifactKey(family, MD5, "sorted", "1")


@pytest.mark.parametrize("asset", ["merged", "", "Sorted", "sorted/../index"])
def test_rejects_an_unknown_asset(asset: str) -> None:
    with pytest.raises(StorageError, match="asset"):
        ArtifactKey("intervals", MD5, asset, "1")


@pytest.mark.parametrize("version", ["1/2", "..", "1..2", "../1", "", ".1", "1\n", "a" * 33])
def test_rejects_a_version_that_is_not_a_plain_version_string(version: str) -> None:
    with pytest.raises(StorageError, match="version"):
        ArtifactKey("intervals", MD5, "sorted", version)


def test_relpath_is_family_md5_prefix_md5_asset_and_version() -> None:
    key = ArtifactKey("alignments", MD5, "index", "2.1")

    assert key.relpath == PurePosixPath(f"alignments/d4/{MD5}/index/v2.1")


def test_str_names_the_asset_a_short_md5_and_the_version() -> None:
    key = ArtifactKey("alignments", MD5, "index", "2.1")

    assert str(key) == "alignments/index@d41d8cd98f00/v2.1"


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    family=st.sampled_from(FAMILIES),
    md5=st.text("0123456789abcdef", min_size=32, max_size=32),
    asset=st.sampled_from(ASSETS),
    version=st.text(min_size=1, max_size=40) | st.text("abcXYZ019._-/", min_size=1, max_size=40),
)
def test_no_valid_key_names_a_folder_outside_the_cache_root(
    tmp_path: Path, family: str, md5: str, asset: str, version: str
) -> None:
    root = tmp_path.resolve()
    try:
        key = ArtifactKey(family, md5, asset, version)
    except StorageError:
        return
    folder = Cache(root).folder(key).resolve()

    assert folder.is_relative_to(root)
    assert folder.relative_to(root).parts == (family, md5[:2], md5, asset, f"v{version}")
