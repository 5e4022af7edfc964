"""The pure parts of claims' status and binding conditions, and the checkpoint's record of
who asked: what the scheduler reads and what survives a restart."""

from __future__ import annotations

import json
from pathlib import Path

from dra_support import mig_node
from tessera.dra.binding import MIG_FAILED, MIG_READY, waits, with_binding_conditions
from tessera.dra.checkpoint import Checkpoint, ClaimRecord, PreparedDevice
from tessera.dra.devices import publish
from tessera.dra.inventory import read_inventory
from tessera.dra.status import device_status, failed_status, same_status
from tessera.hardware.model import Placement

DRIVER = "gpu.nvidia.com"
MADE = PreparedDevice("gpu-0-mig-3g40gb-9-4", "node-a", ("mig",), 0, ("3g.40gb", 4),
                      ("k8s.gpu.nvidia.com/claim=u-gpu-0-mig-3g40gb-9-4",), "MIG-1")
WAITED = {("node-a", MADE.device): (frozenset({MIG_READY}), frozenset({MIG_FAILED}))}


def _conditions(entries: list[dict[str, object]]) -> dict[str, tuple[str, str]]:
    [entry] = [e for e in entries if e["driver"] == DRIVER]
    return {c["type"]: (c["status"], c["reason"]) for c in entry["conditions"]}  # type: ignore[attr-defined]


def test_a_failure_then_a_success_replace_each_other_and_keep_other_drivers() -> None:
    other = {"driver": "net.example.com", "pool": "node-a", "device": "nic-0",
             "conditions": []}
    failed = failed_status([other], DRIVER, [("node-a", MADE.device)], "PlacementTaken",
                           "taken on GPU 0\nsecond line", "t1", WAITED)
    assert failed[0] == other
    assert _conditions(failed) == {"Ready": ("False", "PlacementTaken"),
                                   MIG_FAILED: ("True", "PlacementTaken"),
                                   MIG_READY: ("False", "PlacementTaken")}
    assert {c["message"] for c in failed[1]["conditions"]} == {"taken on GPU 0"}
    ready = device_status(failed, DRIVER, [MADE], "t2", WAITED)
    assert ready[0] == other
    assert _conditions(ready) == {"Ready": ("True", "Prepared"), MIG_READY: ("True", "Created"),
                                  MIG_FAILED: ("False", "Created")}
    assert ready[1]["data"] == {"uuid": "MIG-1", "gpu": 0, "profile": "3g.40gb",
                                "placementStart": 4}


def test_without_binding_conditions_only_ready_is_written() -> None:
    assert _conditions(device_status([], DRIVER, [MADE], "t")) == {"Ready": ("True", "Prepared")}
    assert _conditions(failed_status([], DRIVER, [("node-a", MADE.device)], "InvalidClaim",
                                     "bad", "t")) == {"Ready": ("False", "InvalidClaim")}


def test_the_same_outcome_again_changes_nothing_not_even_its_time() -> None:
    first = failed_status([], DRIVER, [("node-a", MADE.device)], "NvmlError", "boom", "t1")
    again = failed_status(first, DRIVER, [("node-a", MADE.device)], "NvmlError", "boom", "t2")
    assert same_status(first, again)
    changed = failed_status(first, DRIVER, [("node-a", MADE.device)], "NvmlError", "other",
                            "t3")
    assert not same_status(first, changed)
    assert changed[0]["conditions"][0]["lastTransitionTime"] == "t1"  # still False since t1
    assert device_status(first, DRIVER, [MADE], "t4")[0]["conditions"][0][
        "lastTransitionTime"] == "t4"


def test_waits_reads_the_conditions_the_scheduler_copied_into_the_allocation() -> None:
    claim = {"status": {"allocation": {"devices": {"results": [
        {"driver": DRIVER, "pool": "node-a", "device": "a", "bindingConditions": [MIG_READY],
         "bindingFailureConditions": [MIG_FAILED]},
        {"driver": DRIVER, "pool": "node-a", "device": "gpu-1"},
        {"driver": "net.example.com", "pool": "node-a", "device": "nic-0"}]}}}}
    assert waits(claim, DRIVER) == {
        ("node-a", "a"): (frozenset({MIG_READY}), frozenset({MIG_FAILED})),
        ("node-a", "gpu-1"): (frozenset(), frozenset())}
    assert waits(None, DRIVER) == {}


def test_only_placements_that_need_a_creation_wait_on_binding_conditions(
    tmp_path: Path,
) -> None:
    node, _ = mig_node("mixed", tmp_path / "sim.json")  # GPUs 0, 1 MIG; 2, 3 whole
    profile = next(p for p in node.gpu_instance_profiles(0) if p.name == "3g.40gb")
    gi = node.create_gpu_instance(0, profile.id, Placement(0, 4))
    full = next(c for c in node.compute_instance_profiles(profile) if c.slices == 3)
    node.create_compute_instance(0, gi, full.id, full.placements[0])
    publication = publish(read_inventory(node))
    shown = with_binding_conditions(publication)
    waiting = {d["name"] for d in shown.devices if d.get("bindingConditions")}
    assert waiting == {name for name, t in publication.targets.items()
                       if t.profile is not None and t.uuid is None}
    existing = {name for name, t in publication.targets.items() if t.uuid and t.profile}
    assert existing == {"gpu-0-mig-3g40gb-9-0"}  # made out of band: it exists, no wait
    assert not existing & waiting
    assert {"gpu-2", "gpu-3"}.isdisjoint(waiting)
    assert all(d["bindingFailureConditions"] == [MIG_FAILED] for d in shown.devices
               if d["name"] in waiting)
    assert publication.devices != shown.devices  # the input is left as it was
    assert not any("bindingConditions" in d for d in publication.devices)


def test_a_checkpoint_written_before_the_kubelet_field_reads_as_asked(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.json"
    path.write_text(json.dumps({"version": 1, "claims": {"u1": {
        "namespace": "ml", "name": "train", "state": "PrepareCompleted", "devices": []}}}))
    assert Checkpoint(path).load()["u1"].kubelet is True
    checkpoint = Checkpoint(path)
    checkpoint.put(ClaimRecord("u2", "ml", "ahead", "PrepareStarted", (), kubelet=False))
    # Written through: a new reader (a restarted plugin) sees both, each as recorded.
    assert {u: r.kubelet for u, r in Checkpoint(path).load().items()} == {"u1": True,
                                                                          "u2": False}
