"""The device plugin's CDI spec, through the test kubelet over real gRPC: every CDI name the
plugin hands the kubelet (cdi-cri and cdi-annotations, UUID and index IDs, GPUs and MIG
devices) resolves in the spec it wrote, with the right device nodes; the spec follows a layout
change; no CDI strategy, or --no-cdi-spec, writes none."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from helpers import until
from plugin_support import apply_layout, rig
from tessera.hardware.node import Node
from tessera.plugin.cdi_spec import SPEC_FILE

KIND = "k8s.device-plugin.nvidia.com/gpu"


def _mig_minors(node: Node, path: Path) -> Path:
    """A `mig-minors` table as the driver publishes it, for every GPU's possible GI/CI."""
    lines, minor = [], 1
    for gpu in node.gpus():
        for gi in range(1, 15):
            lines.append(f"gpu{gpu.index}/gi{gi}/access {minor}")
            minor += 1
            for ci in range(8):
                lines.append(f"gpu{gpu.index}/gi{gi}/ci{ci}/access {minor}")
                minor += 1
    path.write_text("\n".join(lines) + "\n")
    return path


def _spec(directory: Path) -> dict[str, Any]:
    return dict(json.loads((directory / SPEC_FILE).read_text()))


def _resolve(spec: dict[str, Any], name: str) -> dict[str, Any]:
    """The containerEdits a runtime would apply for the qualified CDI `name`."""
    kind, _, device = name.partition("=")
    assert kind == spec["kind"], f"{name} is not of the spec's kind {spec['kind']}"
    found = [d for d in spec["devices"] if d["name"] == device]
    assert len(found) == 1, f"{name} resolves to {len(found)} devices in the spec"
    return dict(found[0]["containerEdits"])


def _caps(minors: Path, minor: int, gi: int, ci: int) -> list[str]:
    table = dict(line.split() for line in minors.read_text().splitlines())
    return [f"/dev/nvidia-caps/nvidia-cap{table[f'gpu{minor}/gi{gi}/access']}",
            f"/dev/nvidia-caps/nvidia-cap{table[f'gpu{minor}/gi{gi}/ci{ci}/access']}"]


@pytest.mark.parametrize("ids", ["uuid", "index"])
async def test_every_cdi_name_the_plugin_hands_out_resolves_in_its_spec(
    tmp_path: Path, ids: str,
) -> None:
    config = ("flags: {migStrategy: mixed, plugin: {deviceListStrategy: [cdi-cri, "
              f"cdi-annotations], deviceIDStrategy: {ids}}}}}")
    cdi_dir = tmp_path / "cdi"
    minors = tmp_path / "mig-minors"
    async with rig("mixed", tmp_path / "s.json", config, layout="all-balanced",
                   cdi_dir=cdi_dir, mig_minors=minors) as r:
        _mig_minors(r.node, minors)
        # A layout change makes the plugin write the spec again, with the table in place.
        apply_layout(r.node, "all-1g.10gb")
        wanted = {m.uuid for g in (0, 1) for m in r.node.mig_devices(g)}
        await until(lambda: (cdi_dir / SPEC_FILE).exists() and wanted <= {
            d["name"] for d in _spec(cdi_dir)["devices"]}, "the spec to list the 1g devices")
        await r.kubelet.wait_for(lambda k: "nvidia.com/mig-1g.10gb" in k.endpoints
                                 and "nvidia.com/gpu" in k.endpoints)
        spec = _spec(cdi_dir)
        assert spec["cdiVersion"] == "1.1.0"
        handed = 0
        for resource in ("nvidia.com/gpu", "nvidia.com/mig-1g.10gb"):
            for device_id in r.kubelet.devices(resource):
                response = await r.kubelet.allocate(resource, [device_id])
                names = [d.name for d in response.cdi_devices]
                (annotated,) = response.annotations.values()
                assert annotated.split(",") == names
                for name in names:
                    edits = _resolve(spec, name)
                    handed += 1
                    mig = next((m for g in (0, 1) for m in r.node.mig_devices(g)
                                if m.uuid == device_id), None)
                    nodes = [n["path"] for n in edits["deviceNodes"]]
                    if mig is None:
                        gpu = next(g for g in r.node.gpus() if g.uuid == device_id)
                        assert edits["env"] == [f"NVIDIA_VISIBLE_DEVICES={gpu.uuid}"]
                        assert nodes == [f"/dev/nvidia{gpu.minor_number}"]
                    else:
                        minor = r.node.gpu(mig.gpu).minor_number
                        assert minor is not None
                        assert edits["env"] == [f"NVIDIA_VISIBLE_DEVICES={mig.uuid}"]
                        assert nodes == [f"/dev/nvidia{minor}", *_caps(
                            minors, minor, mig.gpu_instance_id, mig.compute_instance_id)]
        assert handed == 2 + 14  # the two L40S and seven 1g.10gb on each A100
        everything = _resolve(spec, f"{KIND}=all")
        assert everything["env"] == ["NVIDIA_VISIBLE_DEVICES=all"]
        assert len(everything["deviceNodes"]) == 4 + 14 * 2


async def test_no_cdi_strategy_or_no_cdi_dir_writes_no_spec(tmp_path: Path) -> None:
    cdi_dir = tmp_path / "cdi"
    async with rig("a30x4", tmp_path / "s.json", "", cdi_dir=cdi_dir) as r:
        await r.kubelet.wait_for(lambda k: "nvidia.com/gpu" in k.endpoints)
        assert not cdi_dir.exists()
    config = "flags: {plugin: {deviceListStrategy: cdi-cri}}"
    async with rig("a30x4", tmp_path / "t.json", config) as r:  # cdi_dir None: --no-cdi-spec
        await r.kubelet.wait_for(lambda k: "nvidia.com/gpu" in k.endpoints)
        response = await r.kubelet.allocate("nvidia.com/gpu", [r.node.gpu(0).uuid])
        assert [d.name for d in response.cdi_devices] == [f"{KIND}={r.node.gpu(0).uuid}"]
        assert not cdi_dir.exists()
