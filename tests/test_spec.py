"""mig-parted v1 configs: strict parsing, the profile grammar, and resolution against a node.

The rules come from `reference/mig-parted.md` §1 (mig-parted `api/spec/v1`, go-nvlib's
`parseMigProfile`): every rule that makes mig-parted refuse a file must make Tessera refuse
it too, with one `MigConfigError` that names the file, the config and the entry (and, once
the config meets the node, the GPU), so the operator can find the line to fix.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.errors import MigConfigError
from tessera.hardware.backend import simulated_backend
from tessera.hardware.node import Node
from tessera.mig import spec
from tessera.mig.engine import gpu_facts
from tessera.mig.layout import GpuFacts, NodeTarget, resolve
from tessera.mig.profiles import MigProfileName, config_name_for, parse_profile

SOURCE = "configs/mig.yaml"

# mig-parted's README / examples/config.yaml (DGX A100 40GB), verbatim.
README_EXAMPLE = """\
version: v1
mig-configs:
  all-disabled:
    - devices: all
      mig-enabled: false
  all-enabled:
    - devices: all
      mig-enabled: true
      mig-devices: {}
  all-balanced:
    - devices: all
      mig-enabled: true
      mig-devices: {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1}
  custom-config:
    - devices: [0,1,2,3]
      mig-enabled: false
    - devices: [4]
      mig-enabled: true
      mig-devices: {"1g.5gb": 7}
    - device-filter: ["0x20B010DE"]      # optional
      devices: [7]
      mig-enabled: true
      mig-devices: {"3g.20gb": 2}
"""


def nvidia_default_text() -> str:
    return resources.files("tessera.mig").joinpath("data", "nvidia-default.yaml").read_text()


def one_entry(**entry: Any) -> dict[str, Any]:
    """A file with config `cfg` whose second entry is `entry` (the first one is valid), so
    errors must locate entry 1, not just "somewhere"."""
    return {"version": "v1", "mig-configs": {
        "fine": [{"devices": "all", "mig-enabled": False}],
        "cfg": [{"devices": [0], "mig-enabled": False}, entry],
    }}


_FACTS: dict[str, tuple[GpuFacts, ...]] = {}


def facts(preset: str) -> tuple[GpuFacts, ...]:
    if preset not in _FACTS:
        with Node(simulated_backend(preset, None)) as node:
            _FACTS[preset] = gpu_facts(node)
    return _FACTS[preset]


def targets(result: NodeTarget) -> dict[int, tuple[bool, dict[str, int]]]:
    return {i: (t.mig_enabled, {str(k): n for k, n in t.devices})
            for i, t in result.targets.items()}


def resolve_entry(preset: str, **entry: Any) -> NodeTarget:
    file = spec.from_data({"version": "v1", "mig-configs": {"cfg": [entry]}}, source=SOURCE)
    return resolve(file, "cfg", facts(preset))


# -- files that load ----------------------------------------------------------------------


def test_nvidia_default_file_loads() -> None:
    file = spec.parse(nvidia_default_text(), source="nvidia-default.yaml")
    assert {"all-disabled", "all-enabled", "all-balanced"} <= set(file.configs)
    # NVIDIA's per-product all-<profile> names for the simulated products (reference §1a).
    for name in ["all-1g.5gb", "all-1g.5gb.me", "all-7g.40gb", "all-1g.10gb", "all-3g.40gb",
                 "all-7g.80gb", "all-1g.6gb", "all-2g.12gb.me", "all-4g.24gb", "all-1g.12gb",
                 "all-3g.47gb", "all-7g.94gb", "all-1g.18gb", "all-3g.71gb", "all-7g.141gb"]:
        assert name in file.configs, name
    (entry,) = file.configs["all-disabled"]
    assert (entry.devices, entry.mig_enabled, entry.mig_devices) == (None, False, ())
    split = {f.device_id: n for e in file.configs["all-1g.10gb"] for f in e.device_filter
             for _, n in e.mig_devices}
    assert split[0x20B210DE] == 7  # 80GB parts
    assert split[0x20B010DE] == 4  # A100-40GB


@pytest.mark.parametrize("preset", ["dgx-a100-40gb", "dgx-a100", "a30x4", "dgx-h100",
                                    "h100-nvl", "hgx-h200"])
def test_nvidia_default_all_profile_configs_fill_each_gpu(preset: str) -> None:
    """Every `all-<profile>` config sets that profile's maximum count (reference §1a), and
    resolves on the product that offers it."""
    file = spec.parse(nvidia_default_text(), source="nvidia-default.yaml")
    gpus = facts(preset)
    catalog = gpus[0].catalog
    assert catalog is not None
    for profile in catalog.gi_profiles:
        result = resolve(file, config_name_for(profile.name), gpus)
        assert targets(result) == {
            g.gpu.index: (True, {profile.name: profile.instance_count}) for g in gpus
        }, profile.name


@pytest.mark.parametrize(("preset", "balanced"), [
    # reference §1a, `all-balanced` table
    ("dgx-a100-40gb", {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1}),
    ("dgx-a100", {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1}),
    ("dgx-h100", {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1}),
    ("a30x4", {"1g.6gb": 2, "2g.12gb": 1}),
    ("h100-nvl", {"1g.12gb": 2, "2g.24gb": 1, "3g.47gb": 1}),
    ("hgx-h200", {"1g.18gb": 2, "2g.35gb": 1, "3g.71gb": 1}),
])
def test_nvidia_default_all_balanced_per_product(preset: str, balanced: dict[str, int]) -> None:
    file = spec.parse(nvidia_default_text(), source="nvidia-default.yaml")
    result = resolve(file, "all-balanced", facts(preset))
    assert all(t == (True, balanced) for t in targets(result).values())
    assert sorted(result.targets) == [g.gpu.index for g in facts(preset)]


def test_mig_parted_readme_example_loads_and_resolves() -> None:
    file = spec.parse(README_EXAMPLE, source="config.yaml")
    assert list(file.configs) == ["all-disabled", "all-enabled", "all-balanced", "custom-config"]
    custom = file.configs["custom-config"]
    assert [e.devices for e in custom] == [(0, 1, 2, 3), (4,), (7,)]
    assert [str(f) for f in custom[2].device_filter] == ["0x20B010DE"]
    assert file.configs["all-enabled"][0].mig_devices == ()
    assert file.configs["all-enabled"][0].mig_enabled

    gpus = facts("dgx-a100-40gb")  # the machine the example was written for
    result = resolve(file, "custom-config", gpus)
    assert targets(result) == {
        0: (False, {}), 1: (False, {}), 2: (False, {}), 3: (False, {}),
        4: (True, {"1g.5gb": 7}), 7: (True, {"3g.20gb": 2}),
    }
    assert result.unmatched == (5, 6)
    assert targets(resolve(file, "all-balanced", gpus))[6] == (
        True, {"1g.5gb": 2, "2g.10gb": 1, "3g.20gb": 1})

    # On an 80GB DGX the 40GB profile names do not exist: refused, naming the GPU.
    with pytest.raises(MigConfigError) as raised:
        resolve(file, "custom-config", facts("dgx-a100"))
    assert raised.value.gpu == 4
    assert raised.value.entry == 1
    assert "1g.5gb" in str(raised.value)
    # The filtered entry selects nothing on an 80GB node, so its 40GB profile is not checked.
    ok = spec.parse(README_EXAMPLE.replace('{"1g.5gb": 7}', '{"1g.10gb": 7}'))
    assert 7 not in resolve(ok, "custom-config", facts("dgx-a100")).targets


def test_json_is_read_too() -> None:
    text = ('{"version": "v1", "mig-configs": {"x": [{"devices": [1, 0], "mig-enabled": true,'
            ' "mig-devices": {"3g.40gb": 2}, "device-filter": "0x20B210DE:0x147F10DE"}]}}')
    (entry,) = spec.parse(text).configs["x"]
    assert entry.devices == (1, 0)
    assert [(str(p), n) for p, n in entry.mig_devices] == [("3g.40gb", 2)]
    (flt,) = entry.device_filter
    assert (flt.device_id, flt.subsystem_id) == (0x20B210DE, 0x147F10DE)
    assert flt.matches(0x20B210DE, 0x147F10DE)
    assert not flt.matches(0x20B210DE, 0x134F10DE)  # all four IDs must match


def test_a_single_config_file_needs_no_name_and_unknown_names_are_refused() -> None:
    single = spec.from_data(
        {"version": "v1", "mig-configs": {"only": [{"devices": "all", "mig-enabled": False}]}})
    assert single.select(None)[0] == "only"
    file = spec.parse(README_EXAMPLE, source="config.yaml")
    with pytest.raises(MigConfigError, match="all-balanced"):
        file.select(None)
    with pytest.raises(MigConfigError) as raised:
        file.select("all-3g.20gb")
    assert "config.yaml" in str(raised.value)
    assert "custom-config" in str(raised.value)  # lists what exists


# -- strictness: every rule of reference §1 ---------------------------------------------


def test_wrong_version_is_refused() -> None:
    for version in ["v2", "V1", 1, None]:
        with pytest.raises(MigConfigError) as raised:
            spec.from_data({"version": version, "mig-configs": {}}, source=SOURCE)
        assert SOURCE in str(raised.value)
        assert "version" in str(raised.value)
    with pytest.raises(MigConfigError, match="version"):
        spec.parse("mig-configs:\n  a:\n  - {devices: all, mig-enabled: false}\n",
                   source=SOURCE)


def test_unknown_top_level_key_is_refused() -> None:
    data = one_entry(devices="all", **{"mig-enabled": False})
    data["mig-config"] = {}
    with pytest.raises(MigConfigError) as raised:
        spec.from_data(data, source=SOURCE)
    assert SOURCE in str(raised.value)
    assert "mig-config" in str(raised.value)


def test_configs_and_entries_must_exist() -> None:
    for data, config in [({"version": "v1"}, None),
                         ({"version": "v1", "mig-configs": {}}, None),
                         ({"version": "v1", "mig-configs": {"empty": []}}, "empty"),
                         ({"version": "v1", "mig-configs": ["all-disabled"]}, None)]:
        with pytest.raises(MigConfigError) as raised:
            spec.from_data(data, source=SOURCE)
        assert raised.value.config == config
        assert SOURCE in str(raised.value)


BAD_ENTRIES = [
    # (entry, words the reason must contain)
    ({"devices": "all", "mig-enabled": False, "mig-device": {}}, ["unexpected", "mig-device"]),
    ({"mig-enabled": False}, ["devices"]),
    ({"devices": "all"}, ["mig-enabled"]),
    ({"devices": "all", "mig-enabled": True}, ["mig-devices", "required"]),
    ({"devices": "all", "mig-enabled": False, "mig-devices": {"1g.10gb": 1}}, ["mig-devices"]),
    ({"devices": "all", "mig-enabled": True, "mig-devices": {"1g.10gb": -1}}, ["-1"]),
    ({"devices": "all", "mig-enabled": True, "mig-devices": {"1g.10gb": 0, "3g.40gb": 0}},
     ["0"]),
    ({"devices": "all", "mig-enabled": True, "mig-devices": {"1g.10g": 1}}, ["1g.10g"]),
    ({"devices": "all", "mig-enabled": True, "mig-devices": {"1g.10gb+me-gfx": 1}},
     ["1g.10gb+me-gfx"]),
    ({"devices": "all", "mig-enabled": True, "mig-devices": {"1g.10gb": 1.5}}, ["1.5"]),
    ({"devices": "all", "mig-enabled": True, "mig-devices": {"1g.10gb": "2"}}, ["mig-devices"]),
    ({"devices": "all", "mig-enabled": True, "mig-devices": {"1g.10gb": 1e30}},
     ["1g.10gb", "1e+30", "at most 8"]),
    ({"devices": "all", "mig-enabled": True, "mig-devices": {"1g.10gb": "1e30"}},
     ["1g.10gb", "1e30", "at most 8"]),
    ({"devices": "all", "mig-enabled": True, "mig-devices": {"1g.10gb": True}}, ["true"]),
    ({"devices": "all", "mig-enabled": True, "mig-devices": ["1g.10gb"]}, ["mig-devices"]),
    ({"devices": "all", "mig-enabled": False, "device-filter": 0x20B010DE}, ["device-filter"]),
    ({"devices": [], "mig-enabled": False}, ["devices"]),
    ({"devices": [0, 2, 0], "mig-enabled": False}, ["devices"]),
    ({"devices": [-1], "mig-enabled": False}, ["devices"]),
    ({"devices": "some", "mig-enabled": False}, ["devices"]),
    ({"devices": ["0"], "mig-enabled": False}, ["devices"]),
    ({"devices": 0, "mig-enabled": False}, ["devices"]),
    ({"devices": [True], "mig-enabled": False}, ["devices"]),
    ({"devices": "all", "mig-enabled": "yes"}, ["mig-enabled"]),
    ({"devices": "all", "mig-enabled": "true"}, ["mig-enabled"]),
    ({"devices": "all", "mig-enabled": 1}, ["mig-enabled"]),
]


@pytest.mark.parametrize(("entry", "words"), BAD_ENTRIES)
def test_bad_entries_name_file_config_and_entry(entry: dict[str, Any], words: list[str]) -> (
    None
):
    with pytest.raises(MigConfigError) as raised:
        spec.from_data(one_entry(**entry), source=SOURCE)
    error = raised.value
    assert (error.source, error.config, error.entry) == (SOURCE, "cfg", 1)
    message = str(error)
    assert message.startswith(f"{SOURCE}, config 'cfg', entry 1: ")
    for word in words:
        assert word in message, (word, message)


def test_bad_entries_in_yaml_text_too() -> None:
    text = ("version: v1\nmig-configs:\n  cfg:\n  - devices: all\n    mig-enabled: 'yes'\n")
    with pytest.raises(MigConfigError) as raised:
        spec.parse(text, source=SOURCE)
    assert (raised.value.config, raised.value.entry) == ("cfg", 0)
    # YAML 1.1's bare `yes` is a boolean to mig-parted's YAML reader as well.
    (entry,) = spec.parse(text.replace("'yes'", "yes\n    mig-devices: {}")).configs["cfg"]
    assert entry.mig_enabled is True


def test_unreadable_yaml_names_the_file_and_line() -> None:
    with pytest.raises(MigConfigError) as raised:
        spec.parse("version: v1\nmig-configs: {a: [\n", source=SOURCE)
    assert SOURCE in str(raised.value)
    assert "line" in str(raised.value)
    for text in ["", "v1", "- a\n- b\n", "42"]:
        with pytest.raises(MigConfigError, match=SOURCE):
            spec.parse(text, source=SOURCE)


def test_mig_devices_may_be_empty_or_absent_when_disabled() -> None:
    file = spec.from_data({"version": "v1", "mig-configs": {"a": [
        {"devices": "all", "mig-enabled": False, "mig-devices": {}},
        {"devices": [1], "mig-enabled": False},
        {"devices": [2], "mig-enabled": True, "mig-devices": {"1g.10gb": 0, "2g.20gb": 1}},
    ]}})
    assert [e.mig_devices for e in file.configs["a"][:2]] == [(), ()]
    # Zero counts beside a positive one are dropped, not refused.
    assert [(str(p), n) for p, n in file.configs["a"][2].mig_devices] == [("2g.20gb", 1)]


# -- the profile grammar -----------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("3g.40gb", MigProfileName(3, 40, 3, "")),
    ("1c.3g.40gb", MigProfileName(3, 40, 1, "")),
    ("3c.3g.40gb", MigProfileName(3, 40, 3, "")),  # a full-size CI is the GI's own name
    ("1g.10gb+me", MigProfileName(1, 10, 1, "+me")),
    ("1g.24gb-me", MigProfileName(1, 24, 1, "-me")),
    ("1g.24gb+me.all", MigProfileName(1, 24, 1, "+me.all")),
    ("2g.48gb+gfx", MigProfileName(2, 48, 2, "+gfx")),
    ("1g.24gb+me,gfx", MigProfileName(1, 24, 1, "+me,gfx")),
    ("7g.141gb", MigProfileName(7, 141, 7, "")),
    ("0g.0gb", MigProfileName(0, 0, 0, "")),  # mig-parted's spec_test writes it
])
def test_profile_grammar_accepts(text: str, expected: MigProfileName) -> None:
    parsed = parse_profile(text)
    assert parsed == expected
    assert parse_profile(str(parsed)) == parsed


@pytest.mark.parametrize("text", [
    "", "3g", "3g.40", "3g40gb", "g.40gb", "00g.5gb", "1g.01gb", "3g.40GB", "3G.40gb",
    " 3g.40gb", "3g.40gb ", "3g.40gb\n", "1g.10gb+me\n", "4c.3g.40gb", "0c.3g.40gb",
    "1c.1c.3g.40gb", "1g.10gb+", "1g.10gb-", "1g.10gb+me-gfx", "1g.10gb-me,gfx",
    "1g.10gb+1me", "1g.10gb+.me", "1g.10gb+me.", "1g.10gb+me,me", "1g.10gb+m_e",
    "1g.10gb++me", "1g.10gb+me,", "1g.-10gb",
])
def test_profile_grammar_refuses(text: str) -> None:
    # The message quotes the text it refuses, so a config's author can find it.
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        parse_profile(text)


def test_config_names_spell_plus_as_dot() -> None:
    assert config_name_for("1g.10gb+me") == "all-1g.10gb.me"
    assert config_name_for("3g.40gb") == "all-3g.40gb"


# -- dump ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_dump_round_trips(fmt: str) -> None:
    for text in [nvidia_default_text(), README_EXAMPLE]:
        file = spec.parse(text)
        again = spec.parse(spec.dump(file.configs, fmt))
        assert dict(again.configs) == dict(file.configs)


# -- resolving against a node --------------------------------------------------------------


def test_a_profile_the_gpu_lacks_names_the_gpu_and_what_it_offers() -> None:
    with pytest.raises(MigConfigError) as raised:
        resolve_entry("dgx-a100", devices="all", **{"mig-enabled": True,
                                                   "mig-devices": {"1g.5gb": 1}})
    error = raised.value
    assert (error.source, error.config, error.entry, error.gpu) == (SOURCE, "cfg", 0, 0)
    message = str(error)
    assert "GPU 0" in message
    assert "1g.5gb" in message
    for offered in ["1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb",
                    "7g.80gb"]:
        assert offered in message
    # A compute split the GI cannot hold is refused by the grammar already; one the GPU has
    # no such GI for is refused here.
    with pytest.raises(MigConfigError, match="GPU 3"):
        resolve_entry("dgx-a100", devices=[3], **{"mig-enabled": True,
                                                 "mig-devices": {"1c.5g.50gb": 1}})


@pytest.mark.parametrize("devices", [
    {"3g.40gb": 3},  # max 2
    {"1g.10gb+me": 2},  # max 1
    {"7g.80gb": 1, "1g.10gb": 1},  # the whole GPU plus more
    {"4g.40gb": 1, "3g.40gb": 1, "1g.10gb": 1},  # 8 of 8 memory slices are taken
    {"2g.20gb": 3, "1g.10gb": 2},  # 1g cannot start at slice 7
    {"1g.20gb": 4, "1g.10gb": 1},
    {"1c.3g.40gb": 7},  # needs three 3g instances
])
def test_instances_that_do_not_fit_are_refused(devices: dict[str, int]) -> None:
    with pytest.raises(MigConfigError) as raised:
        resolve_entry("dgx-a100", devices=[5], **{"mig-enabled": True, "mig-devices": devices})
    assert raised.value.gpu == 5
    assert "GPU 5" in str(raised.value)
    assert "fit" in str(raised.value)


@pytest.mark.parametrize("devices", [
    {"4g.40gb": 1, "3g.40gb": 1},  # 4g at 0:4, 3g at 4:4
    {"3g.40gb": 1, "2g.20gb": 2},  # only with 3g at 4:4 and the 2g at 0:2, 2:2
    {"2g.20gb": 3, "1g.10gb": 1},
    {"1g.10gb": 7},
    {"1g.10gb+me": 1, "1g.10gb": 6},
    {"1c.3g.40gb": 3, "3g.40gb": 1},
    {"1c.7g.80gb": 2, "2c.7g.80gb": 1, "3c.7g.80gb": 1},
])
def test_instances_that_fit_are_accepted(devices: dict[str, int]) -> None:
    result = resolve_entry("dgx-a100", devices=[5], **{"mig-enabled": True,
                                                      "mig-devices": devices})
    assert targets(result) == {5: (True, devices)}
    assert result.unmatched == (0, 1, 2, 3, 4, 6, 7)


def test_indices_the_node_lacks_are_skipped_and_named() -> None:
    # mig-parted's MatchesDevices only tests membership: GPU 8 is skipped on 8-GPU nodes.
    result = resolve_entry("dgx-a100", devices=[0, 8], **{"mig-enabled": False})
    assert targets(result) == {0: (False, {})}
    assert result.notes == ("entry 0: this node has no GPU 8; skipped there",)
    result = resolve_entry("dgx-a100", devices=[9], **{"mig-enabled": False})
    assert targets(result) == {}
    assert "entry 0: selects no GPU of this node; skipped" in result.notes


@pytest.mark.parametrize(("device_filter", "selected"), [
    ("", 8),                                 # mig-parted: the empty string is no filter
    ([], 8),
    ("0x20B210DE", 8),
    ("0x20b210de", 8),                       # ParseUint reads either case
    ("548540638", 8),                        # ...and decimal (0x20B210DE)
    (["0x233010DE", "0x20B210DE"], 8),       # any one of a list
    ("0x20B010DE", 0),                       # a 40GB part: not on this node
    ("A100-SXM4-80GB", 0),                   # a model name is no PCI ID: matches nothing
    (["MODEL1", "MODEL2"], 0),
    ([""], 0),                               # an empty string in a list is unreadable
    ("0x20B210DE:0x147E10DE:extra", 0),
    ("0x20B210DE:not-a-subsystem", 0),
    ("0x20B210DE:", 0),
    ("not-a-device-id", 0),
    (" 0x20B210DE", 0),
    ("-0x20B210DE", 0),
])
def test_device_filters_are_read_as_mig_parted_reads_them(
    device_filter: str | list[str], selected: int
) -> None:
    result = resolve_entry("dgx-a100", devices="all", **{
        "mig-enabled": False, "device-filter": device_filter})
    assert len(result.targets) == selected
    again = spec.parse(spec.dump(spec.from_data(one_entry(**{
        "devices": "all", "mig-enabled": False, "device-filter": device_filter})).configs))
    assert again.configs["cfg"][1].device_filter == spec.from_data(one_entry(**{
        "devices": "all", "mig-enabled": False, "device-filter": device_filter})
    ).configs["cfg"][1].device_filter


@pytest.mark.parametrize("count", [8, 10000, 10**30])
def test_a_count_beyond_the_profile_maximum_is_refused_before_any_search(count: int) -> None:
    with pytest.raises(MigConfigError) as raised:
        resolve_entry("dgx-a100", devices="all", **{
            "mig-enabled": True, "mig-devices": {"1g.10gb": count}})
    message = str(raised.value)
    assert (raised.value.entry, raised.value.gpu) == (0, 0)
    assert f"{count}x 1g.10gb" in message
    assert "at most 7" in message


def test_mig_on_an_explicit_non_mig_gpu_is_refused() -> None:
    with pytest.raises(MigConfigError) as raised:
        resolve_entry("mixed", devices=[0, 2], **{"mig-enabled": True, "mig-devices": {}})
    assert raised.value.gpu == 2
    assert "L40S" in str(raised.value)
    # MIG off on that GPU is what it already is: accepted, and left alone.
    assert targets(resolve_entry("mixed", devices=[2], **{"mig-enabled": False})) == {}


def test_devices_all_skips_gpus_without_mig() -> None:
    result = resolve_entry("mixed", devices="all", **{"mig-enabled": True,
                                                     "mig-devices": {"3g.40gb": 2}})
    assert targets(result) == {0: (True, {"3g.40gb": 2}), 1: (True, {"3g.40gb": 2})}
    assert result.unmatched == ()


def test_later_entries_win_for_a_gpu() -> None:
    file = spec.from_data({"version": "v1", "mig-configs": {"c": [
        {"devices": "all", "mig-enabled": False},
        {"devices": [1], "mig-enabled": True, "mig-devices": {"7g.80gb": 1}},
    ]}})
    result = targets(resolve(file, "c", facts("mixed")))
    assert result == {0: (False, {}), 1: (True, {"7g.80gb": 1})}


# -- fuzzing: the parser only ever refuses with MigConfigError ---------------------------

VOCABULARY = ["version", "mig-configs", "devices", "mig-enabled", "mig-devices",
              "device-filter", "all", "v1", "1g.10gb", "3g.40gb", "1c.3g.40gb", "1g.10gb+me",
              "0x20B210DE", "0x20B010DE:0x134F10DE"]
scalars = (st.none() | st.booleans() | st.integers(-3, 10) | st.integers()
           | st.floats(allow_nan=True) | st.sampled_from(VOCABULARY) | st.text(max_size=12))
keys = st.sampled_from(VOCABULARY) | st.text(max_size=8) | st.integers(-2, 3) | st.booleans()
nested = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=25,
)
profiles = st.sampled_from(["1g.10gb", "1g.10gb+me", "3g.40gb", "1c.3g.40gb", "7g.80gb",
                            "2g.20gb", "1g.24gb-me", "1g.24gb+me.all"])
entries = st.fixed_dictionaries(
    {},
    optional={
        "devices": st.just("all") | st.lists(st.integers(-1, 9), max_size=4) | scalars,
        "mig-enabled": st.booleans() | scalars,
        "mig-devices": st.dictionaries(profiles | st.text(max_size=8),
                                       st.integers(-1, 8) | scalars, max_size=4) | scalars,
        "device-filter": (st.sampled_from(["0x20B210DE", "0x20B010DE:0x134F10DE", "0x20B0"])
                          | st.lists(st.sampled_from(["0x20B210DE", "0x233010DE"]), max_size=3)
                          | scalars),
        "extra": scalars,
    },
)
near_valid = st.fixed_dictionaries(
    {"version": st.just("v1") | scalars,
     "mig-configs": st.dictionaries(st.text(min_size=1, max_size=10), st.lists(entries,
                                                                                max_size=3),
                                    max_size=3) | nested},
)
YAML_ALPHABET = "{}[]:,-!&*?|>'\"\n #0123456789abcgxyz.+v"

FUZZ = settings(max_examples=400, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def check_outcome(run: Any) -> None:
    """The call either gives a well-formed config or refuses with a MigConfigError."""
    try:
        file = run()
    except MigConfigError as e:
        refused = str(e)
    else:
        refused = None
    if refused is not None:
        assert refused.strip()
        return
    assert file.configs
    for entries_ in file.configs.values():
        assert entries_
        for entry in entries_:
            assert entry.devices is None or (
                entry.devices and len(set(entry.devices)) == len(entry.devices)
                and min(entry.devices) >= 0)
            assert all(n > 0 for _, n in entry.mig_devices)
            if not entry.mig_enabled:
                assert entry.mig_devices == ()


@FUZZ
@given(st.text(max_size=200))
def test_fuzz_arbitrary_text(text: str) -> None:
    check_outcome(lambda: spec.parse(text, source="fuzz.yaml"))


@FUZZ
@given(st.text(alphabet=YAML_ALPHABET, max_size=120))
def test_fuzz_yaml_like_text(text: str) -> None:
    check_outcome(lambda: spec.parse(text, source="fuzz.yaml"))


@FUZZ
@given(nested)
def test_fuzz_arbitrary_data(data: Any) -> None:
    check_outcome(lambda: spec.from_data(data, source="fuzz.yaml"))


@FUZZ
@given(near_valid)
def test_fuzz_near_valid_files(data: dict[str, Any]) -> None:
    check_outcome(lambda: spec.from_data(data, source="fuzz.yaml"))
    # The same data written as YAML text is judged the same way.
    try:
        text = yaml.safe_dump(data)
    except yaml.YAMLError:
        return
    check_outcome(lambda: spec.parse(text, source="fuzz.yaml"))


valid_entries = st.builds(
    lambda devices, enabled, devs, flt: {
        "devices": devices, "mig-enabled": enabled,
        **({"mig-devices": devs} if enabled else {}),
        **({"device-filter": flt} if flt else {}),
    },
    st.just("all") | st.lists(st.integers(0, 15), min_size=1, max_size=5, unique=True),
    st.booleans(),
    st.dictionaries(profiles, st.integers(1, 7), max_size=4),
    st.none() | st.sampled_from(["0x20B210DE", "0x20b010de:0x134f10de"])
    | st.lists(st.sampled_from(["0x20B210DE", "0x233010DE", "0x20B710DE"]), min_size=1,
               max_size=3, unique=True),
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(alphabet="abcxyz-.0123456789", min_size=1, max_size=12),
                       st.lists(valid_entries, min_size=1, max_size=3), min_size=1, max_size=4),
       st.sampled_from(["yaml", "json"]))
def test_dump_then_parse_is_identity(configs: dict[str, list[dict[str, Any]]], fmt: str) -> None:
    file = spec.from_data({"version": "v1", "mig-configs": configs})
    again = spec.parse(spec.dump(file.configs, fmt))
    assert dict(again.configs) == dict(file.configs)
