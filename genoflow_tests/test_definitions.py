"""The Definitions load, and their asset graph is the documented one."""

from __future__ import annotations

from dagster import AssetKey

from genoflow.definitions import defs

EXPECTED_ASSETS = [
    ["alignments", "index"],
    ["alignments", "sorted"],
    ["alignments", "source"],
    ["intervals", "index"],
    ["intervals", "sorted"],
    ["intervals", "source"],
    ["passthrough", "source"],
]


def test_definitions_hold_exactly_the_documented_asset_keys() -> None:
    keys = sorted(key.path for key in defs.resolve_all_asset_keys())
    assert keys == EXPECTED_ASSETS


def test_every_asset_has_a_check() -> None:
    graph = defs.resolve_asset_graph()
    checked = {"/".join(key.asset_key.path) for key in graph.asset_check_keys}
    assert checked == {"/".join(path) for path in EXPECTED_ASSETS}


def test_chains_read_left_to_right() -> None:
    graph = defs.resolve_asset_graph()
    for family in ("alignments", "intervals"):
        index = graph.get(AssetKey([family, "index"]))
        sorted_ = graph.get(AssetKey([family, "sorted"]))
        assert index.parent_keys == {AssetKey([family, "sorted"])}
        assert sorted_.parent_keys == {AssetKey([family, "source"])}


def test_each_family_is_its_own_group_with_a_code_version() -> None:
    graph = defs.resolve_asset_graph()
    for path in EXPECTED_ASSETS:
        node = graph.get(AssetKey(path))
        assert node.group_name == path[0]
        assert node.code_version


def test_one_job_per_family() -> None:
    names = sorted(job.name for job in defs.resolve_all_job_defs() if not job.name.startswith("__"))
    assert names == ["alignments_chain", "intervals_chain", "passthrough_chain"]
