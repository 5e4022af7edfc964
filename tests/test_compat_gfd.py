"""NVIDIA's GPU feature discovery inputs, run through the agent: the labels GFD writes.

Each scenario is one of NVIDIA's sharing configs (`nvidia-inputs/gfd/`, copied unchanged from
NVIDIA's examples and tests) served by the agent on a simulated node with a MIG layout, and
the complete set of `nvidia.com/*` labels GFD writes for it, name and value, spelled out here
from GFD's code (internal/lm: nvml.go, resource.go, mig-strategy.go, timestamp.go, vgpu.go) and
the simulator's NVML tables. The agent runs as on a node: the config file is read by the
device plugin, the MIG layout is applied through `nvidia.com/mig.config`, and the labels are
read back from the node. `gfd.timestamp` is checked by its format (unix seconds, and the time
of this run).

Differences from GFD, each named where it applies; the README's "GPU feature discovery"
table carries the same rows:

- `gfd.timestamp` says when the labels last changed, not when they were last computed: GFD
  rewrites it every pass (so the Node changes every minute); the agent keeps it until another
  of its labels changes (`test_a_steady_node_is_not_patched_for_the_clock`).
- A custom `rename` without `renameByDefault` agrees: the device plugin drops it as NVIDIA's
  does (`tessera.extensions.rename` opts in), so the product carries GFD's `-SHARED`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from agent_support import agent_rig, agent_settings
from plugin_support import short_dir
from tessera.agent.keys import MIG_CONFIG, MIG_CONFIG_STATE
from tessera.agent.localnode import LocalNode

GFD_INPUTS = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / \
    "nvidia-inputs" / "gfd"

A100 = "NVIDIA-A100-SXM4-80GB"
H100 = "NVIDIA-H100-80GB-HBM3"

# Labels of every node the 550.127.08 driver (CUDA 12.4) runs: dgx-a100.
DRIVER_550 = {
    "nvidia.com/cuda.driver.major": "550",
    "nvidia.com/cuda.driver.minor": "127",
    "nvidia.com/cuda.driver.rev": "08",
    "nvidia.com/cuda.driver-version.major": "550",
    "nvidia.com/cuda.driver-version.minor": "127",
    "nvidia.com/cuda.driver-version.revision": "08",
    "nvidia.com/cuda.driver-version.full": "550.127.08",
    "nvidia.com/cuda.runtime.major": "12",
    "nvidia.com/cuda.runtime.minor": "4",
    "nvidia.com/cuda.runtime-version.major": "12",
    "nvidia.com/cuda.runtime-version.minor": "4",
    "nvidia.com/cuda.runtime-version.full": "12.4",
}
# ... and of the 570.133.20 driver (CUDA 12.8): dgx-h100.
DRIVER_570 = {
    "nvidia.com/cuda.driver.major": "570",
    "nvidia.com/cuda.driver.minor": "133",
    "nvidia.com/cuda.driver.rev": "20",
    "nvidia.com/cuda.driver-version.major": "570",
    "nvidia.com/cuda.driver-version.minor": "133",
    "nvidia.com/cuda.driver-version.revision": "20",
    "nvidia.com/cuda.driver-version.full": "570.133.20",
    "nvidia.com/cuda.runtime.major": "12",
    "nvidia.com/cuda.runtime.minor": "8",
    "nvidia.com/cuda.runtime-version.major": "12",
    "nvidia.com/cuda.runtime-version.minor": "8",
    "nvidia.com/cuda.runtime-version.full": "12.8",
}
MACHINE = "NVIDIA DGX A100"  # the machine-type file's content; GFD: spaces become dashes


def node_labels(driver: dict[str, str], *, family: str, major: str, minor: str,
                mps: bool = False) -> dict[str, str]:
    """What GFD writes on every GPU node whatever its sharing and MIG layout."""
    return {
        **driver,
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.machine": "NVIDIA-DGX-A100",
        "nvidia.com/gpu.mode": "compute",  # every GPU is a 3D controller (PCI class 0x0302)
        "nvidia.com/vgpu.present": "false",
        "nvidia.com/mig.capable": "true",
        "nvidia.com/mps.capable": "true" if mps else "false",
        "nvidia.com/gpu.family": family,
        "nvidia.com/gpu.compute.major": major,
        "nvidia.com/gpu.compute.minor": minor,
    }


A100_NODE = node_labels(DRIVER_550, family="ampere", major="8", minor="0")
H100_NODE = node_labels(DRIVER_570, family="hopper", major="9", minor="0")


def resource(name: str, *, product: str, count: int, replicas: int, strategy: str = "none",
             **values: int) -> dict[str, str]:
    """One advertised resource's labels (`nvidia.com/gpu.*`, `nvidia.com/mig-<p>.*`);
    `slices_gi` spells `slices.gi`, `engines_copy` spells `engines.copy`."""
    labels = {
        f"{name}.product": product,
        f"{name}.count": str(count),
        f"{name}.replicas": str(replicas),
        f"{name}.sharing-strategy": strategy,
    }
    labels.update({f"{name}.{k.replace('_', '.')}": str(v) for k, v in values.items()})
    return labels


# The NVML attributes of the MIG devices these scenarios make (products.yaml, which holds
# what NVML reports for each profile): memory (MiB), SMs, slices and shared engines.
A100_1G = {"memory": 9856, "multiprocessors": 14, "slices_gi": 1, "slices_ci": 1,
           "engines_copy": 1, "engines_decoder": 0, "engines_encoder": 0, "engines_jpeg": 0,
           "engines_ofa": 0}
A100_2G = {"memory": 19968, "multiprocessors": 28, "slices_gi": 2, "slices_ci": 2,
           "engines_copy": 2, "engines_decoder": 1, "engines_encoder": 0, "engines_jpeg": 0,
           "engines_ofa": 0}
A100_3G = {"memory": 40192, "multiprocessors": 42, "slices_gi": 3, "slices_ci": 3,
           "engines_copy": 3, "engines_decoder": 2, "engines_encoder": 0, "engines_jpeg": 0,
           "engines_ofa": 0}
H100_1G = {"memory": 9984, "multiprocessors": 16, "slices_gi": 1, "slices_ci": 1,
           "engines_copy": 1, "engines_decoder": 1, "engines_encoder": 0, "engines_jpeg": 1,
           "engines_ofa": 0}
H100_2G = {"memory": 20096, "multiprocessors": 32, "slices_gi": 2, "slices_ci": 2,
           "engines_copy": 2, "engines_decoder": 2, "engines_encoder": 0, "engines_jpeg": 2,
           "engines_ofa": 0}
H100_3G = {"memory": 40448, "multiprocessors": 60, "slices_gi": 3, "slices_ci": 3,
           "engines_copy": 3, "engines_decoder": 3, "engines_encoder": 0, "engines_jpeg": 3,
           "engines_ofa": 0}


def balanced(node: dict[str, str], gpu: str, memory: int, one: dict[str, int],
             two: dict[str, int], three: dict[str, int], *, one_replicas: int = 1) -> dict[
                 str, str]:
    """all-balanced (2x 1g.10gb, 2g.20gb, 3g.40gb per GPU) under the mixed strategy on 8 GPUs.
    GPUs that all have MIG enabled are labelled "without sharing": replicas 0."""
    shared = one_replicas > 1
    return {
        **node,
        "nvidia.com/mig.strategy": "mixed",
        **resource("nvidia.com/gpu", product=gpu, count=8, replicas=0, memory=memory),
        **resource("nvidia.com/mig-1g.10gb",
                   product=f"{gpu}-MIG-1g.10gb" + ("-SHARED" if shared else ""), count=16,
                   replicas=one_replicas, strategy="time-slicing" if shared else "none",
                   **one),
        **resource("nvidia.com/mig-2g.20gb", product=f"{gpu}-MIG-2g.20gb", count=8,
                   replicas=1, **two),
        **resource("nvidia.com/mig-3g.40gb", product=f"{gpu}-MIG-3g.40gb", count=8,
                   replicas=1, **three),
    }


def whole(node: dict[str, str], gpu: str, memory: int, *, replicas: int = 1,
          strategy: str = "none", shared_suffix: bool = False) -> dict[str, str]:
    """8 whole GPUs (MIG off), shared `replicas` ways."""
    return {
        **node,
        **resource("nvidia.com/gpu", product=gpu + ("-SHARED" if shared_suffix else ""),
                   count=8, replicas=replicas, strategy=strategy, memory=memory),
    }


@dataclass(frozen=True)
class Scenario:
    config: str  # a file of nvidia-inputs/gfd
    preset: str
    mig_config: str
    labels: dict[str, str]
    differs: str | None = None  # a difference from GFD, named

    @property
    def id(self) -> str:
        return f"{self.config.removesuffix('.yaml')}-{self.preset}-{self.mig_config}"


SCENARIOS = [
    # single: every MIG device is an nvidia.com/gpu; the product and memory are the device's.
    Scenario("single.yaml", "dgx-a100", "all-1g.10gb", {
        **A100_NODE,
        "nvidia.com/mig.strategy": "single",
        **resource("nvidia.com/gpu", product=f"{A100}-MIG-1g.10gb", count=56, replicas=1,
                   **A100_1G),
    }),
    # single over three profiles: GFD's "invalid" labels (nothing usable is nvidia.com/gpu).
    Scenario("single.yaml", "dgx-a100", "all-balanced", {
        **A100_NODE,
        "nvidia.com/mig.strategy": "single",
        "nvidia.com/gpu.product": f"{A100}-MIG-INVALID",
        "nvidia.com/gpu.count": "0",
        "nvidia.com/gpu.replicas": "0",
        "nvidia.com/gpu.memory": "0",
        "nvidia.com/gpu.sharing-strategy": "",
    }),
    Scenario("mixed.yaml", "dgx-a100", "all-balanced",
             balanced(A100_NODE, A100, 81920, A100_1G, A100_2G, A100_3G)),
    Scenario("mixed.yaml", "dgx-h100", "all-balanced",
             balanced(H100_NODE, H100, 81559, H100_1G, H100_2G, H100_3G)),
    # Time-slicing one MIG profile: only that profile is shared, and marked -SHARED.
    Scenario("mixed_ts_mig.yaml", "dgx-a100", "all-balanced",
             balanced(A100_NODE, A100, 81920, A100_1G, A100_2G, A100_3G, one_replicas=2)),
    Scenario("mixed_ts_mig.yaml", "dgx-h100", "all-balanced",
             balanced(H100_NODE, H100, 81559, H100_1G, H100_2G, H100_3G, one_replicas=2)),
    # MPS on whole GPUs: mps.capable, replicas 2, product -SHARED.
    Scenario("mps2.yaml", "dgx-a100", "all-disabled", {
        **whole(node_labels(DRIVER_550, family="ampere", major="8", minor="0", mps=True),
                A100, 81920, replicas=2, strategy="mps", shared_suffix=True),
    }),
    Scenario("mps2.yaml", "dgx-h100", "all-disabled", {
        **whole(node_labels(DRIVER_570, family="hopper", major="9", minor="0", mps=True),
                H100, 81559, replicas=2, strategy="mps", shared_suffix=True),
    }),
    Scenario("ts4.yaml", "dgx-a100", "all-disabled",
             whole(A100_NODE, A100, 81920, replicas=4, strategy="time-slicing",
                   shared_suffix=True)),
    Scenario("ts4.yaml", "dgx-h100", "all-disabled",
             whole(H100_NODE, H100, 81559, replicas=4, strategy="time-slicing",
                   shared_suffix=True)),
    # renameByDefault: the shared resource is nvidia.com/gpu.shared, so no -SHARED suffix.
    Scenario("ts4_rename.yaml", "dgx-a100", "all-disabled",
             whole(A100_NODE, A100, 81920, replicas=4, strategy="time-slicing")),
    Scenario("ts4_rename.yaml", "dgx-h100", "all-disabled",
             whole(H100_NODE, H100, 81559, replicas=4, strategy="time-slicing")),
    # A custom rename without renameByDefault: GFD (and NVIDIA's plugin) drop the rename, so
    # the product is -SHARED.
    Scenario("ts2_rename_custom.yaml", "dgx-a100", "all-disabled",
             whole(A100_NODE, A100, 81920, replicas=2, strategy="time-slicing",
                   shared_suffix=True)),
    Scenario("ts2_rename_custom.yaml", "dgx-h100", "all-disabled",
             whole(H100_NODE, H100, 81559, replicas=2, strategy="time-slicing",
                   shared_suffix=True)),
]

TIMESTAMP = "nvidia.com/gfd.timestamp"


def _case(s: Scenario) -> object:
    marks = [pytest.mark.xfail(strict=True, reason=s.differs)] if s.differs else []
    return pytest.param(s, id=s.id, marks=marks)


def test_every_gfd_input_has_scenarios() -> None:
    assert sorted({s.config for s in SCENARIOS}) == sorted(p.name for p in GFD_INPUTS.iterdir())
    assert len(SCENARIOS) == 14


@pytest.mark.parametrize("scenario", [_case(s) for s in SCENARIOS])
async def test_gfd_labels(scenario: Scenario, tmp_path: Path) -> None:
    machine = tmp_path / "product_name"
    machine.write_text(MACHINE + "\n")
    config = (GFD_INPUTS / scenario.config).read_text()
    with short_dir() as scratch:
        (scratch / "plugin.yaml").write_text(config)
        settings = replace(agent_settings(scratch, plugin_config=scratch / "plugin.yaml"),
                           machine_type_file=machine)
        before = int(time.time())
        async with agent_rig(scenario.preset, tmp_path / "sim.json", settings=settings) as r:
            await r.set_metadata(labels={MIG_CONFIG: scenario.mig_config})
            await r.pass_(2)
            labels, _ = await r.metadata()
    assert labels[MIG_CONFIG_STATE] == "success"
    ours = {k: v for k, v in labels.items()
            if k.startswith("nvidia.com/") and k not in (MIG_CONFIG, MIG_CONFIG_STATE)}
    stamp = ours.pop(TIMESTAMP)
    assert re.fullmatch(r"[0-9]+", stamp)
    assert before <= int(stamp) <= time.time() + 1
    assert ours == scenario.labels


async def test_a_steady_node_is_not_patched_for_the_clock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GFD rewrites gfd.timestamp every pass; the agent keeps it until another label of ours
    changes, so a steady node sees no patch (DIFFERENCES in the module docstring)."""
    clock = [1_800_000_000.0]
    monkeypatch.setattr("tessera.agent.agent.time.time", lambda: clock[0])
    async with agent_rig("dgx-a100", tmp_path / "sim.json") as r:
        await r.pass_(2)
        labels, _ = await r.metadata()
        assert labels[TIMESTAMP] == "1800000000"
        assert isinstance(r.api, LocalNode)
        patches = r.api.patches
        clock[0] += 3600
        await r.pass_(3)
        assert r.api.patches == patches
        assert (await r.metadata())[0][TIMESTAMP] == "1800000000"
        # A change of the labels renews it, in the same patch.
        await r.set_metadata(labels={MIG_CONFIG: "all-1g.10gb"})
        await r.pass_(2)
        labels, _ = await r.metadata()
        assert labels[TIMESTAMP] == "1800003600"
        assert labels["nvidia.com/gpu.replicas"] == "0"


async def test_no_timestamp_leaves_it_out_and_removes_ours(tmp_path: Path) -> None:
    with short_dir() as scratch:
        settings = replace(agent_settings(scratch), gfd_timestamp=False)
        async with agent_rig("dgx-a100", tmp_path / "sim.json", settings=settings) as r:
            await r.set_metadata(labels={TIMESTAMP: "1700000000"})  # a GFD that ran before
            await r.pass_(2)
            labels, _ = await r.metadata()
    assert TIMESTAMP not in labels
    assert labels["nvidia.com/gpu.mode"] == "compute"


async def test_the_config_files_no_timestamp_leaves_it_out(tmp_path: Path) -> None:
    """GFD's `flags.gfd.noTimestamp` in the shared config file does what --no-timestamp does."""
    config = "version: v1\nflags:\n  gfd:\n    noTimestamp: true\n"
    async with agent_rig("dgx-a100", tmp_path / "sim.json", plugin_config=config) as r:
        await r.set_metadata(labels={TIMESTAMP: "1700000000"})
        await r.pass_(2)
        labels, _ = await r.metadata()
    assert TIMESTAMP not in labels
    assert labels["nvidia.com/gpu.mode"] == "compute"
