"""Device plugin config v1: NVIDIA's format and rules, Tessera's extensions, overrides, sets.

The rules come from `reference/device-plugin.md` §1 (NVIDIA's `api/config/v1`): every file
NVIDIA's plugin accepts must mean the same here, every rule that makes NVIDIA refuse a file
must make Tessera refuse it with NVIDIA's words, and every error is one `PluginConfigError`
that names the file, the named config and the field path, so the operator can find the line.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from tessera.errors import PluginConfigError
from tessera.plugin.config import (
    DEFAULT_IGNORED_XIDS,
    DeviceRef,
    DeviceSelector,
    Flags,
    Health,
    Imex,
    PluginConfig,
    PluginFlags,
    Replicas,
    SharedResource,
    Sharing,
    default_config,
    load_file,
    load_set,
    parse,
    with_overrides,
)
from tessera.plugin.config import overrides as pc
from tessera.units import parse_duration, parse_memory

SOURCE = "configs/plugin.yaml"
GPU_UUID = "GPU-b1028956-cfa2-0990-bf4a-5da9abb51763"
MIG_UUID = "MIG-a1028956-cfa2-0990-bf4a-5da9abb51763"
LEGACY_MIG_UUID = f"MIG-{GPU_UUID}/3/0"

# reference §1.5, verbatim (NVIDIA's README "full example").
FULL_EXAMPLE = """\
version: v1
flags:
  migStrategy: "none"
  failOnInitError: true
  nvidiaDriverRoot: "/"
  plugin:
    passDeviceSpecs: false
    deviceListStrategy: "envvar"      # or [envvar, cdi-annotations]
    deviceIDStrategy: "uuid"
sharing:
  timeSlicing:
    renameByDefault: true
    failRequestsGreaterThanOne: true
    resources:
    - name: nvidia.com/gpu
      replicas: 4
    - name: nvidia.com/mig-1g.10gb    # only with migStrategy: mixed
      replicas: 2
"""

MPS_EXAMPLE = "sharing: {mps: {resources: [{name: nvidia.com/gpu, replicas: 10}]}}"


def fails(data: str | dict[str, Any], *, name: str | None = "sliced") -> PluginConfigError:
    with pytest.raises(PluginConfigError) as caught:
        parse(data, source=SOURCE, name=name)
    error = caught.value
    assert str(error).startswith(SOURCE), "every error names the file"
    if name is not None:
        assert f"config {name!r}" in str(error), "every error names the config"
    return error


def shared(
    resource: dict[str, Any], kind: str = "timeSlicing", *, opt_in: tuple[str, ...] = (),
    **sharing: Any,
) -> dict[str, Any]:
    """A file sharing one resource, so tests state only what they are about; `opt_in` names
    the `tessera.extensions` it turns on."""
    data: dict[str, Any] = {"version": "v1",
                            "sharing": {kind: {"resources": [resource], **sharing}}}
    if opt_in:
        data["tessera"] = {"extensions": dict.fromkeys(opt_in, True)}
    return data


OPT_IN_BOTH_KINDS = (
    "tessera: {extensions: {devices: true, rename: true, timeSlicingWithMps: true}}\n")


def only_resource(config: PluginConfig) -> SharedResource:
    (sharing,) = config.sharing
    (resource,) = sharing.resources
    return resource


# -- NVIDIA's examples ----------------------------------------------------------------------


def test_full_example_parses_to_nvidias_meaning() -> None:
    config = parse(FULL_EXAMPLE, source=SOURCE)
    assert config.flags == Flags(
        mig_strategy="none", fail_on_init_error=True, nvidia_driver_root="/",
        nvidia_dev_root="/", plugin=PluginFlags(pass_device_specs=False,
                                                device_list_strategy=("envvar",),
                                                device_id_strategy="uuid"),
    )
    assert config.sharing == (Sharing(
        kind="time-slicing", rename_by_default=True, fail_requests_greater_than_one=True,
        resources=(
            SharedResource("nvidia.com/gpu", Replicas(count=4), "nvidia.com/gpu.shared"),
            SharedResource("nvidia.com/mig-1g.10gb", Replicas(count=2),
                           "nvidia.com/mig-1g.10gb.shared"),
        ),
    ),)
    assert (config.imex, config.exclude, config.health) == (Imex(), (), Health())
    # The example's own comment: MIG resources exist only with migStrategy mixed.
    (warning,) = config.warnings
    assert "nvidia.com/mig-1g.10gb exists only with migStrategy mixed" in warning


def test_full_example_with_mixed_strategy_has_no_warning() -> None:
    config = parse(FULL_EXAMPLE.replace('migStrategy: "none"', "migStrategy: mixed"))
    assert config.flags.mig_strategy == "mixed"
    assert config.warnings == ()


def test_mps_example_fails_requests_for_more_than_one_replica_by_default() -> None:
    config = parse(MPS_EXAMPLE)
    assert config.sharing == (Sharing(
        kind="mps", rename_by_default=False, fail_requests_greater_than_one=True,
        resources=(SharedResource("nvidia.com/gpu", Replicas(count=10)),),
    ),)
    explicit = parse(shared({"name": "gpu", "replicas": 10}, "mps",
                            failRequestsGreaterThanOne=False))
    assert explicit.sharing[0].fail_requests_greater_than_one is False


def test_time_slicing_allows_requests_for_more_than_one_replica_by_default() -> None:
    config = parse(shared({"name": "gpu", "replicas": 2}))
    assert config.sharing[0].fail_requests_greater_than_one is False


def test_imex_example() -> None:
    assert parse("imex: {channelIDs: [0], required: true}").imex == Imex((0,), True)
    assert parse("imex: {channelIDs: []}").imex == Imex((), False)


def test_json_is_read_like_yaml() -> None:
    text = json.dumps(yaml.safe_load(FULL_EXAMPLE))
    assert parse(text) == parse(FULL_EXAMPLE)


def test_every_nvidia_flag_is_accepted_including_gfds_own() -> None:
    config = parse("""
version: v1
flags:
  migStrategy: mixed
  failOnInitError: false
  nvidiaDriverRoot: /run/nvidia/driver
  nvidiaDevRoot: /
  mpsRoot: /var/mps
  gdrcopyEnabled: true
  gdsEnabled: true
  mofedEnabled: true
  useNodeFeatureAPI: false
  deviceDiscoveryStrategy: nvml
  plugin:
    passDeviceSpecs: true
    deviceListStrategy: [envvar, cdi-annotations, cdi-cri, volume-mounts]
    deviceIDStrategy: index
    cdiAnnotationPrefix: cdi.example.com/
    nvidiaCTKPath: /opt/nvidia-ctk
    containerDriverRoot: /host-driver
    sharedDevicesAllocationPolicy: packed
  gfd:
    oneshot: true
    noTimestamp: true
    sleepInterval: 60s
    outputFile: /tmp/gfd
    machineTypeFile: /sys/class/dmi/id/product_name
resources:
  gpus: []
imex: {channelIDs: [0], required: true}
""")
    assert config.flags == Flags(
        mig_strategy="mixed", fail_on_init_error=False, nvidia_driver_root="/run/nvidia/driver",
        nvidia_dev_root="/", mps_root="/var/mps", gdrcopy_enabled=True, gds_enabled=True,
        mofed_enabled=True, device_discovery_strategy="nvml", gfd_no_timestamp=True,
        plugin=PluginFlags(
            pass_device_specs=True,
            device_list_strategy=("envvar", "cdi-annotations", "cdi-cri", "volume-mounts"),
            device_id_strategy="index", cdi_annotation_prefix="cdi.example.com/",
            nvidia_ctk_path="/opt/nvidia-ctk", container_driver_root="/host-driver",
            shared_devices_allocation_policy="packed",
        ),
    )
    assert config.warnings == (), "GFD's flags and an empty `resources` are taken silently"


# -- defaults ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n", "{}", "version: v1",
                                  'version: ""', "version:", "sharing: {}", "flags: {}",
                                  "tessera: {}", "sharing:\n  timeSlicing:\n"])
def test_empty_configs_are_the_default(text: str) -> None:
    assert parse(text) == default_config()


def test_defaults_are_nvidias() -> None:
    config = default_config()
    flags = config.flags
    assert (flags.mig_strategy, flags.fail_on_init_error, flags.nvidia_driver_root,
            flags.nvidia_dev_root, flags.mps_root) == ("none", True, "/", "/", "")
    assert (flags.gdrcopy_enabled, flags.gds_enabled, flags.mofed_enabled) == (False,) * 3
    assert flags.plugin == PluginFlags(
        pass_device_specs=False, device_list_strategy=("envvar",), device_id_strategy="uuid",
        cdi_annotation_prefix="cdi.k8s.io/", nvidia_ctk_path="/usr/bin/nvidia-ctk",
        container_driver_root="/driver-root", shared_devices_allocation_policy="distributed",
    )
    assert (config.sharing, config.exclude, config.imex) == ((), (), Imex((), False))
    assert config.health == Health(False, frozenset({13, 31, 43, 45, 68, 109}), frozenset(), 60.0)
    assert config.warnings == ()


def test_dev_root_defaults_to_the_driver_root() -> None:
    assert parse("flags: {nvidiaDriverRoot: /run/nvidia/driver}").flags.nvidia_dev_root == (
        "/run/nvidia/driver")
    assert parse('flags: {nvidiaDriverRoot: /d, nvidiaDevRoot: ""}').flags.nvidia_dev_root == "/d"
    assert parse("flags: {nvidiaDriverRoot: /d, nvidiaDevRoot: /}").flags.nvidia_dev_root == "/"


def test_device_list_strategy_is_a_string_or_a_list() -> None:
    def strategies(value: str) -> tuple[str, ...]:
        return parse(f"flags: {{plugin: {{deviceListStrategy: {value}}}}}").flags.plugin \
            .device_list_strategy

    assert strategies("cdi-cri") == ("cdi-cri",)
    assert strategies("[envvar, cdi-annotations]") == ("envvar", "cdi-annotations")
    assert strategies("[envvar, envvar]") == ("envvar",)


def test_empty_file_and_no_file_agree(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("")
    assert load_file(tmp_path / "empty.yaml") == default_config()


# -- NVIDIA's validation rules, with NVIDIA's messages -----------------------------------------


@pytest.mark.parametrize(("data", "field", "message"), [
    pytest.param("version: v2", "version", "unknown version: 'v2'", id="version"),
    pytest.param("version: 1", "version", "unknown version: 1", id="version-number"),
    pytest.param({"sharing": {"timeSlicing": {"renameByDefault": True}}},
                 "sharing.timeSlicing.resources", "no resources specified", id="no-resources"),
    pytest.param({"sharing": {"mps": {"resources": []}}},
                 "sharing.mps.resources", "no resources specified", id="empty-resources"),
    pytest.param(shared({"replicas": 2}), "sharing.timeSlicing.resources[0]",
                 "no resource name specified", id="no-name"),
    pytest.param(shared({"name": "gpu"}), "sharing.timeSlicing.resources[0].replicas",
                 "no replicas specified", id="no-replicas"),
    pytest.param(shared({"name": "gpu", "replicas": None}),
                 "sharing.timeSlicing.resources[0].replicas", "no replicas specified",
                 id="null-replicas"),
    pytest.param(shared({"name": "gpu", "replicas": 1}),
                 "sharing.timeSlicing.resources[0].replicas", "number of replicas must be >= 2",
                 id="one-replica"),
    pytest.param(shared({"name": "gpu", "replicas": 0}, "mps"),
                 "sharing.mps.resources[0].replicas", "number of replicas must be >= 2",
                 id="zero-replicas"),
    pytest.param(shared({"name": "gpu", "replicas": -3}),
                 "sharing.timeSlicing.resources[0].replicas", "number of replicas must be >= 2",
                 id="negative-replicas"),
    pytest.param(shared({"name": "gpu", "replicas": 2, "devices": "some"}),
                 "sharing.timeSlicing.resources[0].devices",
                 "devices set as 'some' but the only valid string input is 'all'",
                 id="devices-str"),
    pytest.param(shared({"name": "gpu", "replicas": 2, "devices": 0}),
                 "sharing.timeSlicing.resources[0].devices",
                 "devices set as '0' but a count of devices must be > 0", id="devices-zero"),
    pytest.param(shared({"name": "gpu", "replicas": 2, "devices": -1}),
                 "sharing.timeSlicing.resources[0].devices", "a count of devices must be > 0",
                 id="devices-negative"),
    pytest.param(shared({"name": "gpu", "replicas": 2, "devices": ["GPU-nope"]}),
                 "sharing.timeSlicing.resources[0].devices[0]", "unsupported device 'GPU-nope'",
                 id="devices-bad-uuid"),
    pytest.param(shared({"name": "gpu", "replicas": 2, "devices": {"a": 1}}),
                 "sharing.timeSlicing.resources[0].devices",
                 "unrecognized type for devices spec", id="devices-mapping"),
    pytest.param(shared({"name": "nvidia.com/mig-1g.10gb", "replicas": 2}, "mps"),
                 "sharing.mps.resources[0].name",
                 "sharing using MPS is not supported for MIG devices", id="mps-mig"),
    pytest.param("imex: {channelIDs: [1]}", "imex.channelIDs",
                 "invalid IMEX config: channelIDs must be [] or [0]; found [1]", id="imex-1"),
    pytest.param("imex: {channelIDs: [0, 0]}", "imex.channelIDs",
                 "channelIDs must be [] or [0]", id="imex-twice"),
    pytest.param("resources: {gpus: [{name: gpu}]}", "resources.gpus[0]",
                 "resources must have a 'pattern' field set", id="resources-pattern"),
    pytest.param("resources: {mig: [{pattern: '*'}]}", "resources.mig[0]",
                 "resources must have a 'name' field set", id="resources-name"),
    pytest.param("resources: {gpus: [{pattern: '*', name: 'bad name'}]}",
                 "resources.gpus[0].name", "invalid resource name 'bad name'",
                 id="resources-bad-name"),
    pytest.param("flags: {plugin: {deviceListStrategy: [envvar, mounts]}}",
                 "flags.plugin.deviceListStrategy", "unknown device list strategy 'mounts'",
                 id="list-strategy"),
    pytest.param("flags: {plugin: {deviceListStrategy: []}}",
                 "flags.plugin.deviceListStrategy", "give at least one of envvar",
                 id="list-strategy-empty"),
    pytest.param("flags: {plugin: {deviceListStrategy: 3}}",
                 "flags.plugin.deviceListStrategy", "invalid deviceListStrategy: 3",
                 id="list-strategy-number"),
    pytest.param("flags: {plugin: {deviceIDStrategy: serial}}",
                 "flags.plugin.deviceIDStrategy", "expected one of 'uuid' or 'index'",
                 id="id-strategy"),
    pytest.param("flags: {migStrategy: all}", "flags.migStrategy",
                 "expected one of 'none', 'single' or 'mixed'", id="mig-strategy"),
    pytest.param("flags: {plugin: {sharedDevicesAllocationPolicy: spread}}",
                 "flags.plugin.sharedDevicesAllocationPolicy", "'distributed' or 'packed'",
                 id="allocation-policy"),
    pytest.param("flags: {failOnInitError: 'true'}", "flags.failOnInitError",
                 "got 'true': expected true or false", id="quoted-bool"),
    pytest.param(shared({"name": "gpu", "replicas": "4"}),
                 "sharing.timeSlicing.resources[0].replicas", "got '4'", id="quoted-replicas"),
    pytest.param(shared({"name": "gpu", "replicas": True}),
                 "sharing.timeSlicing.resources[0].replicas", "got True", id="bool-replicas"),
    pytest.param(shared({"name": "gpu", "replicas": 2.5}),
                 "sharing.timeSlicing.resources[0].replicas", "whole number", id="float-replicas"),
    pytest.param({"sharing": {"timeSlicing": {"resources": "gpu"}}},
                 "sharing.timeSlicing.resources", "got 'gpu': expected a list", id="not-a-list"),
    pytest.param({"sharing": {"timeSlicing": {"resources": ["gpu"]}}},
                 "sharing.timeSlicing.resources[0]",
                 "expected a mapping with name, replicas, rename, devices", id="entry-not-map"),
])
def test_nvidia_rules_refuse_with_nvidias_words(
    data: str | dict[str, Any], field: str, message: str
) -> None:
    error = fails(data)
    assert error.field == field
    assert message in error.reason


def test_errors_say_what_to_do() -> None:
    assert "timeSlicing" in fails(shared({"name": "mig-1g.10gb", "replicas": 2}, "mps")).reason
    assert "leave it out" in fails("version: v2").reason
    assert "one replica is no sharing" in fails(shared({"name": "gpu", "replicas": 1})).reason
    assert "name: nvidia.com/gpu" in fails(shared({"replicas": 2})).reason


def test_a_resource_listed_twice_in_one_kind_is_refused_when_both_take_all() -> None:
    data = {"sharing": {"timeSlicing": {"resources": [
        {"name": "gpu", "replicas": 2}, {"name": "nvidia.com/gpu", "replicas": 4}]}}}
    error = fails(data)
    assert error.field == "sharing.timeSlicing.resources[1].name"
    assert "nvidia.com/gpu is listed twice (also in resources[0])" in error.reason


def test_a_resource_listed_twice_with_own_devices_gives_per_gpu_replica_counts() -> None:
    config = parse({"sharing": {"timeSlicing": {"resources": [
        {"name": "gpu", "replicas": 2, "devices": [0, 1]},
        {"name": "gpu", "replicas": 8, "devices": [2, 3]}]}},
        "tessera": {"extensions": {"devices": True}}})
    (sharing,) = config.sharing
    assert [(r.name, r.replicas.count) for r in sharing.resources] == [
        ("nvidia.com/gpu", 2), ("nvidia.com/gpu", 8)]


@pytest.mark.parametrize(("name", "full"), [
    ("gpu", "nvidia.com/gpu"),
    ("nvidia.com/gpu", "nvidia.com/gpu"),
    ("mig-1g.10gb", "nvidia.com/mig-1g.10gb"),
    ("nvidia.com/mig-3g.40gb", "nvidia.com/mig-3g.40gb"),
    ("mig-1g.10gb.me", "nvidia.com/mig-1g.10gb.me"),
    ("mig-1g.23gb.me.all", "nvidia.com/mig-1g.23gb.me.all"),
    ("mig-1g.23gb.gfx", "nvidia.com/mig-1g.23gb.gfx"),
    ("mig-1g.23gb-me", "nvidia.com/mig-1g.23gb-me"),
    ("mig-1c.3g.40gb", "nvidia.com/mig-1c.3g.40gb"),
])
def test_shareable_resource_names_get_nvidias_prefix(name: str, full: str) -> None:
    assert only_resource(parse(shared({"name": name, "replicas": 2}))).name == full


@pytest.mark.parametrize(("name", "full"), [
    ("tpu", "nvidia.com/tpu"),
    ("valid", "nvidia.com/valid"),
    ("example.com/gpu", "example.com/gpu"),
    ("nvidia.com/mig-1g", "nvidia.com/mig-1g"),
    ("mig-0g.10gb", "nvidia.com/mig-0g.10gb"),
])
def test_other_valid_names_are_accepted_and_warned_as_nvidia_skips_them(
    name: str, full: str
) -> None:
    """NVIDIA's replicas_test accepts `name: valid`; its device map skips what matches nothing."""
    config = parse(shared({"name": name, "replicas": 2}))
    assert only_resource(config).name == full
    (warning,) = config.warnings
    assert warning.startswith(f"sharing.timeSlicing.resources[0].name: {full} is not a resource")
    assert "nothing is shared under it" in warning


@pytest.mark.parametrize(("name", "hint"), [
    ("$invalid$", "invalid resource name '$invalid$'"),
    ("mig-1g.10gb+me", "write '+' as '.': nvidia.com/mig-1g.10gb.me"),
    ("a/b/c", "expected <domain>/<name>"),
])
def test_invalid_resource_names_cannot_be_shared(name: str, hint: str) -> None:
    error = fails(shared({"name": name, "replicas": 2}))
    assert error.field == "sharing.timeSlicing.resources[0].name"
    assert hint in error.reason


def test_resource_name_must_be_a_string() -> None:
    error = fails(shared({"name": 7, "replicas": 2}))
    assert "expected a resource name" in error.reason


# -- keys nobody defines --------------------------------------------------------------------


@pytest.mark.parametrize(("data", "field", "hint"), [
    pytest.param(shared({"name": "gpu", "replicas": 2, "renme": "gpu-shared"}),
                 "sharing.timeSlicing.resources[0].renme", "did you mean 'rename'?",
                 id="typo"),
    pytest.param(shared({"name": "gpu", "replicas": 2, "bogus": 1}),
                 "sharing.timeSlicing.resources[0].bogus",
                 "fields here: name, replicas, rename, devices", id="entry"),
    pytest.param("flags: {migstrategy: none}", "flags.migstrategy",
                 "did you mean 'migStrategy'?", id="case"),
    pytest.param("flags: {plugin: {deviceIdStrategy: uuid}}", "flags.plugin.deviceIdStrategy",
                 "did you mean 'deviceIDStrategy'?", id="case-nvidia-spelling"),
    pytest.param("flags: {deviceListStrategy: envvar}", "flags.deviceListStrategy",
                 "it belongs in flags.plugin", id="misplaced"),
    pytest.param("renameByDefault: true", "renameByDefault",
                 "it belongs in sharing.timeSlicing or sharing.mps", id="misplaced-top"),
    pytest.param("sharing: {timeslicing: {resources: []}}", "sharing.timeslicing",
                 "did you mean 'timeSlicing'?", id="kind-case"),
    pytest.param("sharing: {timeSlicing: {strategy: round-robin, "
                 "resources: [{name: gpu, replicas: 2}]}}",
                 "sharing.timeSlicing.strategy",
                 "fields here: renameByDefault, failRequestsGreaterThanOne, resources",
                 id="removed-field"),
    pytest.param("health: {disabled: true}", "health", "it belongs in tessera", id="health"),
    pytest.param("tessera: {excludeDevice: [0]}", "tessera.excludeDevice",
                 "did you mean 'excludeDevices'?", id="tessera"),
    pytest.param("tessera: {health: {ignoredXIDs: [79]}}", "tessera.health.ignoredXIDs",
                 "did you mean 'ignoredXids'?", id="health-case"),
    pytest.param("tessera: {extensions: {device: true}}", "tessera.extensions.device",
                 "did you mean 'devices'?", id="extensions"),
    pytest.param("flags: {gfd: {sleep: 5s}}", "flags.gfd.sleep", "fields here: oneshot",
                 id="gfd"),
    pytest.param("flags: {plugin: {bogus: 1}}", "flags.plugin.bogus",
                 "fields here: passDeviceSpecs", id="plugin-flag"),
    pytest.param("bogus: 1", "bogus",
                 "fields here: version, flags, resources, sharing, imex, tessera", id="top"),
])
def test_unknown_keys_are_ignored_with_one_warning_naming_their_path(
    data: str | dict[str, Any], field: str, hint: str
) -> None:
    """NVIDIA's plugin ignores unknown fields, so a newer NVIDIA field never takes a node
    down; the warning still catches a typo."""
    config = parse(data)
    (warning,) = [w for w in config.warnings if "unknown field" in w]
    assert warning.startswith(f"{field}: unknown field {field.rsplit('.', 1)[-1]!r}")
    assert hint in warning
    assert "ignored, as NVIDIA's plugin ignores fields it does not know" in warning


def test_many_or_long_unknown_keys_give_few_short_warnings() -> None:
    data: dict[str, Any] = {f"field{i}": i for i in range(5000)}
    data["x" * 10_000] = 1
    warnings = parse(data).warnings
    assert len(warnings) == 11
    assert warnings[-1] == "… and 4991 more unknown fields, also ignored"
    assert all(len(w) < 1000 for w in warnings)


def test_unknown_keys_leave_the_config_as_without_them() -> None:
    assert parse("bogus: 1\nflags: {migStrategy: mixed, bogusFlag: 2}") == parse(
        "flags: {migStrategy: mixed}")


def test_an_unknown_key_in_tesseras_replicas_mapping_is_refused() -> None:
    """`replicas: {…}` is Tessera's own form (NVIDIA's plugin refuses it), kept strict."""
    error = fails(shared({"name": "gpu", "replicas": {"memPerReplica": "1Gi"}}))
    assert error.field == "sharing.timeSlicing.resources[0].replicas.memPerReplica"
    assert "did you mean 'memoryPerReplica'?" in error.reason


def test_keys_must_be_strings() -> None:
    assert "field names are strings" in fails({"flags": {1: "x"}}).reason


@pytest.mark.parametrize("data", ["just text", "- a\n- b", "42", "true"])
def test_the_file_must_be_a_mapping(data: str) -> None:
    assert "expected a mapping with version, flags, sharing" in fails(data).reason


def test_resources_are_accepted_and_ignored_with_a_warning() -> None:
    config = parse("resources: {gpus: [{pattern: '*', name: gpu}], mig: [{pattern: 1g.10gb, "
                   "name: mig-1g.10gb}]}")
    (warning,) = config.warnings
    assert warning.startswith("resources: customizing resource names is not supported")
    assert config == default_config(), "only the warning differs"


def test_tegra_discovery_is_accepted_with_a_warning() -> None:
    (warning,) = parse("flags: {deviceDiscoveryStrategy: tegra}").warnings
    assert "NVML" in warning
    assert parse("flags: {deviceDiscoveryStrategy: auto}").warnings == ()
    from_env = with_overrides(default_config(), {"DEVICE_DISCOVERY_STRATEGY": "tegra"})
    assert from_env.flags.device_discovery_strategy == "tegra"
    assert any("tegra is ignored" in w for w in from_env.warnings)
    with pytest.raises(PluginConfigError) as caught:
        with_overrides(default_config(), {}, device_discovery_strategy="bogus")
    assert caught.value.source == "option --device-discovery-strategy"


# -- rename -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("resource", "by_default", "rename"), [
    ({"name": "gpu"}, False, None),
    ({"name": "gpu"}, True, "nvidia.com/gpu.shared"),
    ({"name": "mig-1g.10gb.me"}, True, "nvidia.com/mig-1g.10gb.me.shared"),
    ({"name": "gpu", "rename": "gpu-shared"}, False, "nvidia.com/gpu-shared"),
    ({"name": "gpu", "rename": "gpu-shared"}, True, "nvidia.com/gpu-shared"),
    ({"name": "gpu", "rename": "example.com/shared-gpu"}, False, "example.com/shared-gpu"),
    ({"name": "gpu", "rename": ""}, True, "nvidia.com/gpu.shared"),
    # Renaming to its own name is how one resource keeps its name under renameByDefault.
    ({"name": "gpu", "rename": "nvidia.com/gpu"}, True, None),
    ({"name": "gpu", "rename": "gpu"}, False, None),
])
def test_rename_resolution_with_the_rename_extension(
    resource: dict[str, Any], by_default: bool, rename: str | None
) -> None:
    config = parse(shared({**resource, "replicas": 2}, renameByDefault=by_default,
                          opt_in=("rename",)))
    assert only_resource(config).rename == rename
    assert only_resource(config).advertised_name == rename or only_resource(config).name


@pytest.mark.parametrize(("rename", "by_default", "advertised", "warned"), [
    (None, False, "nvidia.com/gpu", False),
    (None, True, "nvidia.com/gpu.shared", False),
    ("gpu-shared", False, "nvidia.com/gpu", True),  # rr_gpu_rename_no_default
    ("gpu-shared", True, "nvidia.com/gpu.shared", True),  # rr_gpu_rename_with_default
    ("gpu.shared", True, "nvidia.com/gpu.shared", False),
    ("nvidia.com/gpu", True, "nvidia.com/gpu.shared", True),
    ("nvidia.com/gpu", False, "nvidia.com/gpu", False),
    ("mig-1g.10gb", False, "nvidia.com/gpu", True),  # dropped, so no clash to refuse
])
def test_rename_is_nvidias_by_default(
    rename: str | None, by_default: bool, advertised: str, warned: bool
) -> None:
    """NVIDIA's plugin drops `rename`, giving `<name>.shared` under renameByDefault only."""
    entry: dict[str, Any] = {"name": "gpu", "replicas": 2}
    if rename is not None:
        entry["rename"] = rename
    config = parse(shared(entry, renameByDefault=by_default))
    assert only_resource(config).advertised_name == advertised
    warnings = [w for w in config.warnings if ".rename:" in w]
    assert bool(warnings) == warned
    if warned:
        assert warnings[0].startswith(f"sharing.timeSlicing.resources[0].rename: ignored, "
                                      f"{advertised} is advertised, as NVIDIA's plugin does")
        assert "set tessera.extensions.rename: true" in warnings[0]


def test_an_honoured_rename_warns_what_nvidia_would_advertise() -> None:
    config = parse(shared({"name": "gpu", "replicas": 2, "rename": "gpu-shared"},
                          opt_in=("rename",)))
    assert only_resource(config).advertised_name == "nvidia.com/gpu-shared"
    (warning,) = config.warnings
    assert "NVIDIA's plugin drops `rename` and would advertise nvidia.com/gpu" in warning


@pytest.mark.parametrize(("rename", "problem"), [
    ("x" * 64, "64 characters; at most 63"),
    ("gpu shared", "letters, digits"),
    ("-gpu", "starting and ending with a letter or digit"),
    ("Example.com/gpu", "is not a DNS domain"),
    ("a/b/c", "expected <domain>/<name>"),
    ("/gpu", "expected <domain>/<name>"),
    ("kubernetes.io/gpu", "reserved for Kubernetes"),
    ("node.kubernetes.io/gpu", "reserved for Kubernetes"),
    ("mig-1g.10gb", "the name unshared devices are advertised under"),
])
def test_invalid_renames_are_refused(rename: str, problem: str) -> None:
    error = fails(shared({"name": "gpu", "replicas": 2, "rename": rename}, opt_in=("rename",)))
    assert error.field == "sharing.timeSlicing.resources[0].rename"
    assert problem in error.reason


def test_rename_must_be_a_string() -> None:
    assert "expected a resource name" in fails(
        shared({"name": "gpu", "replicas": 2, "rename": ["x"]})).reason


def test_an_invalid_rename_is_refused_even_where_it_would_be_dropped() -> None:
    error = fails(shared({"name": "gpu", "replicas": 2, "rename": "$invalid$"}))
    assert error.field == "sharing.timeSlicing.resources[0].rename"  # rr_gpu_invalid_rename
    assert "'$invalid$' is not a valid resource name" in error.reason


def test_a_63_character_rename_is_fine() -> None:
    config = parse(shared({"name": "gpu", "replicas": 2, "rename": "g" * 63},
                          opt_in=("rename",)))
    assert only_resource(config).rename == "nvidia.com/" + "g" * 63


def test_entries_advertised_under_one_name_are_left_to_the_node() -> None:
    """Whether their devices overlap depends on the node, so parsing accepts them."""
    config = parse(OPT_IN_BOTH_KINDS + """
sharing:
  timeSlicing: {resources: [{name: gpu, replicas: 2, devices: [0]}]}
  mps: {resources: [{name: gpu, replicas: 2, devices: [1]}]}
""")
    assert [r.advertised_name for s in config.sharing for r in s.resources] == [
        "nvidia.com/gpu", "nvidia.com/gpu"]


def test_time_slicing_and_mps_can_share_different_gpus_under_different_names() -> None:
    config = parse(OPT_IN_BOTH_KINDS + """
sharing:
  timeSlicing:
    resources: [{name: gpu, replicas: 4, devices: [0, 1], rename: gpu-sliced}]
  mps:
    resources: [{name: gpu, replicas: 2, devices: [2, 3], rename: gpu-mps}]
""")
    assert [s.kind for s in config.sharing] == ["time-slicing", "mps"]
    assert [r.rename for s in config.sharing for r in s.resources] == [
        "nvidia.com/gpu-sliced", "nvidia.com/gpu-mps"]
    assert config.sharing_for("gpu") == (config.sharing[0], config.sharing[0].resources[0])
    assert config.sharing_for("nvidia.com/mig-1g.10gb") is None
    assert any("NVIDIA's plugin would use mps alone" in w for w in config.warnings)


def test_time_slicing_beside_mps_is_dropped_as_nvidia_does() -> None:
    """NVIDIA's SharingStrategy(): MPS with replicas wins and timeSlicing is unused (ts_and_mps)."""
    config = parse("""
sharing:
  timeSlicing: {resources: [{name: gpu, replicas: 4}]}
  mps: {resources: [{name: gpu, replicas: 2}]}
""")
    assert [(s.kind, s.resources[0].replicas.count) for s in config.sharing] == [("mps", 2)]
    (warning,) = config.warnings
    assert warning.startswith("sharing.timeSlicing: ignored because sharing.mps is given too")
    assert "tessera.extensions.timeSlicingWithMps: true" in warning


def test_time_slicing_dropped_beside_mps_is_still_validated() -> None:
    error = fails("sharing: {timeSlicing: {resources: [{name: gpu, replicas: 1}]}, "
                  "mps: {resources: [{name: gpu, replicas: 2}]}}")
    assert error.field == "sharing.timeSlicing.resources[0].replicas"


# -- devices ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("devices", "selector"), [
    (None, DeviceSelector()),
    ("all", DeviceSelector()),
    (3, DeviceSelector(all=False, count=3)),
    ([0, "1", "2:3"], DeviceSelector(all=False, refs=(
        DeviceRef(gpu=0), DeviceRef(gpu=1), DeviceRef(gpu=2, mig=3)))),
    ([GPU_UUID, MIG_UUID, LEGACY_MIG_UUID], DeviceSelector(all=False, refs=(
        DeviceRef(uuid=GPU_UUID), DeviceRef(uuid=MIG_UUID), DeviceRef(uuid=LEGACY_MIG_UUID)))),
])
def test_devices_forms_with_the_devices_extension(devices: Any, selector: DeviceSelector) -> None:
    resource = {"name": "gpu", "replicas": 2}
    if devices is not None:
        resource["devices"] = devices
    assert only_resource(parse(shared(resource, opt_in=("devices",)))).devices == selector


@pytest.mark.parametrize("devices", [3, [0, "1", "2:3"], [GPU_UUID, MIG_UUID]])
def test_devices_are_checked_then_dropped_by_default(devices: Any) -> None:
    """NVIDIA parses `devices`, then shares every device (devices_count2, devices_list_0, …)."""
    config = parse(shared({"name": "gpu", "replicas": 2, "devices": devices}))
    assert only_resource(config).devices == DeviceSelector()
    (warning,) = config.warnings
    assert warning == ("sharing.timeSlicing.resources[0].devices: ignored, every nvidia.com/gpu "
                       "device is shared, as NVIDIA's plugin does; set "
                       "tessera.extensions.devices: true to share only the devices listed")


def test_honoured_devices_warn_what_nvidia_would_do() -> None:
    config = parse(shared({"name": "gpu", "replicas": 2, "devices": [0]}, opt_in=("devices",)))
    (warning,) = config.warnings
    assert "NVIDIA's plugin ignores `devices` and would share every nvidia.com/gpu" in warning


def test_null_devices_are_refused_with_nvidias_words() -> None:
    error = fails("sharing: {timeSlicing: {resources: [{name: gpu, replicas: 2, devices: }]}}")
    assert error.field == "sharing.timeSlicing.resources[0].devices"
    assert "devices set as '' but the only valid string input is 'all'" in error.reason


@pytest.mark.parametrize("spelling", ["0", "12", "0:1", "7:6", GPU_UUID, MIG_UUID,
                                      LEGACY_MIG_UUID])
def test_device_refs_print_as_written(spelling: str) -> None:
    (ref,) = only_resource(parse(shared({"name": "gpu", "replicas": 2, "devices": [spelling]},
                                        opt_in=("devices",)))).devices.refs
    assert str(ref) == spelling


@pytest.mark.parametrize(("devices", "message"), [
    ([], "empty list"),
    ([0, "0"], "0 is listed twice"),
    ([True], "unsupported device True"),
    ([-1], "unsupported device -1"),
    (["0:"], "unsupported device '0:'"),
    (["1:2:3"], "unsupported device"),
    (["gpu0"], "unsupported device 'gpu0'"),
    (["MIG-GPU-nope/1/0"], "unsupported device"),
    ([[0]], "unsupported device [0]"),
    (True, "unrecognized type for devices spec"),
])
def test_bad_devices_are_refused(devices: Any, message: str) -> None:
    error = fails(shared({"name": "gpu", "replicas": 2, "devices": devices}))
    assert error.field is not None
    assert error.field.startswith("sharing.timeSlicing.resources[0].devices")
    assert message in error.reason


def test_device_ref_refuses_impossible_combinations() -> None:
    bad_refs: list[dict[str, Any]] = [{}, {"mig": 1}, {"gpu": 0, "uuid": GPU_UUID}]
    for bad in bad_refs:
        with pytest.raises(ValueError, match="DeviceRef"):
            DeviceRef(**bad)


# -- replicas and memory quantities -------------------------------------------------------------


@pytest.mark.parametrize(("quantity", "mib"), [
    ("10Gi", 10 * 1024),
    ("512Mi", 512),
    ("1Mi", 1),
    ("1024Ki", 1),
    ("1.5Gi", 1536),
    ("1Ti", 1024 * 1024),
    ("10G", 9537),  # 10^10 bytes is 9536.7 MiB: rounded up, a replica never gets less
    ("10000M", 9537),
    ("1e9", 954),
    ("1E9", 954),
    (10 * 2**30, 10 * 1024),
    ("1048576", 1),
    ("1048577", 2),
    (" 2Gi ", 2048),
])
def test_memory_per_replica_quantities(quantity: str | int, mib: int) -> None:
    resource = {"name": "gpu", "replicas": {"memoryPerReplica": quantity}}
    assert only_resource(parse(shared(resource))).replicas == Replicas(memory_per_replica_mib=mib)


@pytest.mark.parametrize(("quantity", "message"), [
    ("10GB", "without a B"),
    ("10gi", "case-sensitive"),
    ("10K", "not a Kubernetes quantity"),
    ("ten", "not a Kubernetes quantity"),
    ("-1Gi", "cannot be negative"),
    ("", "not a Kubernetes quantity"),
    ("512Ki", "less than 1Mi"),
    (1000, "less than 1Mi"),
    (0, "less than 1Mi"),
    (-5, "cannot be negative"),
    ("100Ei", "larger than any GPU's memory"),
    ("1e99", "larger than any GPU's memory"),
    ("1e999", "not a Kubernetes quantity"),
    ("9" * 100, "too long"),
    (1.5, "expected a memory size"),
    (True, "expected a memory size"),
    ([1], "expected a memory size"),
])
def test_bad_memory_quantities_are_refused(quantity: Any, message: str) -> None:
    error = fails(shared({"name": "gpu", "replicas": {"memoryPerReplica": quantity}}))
    assert error.field == "sharing.timeSlicing.resources[0].replicas.memoryPerReplica"
    assert message in error.reason


@pytest.mark.parametrize(("replicas", "message"), [
    ({}, "give either `count` or `memoryPerReplica`"),
    ({"count": 2, "memoryPerReplica": "1Gi"}, "give either `count` or `memoryPerReplica`"),
    ({"count": 1}, "number of replicas must be >= 2"),
    ({"count": "2"}, "whole number"),
    ({1: 2}, "unknown field 1"),
])
def test_bad_replica_mappings_are_refused(replicas: dict[Any, Any], message: str) -> None:
    error = fails(shared({"name": "gpu", "replicas": replicas}))
    assert (error.field or "").startswith("sharing.timeSlicing.resources[0].replicas")
    assert message in error.reason


def test_replica_count_long_form_equals_the_int() -> None:
    long = parse(shared({"name": "gpu", "replicas": {"count": 4}}))
    assert long == parse(shared({"name": "gpu", "replicas": 4}))


@pytest.mark.parametrize(("replicas", "memory_mib", "expected"), [
    (Replicas(count=4), 81920, 4),
    (Replicas(count=4), 1, 4),
    (Replicas(memory_per_replica_mib=10240), 81920, 8),
    (Replicas(memory_per_replica_mib=10240), 40960, 4),
    (Replicas(memory_per_replica_mib=10240), 40959, 3),
    (Replicas(memory_per_replica_mib=10240), 5000, 1),
    (Replicas(memory_per_replica_mib=10240), 0, 1),
])
def test_for_memory(replicas: Replicas, memory_mib: int, expected: int) -> None:
    assert replicas.for_memory(memory_mib) == expected


def test_replicas_hold_exactly_one_form() -> None:
    for bad in [{}, {"count": 2, "memory_per_replica_mib": 1}]:
        with pytest.raises(ValueError, match="exactly one"):
            Replicas(**bad)


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("1.5h", 5400.0), ("500ms", 0.5),
    ("90", 90.0), ("2.5", 2.5), (90, 90.0), (0.25, 0.25), ("never", math.inf),
])
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "m", "5m5", "-5s", "0", 0, -1, "0s", float("nan"),
                                  float("inf"), True, None, "1" * 80])
def test_bad_durations(text: Any) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        parse_duration(text)


def test_memory_parser_directly() -> None:
    assert parse_memory("1Ki") == 1024
    assert parse_memory("1.5Ki") == 1536
    assert parse_memory("0.5") == 1, "fractional bytes round up, as Kubernetes does"
    assert parse_memory(".5Ki") == 512


# -- the tessera section ----------------------------------------------------------------------


def test_tessera_section() -> None:
    config = parse(f"""
tessera:
  excludeDevices: [3, "1:0", {GPU_UUID}]
  health:
    disabled: true
    ignoredXids: [48]
    enabledXids: [13, 79]
    recoverAfter: 5m
""")
    assert config.exclude == (DeviceRef(gpu=3), DeviceRef(gpu=1, mig=0), DeviceRef(uuid=GPU_UUID))
    assert config.health == Health(
        disabled=True,
        ignored_xids=frozenset({31, 43, 45, 68, 109, 48}),
        enabled_xids=frozenset({13, 79}),
        recovery_seconds=300.0,
    )


def test_health_defaults_and_who_counts() -> None:
    health = parse("tessera: {health: {ignoredXids: [48]}}").health
    assert health.ignored_xids == DEFAULT_IGNORED_XIDS | {48}
    assert health.recovery_seconds == 60.0
    assert [x for x in (13, 48, 79) if health.is_fatal(x)] == [79]
    off = parse("tessera: {health: {disabled: true, enabledXids: [79]}}").health
    assert [x for x in (13, 48, 79) if off.is_fatal(x)] == [79], "enabled XIDs count when off"
    assert parse("tessera: {health: {recoverAfter: never}}").health.recovery_seconds == math.inf
    assert parse("tessera: {health: {recoverAfter: 90}}").health.recovery_seconds == 90.0


@pytest.mark.parametrize(("data", "field", "message"), [
    ("tessera: {health: {ignoredXids: [79], enabledXids: [79]}}", "tessera.health.enabledXids",
     "XID 79 is in both ignoredXids and enabledXids"),
    ("tessera: {health: {ignoredXids: [0]}}", "tessera.health.ignoredXids[0]",
     "XIDs are numbers from 1 up"),
    ("tessera: {health: {enabledXids: [true]}}", "tessera.health.enabledXids[0]",
     "expected a whole number"),
    ("tessera: {health: {recoverAfter: 5 minutes}}", "tessera.health.recoverAfter",
     "'5 minutes' is not a duration"),
    ("tessera: {health: {recoverAfter: 0}}", "tessera.health.recoverAfter",
     "must be longer than 0"),
    ("tessera: {excludeDevices: [gpu0]}", "tessera.excludeDevices[0]", "unsupported device"),
    ("tessera: {excludeDevices: [1, '1']}", "tessera.excludeDevices[1]", "listed twice"),
    ("tessera: {excludeDevices: all}", "tessera.excludeDevices", "expected a list"),
])
def test_bad_tessera_sections_are_refused(data: str, field: str, message: str) -> None:
    error = fails(data)
    assert error.field == field
    assert message in error.reason


# -- environment and command line ----------------------------------------------------------------


FILE_FLAGS = """
flags:
  migStrategy: single
  nvidiaDriverRoot: /run/nvidia/driver
  plugin: {deviceListStrategy: envvar, deviceIDStrategy: uuid}
"""


def test_precedence_is_cli_then_env_then_file() -> None:
    config = parse(FILE_FLAGS)
    assert with_overrides(config, {}).flags == config.flags
    env = with_overrides(config, {"MIG_STRATEGY": "mixed", "DEVICE_ID_STRATEGY": "index"})
    assert (env.flags.mig_strategy, env.flags.plugin.device_id_strategy) == ("mixed", "index")
    cli = with_overrides(config, {"MIG_STRATEGY": "mixed"}, mig_strategy="none",
                         device_id_strategy=None)
    assert cli.flags.mig_strategy == "none", "the command line wins over the environment"
    assert cli.flags.plugin.device_id_strategy == "uuid", "None means not set"


def test_every_nvidia_variable_applies() -> None:
    env = {
        "MIG_STRATEGY": "Mixed", "FAIL_ON_INIT_ERROR": "false", "NVIDIA_DRIVER_ROOT": "/drv",
        "NVIDIA_DEV_ROOT": "/dev-root", "MPS_ROOT": "/mps", "PASS_DEVICE_SPECS": "TRUE",
        "DEVICE_LIST_STRATEGY": "envvar, cdi-cri", "DEVICE_ID_STRATEGY": "index",
        "CDI_ANNOTATION_PREFIX": "cdi.example.com/", "SHARED_DEVICES_ALLOCATION_POLICY": "packed",
        "GDRCOPY_ENABLED": "1", "GDS_ENABLED": "t", "MOFED_ENABLED": "True",
        "NVIDIA_CTK_PATH": "/ctk", "CONTAINER_DRIVER_ROOT": "/ctr-root",
    }
    flags = with_overrides(default_config(), env).flags
    assert flags == Flags(
        mig_strategy="mixed", fail_on_init_error=False, nvidia_driver_root="/drv",
        nvidia_dev_root="/dev-root", mps_root="/mps", gdrcopy_enabled=True, gds_enabled=True,
        mofed_enabled=True,
        plugin=PluginFlags(
            pass_device_specs=True, device_list_strategy=("envvar", "cdi-cri"),
            device_id_strategy="index", cdi_annotation_prefix="cdi.example.com/",
            nvidia_ctk_path="/ctk", container_driver_root="/ctr-root",
            shared_devices_allocation_policy="packed",
        ),
    )


def test_nvidias_newer_variable_names_win_over_the_older_ones() -> None:
    env = {"NVIDIA_CDI_HOOK_PATH": "/hook", "NVIDIA_CTK_PATH": "/ctk",
           "DRIVER_ROOT_CTR_PATH": "/new", "CONTAINER_DRIVER_ROOT": "/old"}
    plugin = with_overrides(default_config(), env).flags.plugin
    assert (plugin.nvidia_ctk_path, plugin.container_driver_root) == ("/hook", "/new")


def test_every_flag_has_a_command_line_override() -> None:
    # GFD's noTimestamp is the agent's to override (`tessera agent --no-timestamp`).
    names = {f for f in Flags.__dataclass_fields__ if f not in ("plugin", "gfd_no_timestamp")}
    assert set(pc._OVERRIDES) == names | set(PluginFlags.__dataclass_fields__)
    config = with_overrides(default_config(), {}, pass_device_specs=True,
                            device_list_strategy=["cdi-cri", "envvar"], gds_enabled="true")
    assert (config.flags.plugin.pass_device_specs, config.flags.gds_enabled) == (True, True)
    assert config.flags.plugin.device_list_strategy == ("cdi-cri", "envvar")


def test_empty_variables_are_not_set() -> None:
    config = parse(FILE_FLAGS)
    assert with_overrides(config, {"MIG_STRATEGY": "", "NVIDIA_DRIVER_ROOT": " "}) == config


def test_dev_root_follows_an_overridden_driver_root_unless_set() -> None:
    following = with_overrides(parse(FILE_FLAGS), {"NVIDIA_DRIVER_ROOT": "/new"}).flags
    assert (following.nvidia_driver_root, following.nvidia_dev_root) == ("/new", "/new")
    own = parse("flags: {nvidiaDriverRoot: /a, nvidiaDevRoot: /b}")
    kept = with_overrides(own, {"NVIDIA_DRIVER_ROOT": "/new"}).flags
    assert (kept.nvidia_driver_root, kept.nvidia_dev_root) == ("/new", "/b")
    both = with_overrides(own, {"NVIDIA_DRIVER_ROOT": "/new"}, nvidia_dev_root="/cli").flags
    assert both.nvidia_dev_root == "/cli"


@pytest.mark.parametrize(("env", "cli", "names", "message"), [
    ({"MIG_STRATEGY": "all"}, {}, "environment variable MIG_STRATEGY",
     "expected none, single or mixed"),
    ({"FAIL_ON_INIT_ERROR": "maybe"}, {}, "environment variable FAIL_ON_INIT_ERROR",
     "expected true or false"),
    ({"DEVICE_LIST_STRATEGY": "envvar,mounts"}, {}, "environment variable DEVICE_LIST_STRATEGY",
     "unknown device list strategy 'mounts'"),
    ({"DEVICE_LIST_STRATEGY": ","}, {}, "environment variable DEVICE_LIST_STRATEGY",
     "unknown device list strategy ''"),
    ({}, {"device_id_strategy": "serial"}, "option --device-id-strategy",
     "expected uuid or index"),
    ({}, {"gds_enabled": 1}, "option --gds-enabled", "expected true or false"),
    ({}, {"mps_root": ""}, "option --mps-root", "expected a path"),
    ({}, {"cdi_annotation_prefix": 5}, "option --cdi-annotation-prefix", "expected a string"),
    ({"DP_DISABLE_HEALTHCHECKS": "48,nope"}, {}, "environment variable DP_DISABLE_HEALTHCHECKS",
     "'nope' is not an XID"),
    ({"DP_ENABLE_HEALTHCHECKS": "xids"}, {}, "environment variable DP_ENABLE_HEALTHCHECKS",
     "'xids' is not an XID"),
    ({"IMEX_CHANNEL_IDS": "1"}, {}, "environment variable IMEX_CHANNEL_IDS",
     "channelIDs must be [] or [0]"),
    ({"IMEX_REQUIRED": "sure"}, {}, "environment variable IMEX_REQUIRED",
     "expected true or false"),
])
def test_bad_override_values_name_the_variable(
    env: dict[str, str], cli: dict[str, Any], names: str, message: str
) -> None:
    with pytest.raises(PluginConfigError) as caught:
        with_overrides(default_config(), env, **cli)
    assert str(caught.value).startswith(names)
    assert message in caught.value.reason


def test_a_bad_variable_under_a_command_line_value_is_not_read() -> None:
    config = with_overrides(default_config(), {"MIG_STRATEGY": "bogus"}, mig_strategy="single")
    assert config.flags.mig_strategy == "single"


def test_unknown_command_line_names_are_a_programming_error() -> None:
    with pytest.raises(TypeError, match="migStrategy"):
        with_overrides(default_config(), {}, migStrategy="none")


def test_mps_beside_the_mixed_strategy_is_refused_as_nvidia_does() -> None:
    with pytest.raises(PluginConfigError) as caught:
        with_overrides(parse(MPS_EXAMPLE), {"MIG_STRATEGY": "mixed", "MPS_ROOT": "/run/mps"})
    assert "using --mig-strategy=mixed is not supported with MPS" in str(caught.value)
    assert "tessera.extensions.mpsWithMixed" in str(caught.value)


def test_mps_beside_the_mixed_strategy_is_accepted_for_whole_gpus_with_the_extension() -> None:
    # Tessera then refuses MPS only on MIG devices, when it plans resources for the devices
    # actually present.
    text = MPS_EXAMPLE + "\ntessera: {extensions: {mpsWithMixed: true}}"
    config = with_overrides(parse(text), {"MIG_STRATEGY": "mixed", "MPS_ROOT": "/run/mps"})
    assert config.flags.mig_strategy == "mixed"
    assert [s.kind for s in config.sharing] == ["mps"]


@pytest.mark.parametrize(("text", "env"), [
    (MPS_EXAMPLE, {}),
    (MPS_EXAMPLE + "\nflags: {mpsRoot: ''}", {}),
])
def test_mps_without_an_mps_root_is_refused_as_nvidia_does(
    text: str, env: dict[str, str]
) -> None:
    with pytest.raises(PluginConfigError) as caught:
        with_overrides(parse(text), env)
    assert caught.value.field == "flags.mpsRoot"
    assert "using MPS requires --mps-root" in caught.value.reason
    assert "MPS_ROOT" in caught.value.reason


def test_mps_root_from_the_file_the_environment_or_the_command_line() -> None:
    in_file = MPS_EXAMPLE + "\nflags: {mpsRoot: /run/nvidia/mps}"
    assert with_overrides(parse(in_file), {}).flags.mps_root == "/run/nvidia/mps"
    assert with_overrides(parse(MPS_EXAMPLE), {"MPS_ROOT": "/mps"}).flags.mps_root == "/mps"
    assert with_overrides(parse(MPS_EXAMPLE), {}, mps_root="/cli").flags.mps_root == "/cli"


def test_overrides_recompute_strategy_warnings_and_keep_the_others() -> None:
    text = FULL_EXAMPLE + "resources: {gpus: [{pattern: '*', name: gpu}]}\n"
    config = parse(text)
    assert len(config.warnings) == 2
    mixed = with_overrides(config, {"MIG_STRATEGY": "mixed"})
    (warning,) = mixed.warnings
    assert warning.startswith("resources:")
    assert with_overrides(mixed, {"MIG_STRATEGY": "none"}).warnings == config.warnings


@pytest.mark.parametrize(("env", "disabled", "ignored", "enabled"), [
    ({"DP_DISABLE_HEALTHCHECKS": "all"}, True, DEFAULT_IGNORED_XIDS, set()),
    ({"DP_DISABLE_HEALTHCHECKS": "XIDs"}, True, DEFAULT_IGNORED_XIDS, set()),
    ({"DP_DISABLE_HEALTHCHECKS": "48, 79"}, False, DEFAULT_IGNORED_XIDS | {48, 79}, set()),
    ({"DP_ENABLE_HEALTHCHECKS": "13,79"}, False, DEFAULT_IGNORED_XIDS - {13}, {13, 79}),
    ({"DP_DISABLE_HEALTHCHECKS": "79", "DP_ENABLE_HEALTHCHECKS": "79"}, False,
     DEFAULT_IGNORED_XIDS, {79}),
    ({"DP_DISABLE_HEALTHCHECKS": "all", "DP_ENABLE_HEALTHCHECKS": "31"}, True,
     DEFAULT_IGNORED_XIDS - {31}, {31}),
    ({"DP_DISABLE_HEALTHCHECKS": "all", "DP_ENABLE_HEALTHCHECKS": "all"}, False, set(), set()),
])
def test_nvidias_health_variables(
    env: dict[str, str], disabled: bool, ignored: set[int], enabled: set[int]
) -> None:
    health = with_overrides(default_config(), env).health
    assert health.disabled == disabled
    assert set(health.ignored_xids) == ignored
    assert set(health.enabled_xids) == enabled


def test_health_variables_add_to_the_file() -> None:
    config = parse("tessera: {health: {ignoredXids: [48], enabledXids: [79]}}")
    health = with_overrides(config, {"DP_DISABLE_HEALTHCHECKS": "62"}).health
    assert health.ignored_xids == DEFAULT_IGNORED_XIDS | {48, 62}
    assert health.enabled_xids == {79}
    env_wins = with_overrides(config, {"DP_DISABLE_HEALTHCHECKS": "79"}).health
    assert not env_wins.is_fatal(79), "the environment wins over the file"
    everything = with_overrides(config, {"DP_ENABLE_HEALTHCHECKS": "all"}).health
    assert all(everything.is_fatal(x) for x in (13, 31, 48, 79))


def test_imex_variables() -> None:
    imex = with_overrides(default_config(), {"IMEX_CHANNEL_IDS": "0",
                                             "IMEX_REQUIRED": "true"}).imex
    assert imex == Imex((0,), True)


def test_imex_options_win_over_the_variables() -> None:
    env = {"IMEX_CHANNEL_IDS": "1", "IMEX_REQUIRED": "maybe"}
    imex = with_overrides(default_config(), env, imex_channel_ids="0", imex_required=False).imex
    assert imex == Imex((0,), False)
    with pytest.raises(PluginConfigError) as caught:
        with_overrides(default_config(), {}, imex_channel_ids="0,2")
    assert caught.value.source == "option --imex-channel-ids"
    assert "channelIDs must be [] or [0]; found 0,2" in caught.value.reason
    with pytest.raises(PluginConfigError) as caught:
        with_overrides(default_config(), env)
    assert caught.value.source == "environment variable IMEX_CHANNEL_IDS"


def test_a_refusal_of_the_flags_names_the_file_and_config() -> None:
    with pytest.raises(PluginConfigError) as caught:
        with_overrides(parse(MPS_EXAMPLE), {}, source="configs/", config_name="mps")
    assert (caught.value.source, caught.value.config) == ("configs/", "mps")


# -- named configs ----------------------------------------------------------------------------


def configmap(root: Path, files: dict[str, str]) -> Path:
    """A directory laid out as the kubelet mounts a ConfigMap: keys are symlinks into a
    timestamped directory reached through the `..data` symlink."""
    stamped = root / "..2025_01_01_00_00_00.000000001"
    stamped.mkdir(parents=True)
    for key, text in files.items():
        (stamped / key).write_text(text)
    (root / "..data").symlink_to(stamped.name)
    for key in files:
        (root / key).symlink_to(Path("..data") / key)
    return root


def test_a_configmap_directory_is_a_set_of_named_configs(tmp_path: Path) -> None:
    path = configmap(tmp_path / "cm", {"default": "", "sliced.yaml": FULL_EXAMPLE,
                                       "mps": MPS_EXAMPLE})
    configs = load_set(path)
    assert sorted(configs.configs) == ["default", "mps", "sliced.yaml"]
    assert configs.default == "default"
    assert configs.select(None) == ("default", default_config())
    assert configs.select("sliced.yaml") == ("sliced.yaml", parse(FULL_EXAMPLE))
    assert configs.select("sliced")[0] == "sliced.yaml", "the key without its extension"
    assert configs.select("mps.yaml")[0] == "mps", "the label with an extension"
    assert configs.select("mps")[1].sharing[0].kind == "mps"


@pytest.mark.parametrize(("files", "default", "chosen"), [
    ({"a": "", "b": ""}, "b", "b"),
    ({"a": "", "b.yaml": ""}, "b", "b.yaml"),
    ({"a": "", "default.yaml": ""}, None, "default.yaml"),
    ({"only.json": "{}"}, None, "only.json"),
    ({"a": "", "b": ""}, None, None),
])
def test_default_config_choice(
    tmp_path: Path, files: dict[str, str], default: str | None, chosen: str | None
) -> None:
    configs = load_set(configmap(tmp_path / "cm", files), default=default)
    assert configs.default == chosen


def test_selecting_with_no_default_says_to_set_one(tmp_path: Path) -> None:
    configs = load_set(configmap(tmp_path / "cm", {"a": "", "b": ""}))
    with pytest.raises(PluginConfigError, match="no default") as caught:
        configs.select(None)
    assert "nvidia.com/device-plugin.config" in str(caught.value)
    assert "available: a, b" in str(caught.value)


def test_selecting_an_unknown_name_lists_the_names_and_the_default(tmp_path: Path) -> None:
    configs = load_set(configmap(tmp_path / "cm", {"default": "", "sliced": FULL_EXAMPLE}))
    with pytest.raises(PluginConfigError) as caught:
        configs.select("slice")
    message = str(caught.value)
    assert message.startswith(str(tmp_path / "cm"))
    assert "no config named 'slice'; available: default, sliced (default: default)" in message


def test_an_unknown_default_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PluginConfigError, match="the default config 'c' does not exist"):
        load_set(configmap(tmp_path / "cm", {"a": "", "b": ""}), default="c")


def test_an_ambiguous_name_is_refused(tmp_path: Path) -> None:
    configs = load_set(configmap(tmp_path / "cm", {"a.yaml": "", "a.json": "{}"}))
    with pytest.raises(PluginConfigError, match=r"ambiguous: it matches a\.json, a\.yaml"):
        configs.select("a")
    assert configs.select("a.json")[0] == "a.json"


def test_a_bad_file_in_a_set_is_named_with_its_field(tmp_path: Path) -> None:
    path = configmap(tmp_path / "cm", {
        "good": MPS_EXAMPLE,
        "sliced": "sharing: {timeSlicing: {resources: [{name: gpu, replicas: 1}]}}",
    })
    with pytest.raises(PluginConfigError) as caught:
        load_set(path)
    error = caught.value
    assert (error.source, error.config) == (str(path / "sliced"), "sliced")
    assert error.field == "sharing.timeSlicing.resources[0].replicas"
    assert str(error).startswith(f"{path / 'sliced'}, config 'sliced', field ")


def test_hidden_entries_and_directories_are_skipped(tmp_path: Path) -> None:
    path = configmap(tmp_path / "cm", {"a": ""})
    (path / ".hidden").write_text("not: [valid")
    (path / "subdir").mkdir()
    assert list(load_set(path).configs) == ["a"]


def test_an_empty_directory_has_no_configs(tmp_path: Path) -> None:
    configs = load_set(tmp_path)
    assert (dict(configs.configs), configs.default) == ({}, None)
    with pytest.raises(PluginConfigError, match="available: none"):
        configs.select(None)


def test_a_single_file_is_one_config_named_by_its_stem(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(MPS_EXAMPLE)
    configs = load_set(path)
    assert (configs.source, configs.default) == (str(path), "config")
    assert configs.select(None) == ("config", parse(MPS_EXAMPLE))
    assert configs.select("config.yaml")[0] == "config"


def test_a_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PluginConfigError, match="does not exist") as caught:
        load_set(tmp_path / "nope.yaml")
    assert caught.value.source == str(tmp_path / "nope.yaml")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything")
def test_an_unreadable_directory_is_a_clear_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        with pytest.raises(PluginConfigError, match="cannot list the directory"):
            load_set(locked)
    finally:
        locked.chmod(0o700)


def test_load_file_errors(tmp_path: Path) -> None:
    with pytest.raises(PluginConfigError, match="is a directory"):
        load_file(tmp_path)
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PluginConfigError, match=r"not UTF-8 text \(line 1, byte 0"):
        load_file(binary, name="bin")


# -- YAML -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "line"), [
    ("version: v1\nflags:\n  migStrategy: [none\n", 4),
    ("version: v1\nflags: {a: 1\n", 3),
    ("version: v1\n\tflags: {}\n", 2),
    ("a: 1\n---\nb: 2\n", 2),
])
def test_yaml_syntax_errors_name_the_line(text: str, line: int) -> None:
    error = fails(text)
    assert f"at line {line}," in error.reason
    assert error.reason.startswith("not valid YAML or JSON")


def test_yaml_tags_that_build_objects_are_refused() -> None:
    assert "not valid YAML" in fails("!!python/object/apply:os.system ['true']").reason


# -- properties ---------------------------------------------------------------------------------

_WORDS = ["version", "v1", "flags", "sharing", "timeSlicing", "mps", "resources", "name",
          "replicas", "rename", "devices", "all", "gpu", "nvidia.com/gpu", "mig-1g.10gb",
          "memoryPerReplica", "count", "10Gi", "imex", "channelIDs", "tessera", "health",
          "excludeDevices", "recoverAfter", "ignoredXids", "plugin", "deviceListStrategy",
          "migStrategy", "mixed", "gpus", "pattern", "0:1", GPU_UUID]
_SCALARS = (st.none() | st.booleans() | st.integers(-3, 2**70) | st.floats()
            | st.sampled_from(_WORDS) | st.text(max_size=8))
_KEYS = st.sampled_from(_WORDS) | st.text(max_size=6) | st.integers(-1, 2) | st.none()
_DATA = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=4),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_KEYS, _DATA, max_size=5) | _DATA)
def test_arbitrary_data_raises_nothing_but_plugin_config_error(data: Any) -> None:
    try:
        config = parse(data, source=SOURCE)
    except PluginConfigError as e:
        error: PluginConfigError | None = e
    else:
        error = None
        assert parse(config.to_json()) == config
    assert error is None or str(error).startswith(SOURCE)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.builds(yaml.safe_dump, _DATA))
def test_arbitrary_text_raises_nothing_but_plugin_config_error(text: str) -> None:
    error: PluginConfigError | None = None
    try:
        parse(text, source=SOURCE)
    except PluginConfigError as e:
        error = e
    assert error is None or str(error).startswith(SOURCE)


def test_cyclic_and_huge_data_is_refused_cleanly() -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    for data in [{"tessera": {"excludeDevices": cyclic}},
                 {"sharing": {"timeSlicing": {"resources": cyclic}}},
                 "a: &a [*a]\nflags: *a",
                 {"flags": {"migStrategy": 10**5000}},
                 "replicas: " + "9" * 5000]:
        with pytest.raises(PluginConfigError):
            parse(data)  # type: ignore[arg-type]


_RESOURCE_NAMES = ["gpu", "nvidia.com/gpu", "mig-1g.10gb", "nvidia.com/mig-2g.20gb",
                   "mig-1g.10gb.me", "mig-1c.3g.40gb"]
_REPLICAS = st.integers(2, 64) | st.builds(lambda n: {"count": n}, st.integers(2, 8)) | (
    st.sampled_from(["1Gi", "512Mi", "10G", "20000M", "1.5Gi", 2**30]).map(
        lambda q: {"memoryPerReplica": q}))
_DEVICES = st.none() | st.just("all") | st.integers(1, 8) | st.lists(
    st.integers(0, 7) | st.sampled_from(["0:1", "3", "2:0", GPU_UUID, MIG_UUID, LEGACY_MIG_UUID]),
    min_size=1, max_size=4, unique_by=lambda d: str(d))
_RENAMES = st.none() | st.sampled_from(["", "gpu-a", "example.com/b", "shared-c"])


@st.composite
def _kind(draw: st.DrawFn, mps: bool) -> dict[str, Any]:
    names = [n for n in _RESOURCE_NAMES if not (mps and "mig" in n)]
    chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3,
                           unique_by=lambda n: n.removeprefix("nvidia.com/")))
    resources = []
    for name in chosen:
        entry: dict[str, Any] = {"name": name, "replicas": draw(_REPLICAS)}
        for key, strategy in (("devices", _DEVICES), ("rename", _RENAMES)):
            value = draw(strategy)
            if value is not None:
                entry[key] = value
        resources.append(entry)
    kind: dict[str, Any] = {"resources": resources}
    for key in ("renameByDefault", "failRequestsGreaterThanOne"):
        value = draw(st.none() | st.booleans())
        if value is not None:
            kind[key] = value
    return kind


@st.composite
def valid_files(draw: st.DrawFn) -> dict[str, Any]:
    flags: dict[str, Any] = {
        "migStrategy": draw(st.sampled_from(["none", "single", "mixed"])),
        "failOnInitError": draw(st.booleans()),
        "nvidiaDriverRoot": draw(st.sampled_from(["/", "/run/nvidia/driver"])),
        "plugin": {
            "deviceListStrategy": draw(st.lists(st.sampled_from(
                ["envvar", "volume-mounts", "cdi-annotations", "cdi-cri"]), min_size=1)),
            "deviceIDStrategy": draw(st.sampled_from(["uuid", "index"])),
            "sharedDevicesAllocationPolicy": draw(st.sampled_from(["distributed", "packed"])),
        },
    }
    if draw(st.booleans()):
        flags["nvidiaDevRoot"] = "/"
    sharing: dict[str, Any] = {}
    if draw(st.booleans()):
        sharing["timeSlicing"] = draw(_kind(mps=False))
    if draw(st.booleans()):
        sharing["mps"] = draw(_kind(mps=True))
    health: dict[str, Any] = {"ignoredXids": draw(st.lists(st.integers(1, 200), max_size=3)),
                              "recoverAfter": draw(st.sampled_from(
                                  ["30s", "5m", 90, 0.5, "never", "1h30m"]))}
    health["enabledXids"] = draw(st.lists(
        st.integers(1, 200).filter(lambda x: x not in health["ignoredXids"]), max_size=3))
    health["disabled"] = draw(st.booleans())
    return {
        "version": "v1", "flags": flags, "sharing": sharing,
        "imex": {"channelIDs": draw(st.sampled_from([[], [0]])), "required": draw(st.booleans())},
        "tessera": {"excludeDevices": draw(_DEVICES.filter(lambda d: isinstance(d, list)))
                    or [], "health": health},
    }


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(valid_files())
def test_to_json_round_trips(data: dict[str, Any]) -> None:
    try:
        config = parse(data)
    except PluginConfigError:
        reject()  # two resources under one name, or MPS with mixed: refused, rightly
    effective = config.to_json()
    assert parse(effective) == config
    assert parse(json.dumps(effective)) == config, "the JSON log line reads back too"
    assert parse(yaml.safe_dump(effective)) == config


def test_to_json_is_nvidias_camel_case() -> None:
    effective = parse(FULL_EXAMPLE).to_json()
    assert effective["flags"]["plugin"]["deviceIDStrategy"] == "uuid"
    assert effective["sharing"]["timeSlicing"]["resources"][0] == {
        "name": "nvidia.com/gpu", "replicas": 4, "devices": "all",
        "rename": "nvidia.com/gpu.shared"}
    assert effective["tessera"]["health"] == {
        "disabled": False, "ignoredXids": [], "enabledXids": [], "recoverAfter": 60}


def test_to_json_says_health_from_the_environment_faithfully() -> None:
    config = with_overrides(default_config(), {"DP_ENABLE_HEALTHCHECKS": "all"})
    again = parse(config.to_json()).health
    assert all(again.is_fatal(x) == config.health.is_fatal(x) for x in range(1, 200))


def test_warnings_do_not_take_part_in_equality() -> None:
    plain = parse("flags: {migStrategy: none}")
    noisy = parse("flags: {migStrategy: none}\nresources: {gpus: [{pattern: '*', name: gpu}]}")
    assert (len(noisy.warnings), len(plain.warnings)) == (1, 0)
    assert noisy == plain
