"""CDI specs for prepared claims: one transient spec per claim, CDI v1.1.0, as NVIDIA's DRA
driver writes them (vendor `k8s.<driver>`, class `claim`, device `<claim uid>-<device>`), so
a container runtime with CDI enabled injects exactly the claim's devices (the writer is
`tessera.cdi`, shared with the device plugin). Removed on unprepare.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tessera.cdi import (
    CDI_VERSION,
    CONTROL_NODES,
    DEFAULT_CDI_DIR,
    MIG_MINORS,
    CdiDevice,
    container_edits,
    read_mig_minors,
    write_atomically,
)
from tessera.cdi import spec as cdi_spec

__all__ = ["CDI_VERSION", "CONTROL_NODES", "DEFAULT_CDI_DIR", "MIG_MINORS", "CdiDevice",
           "device_id", "read_mig_minors", "remove_spec", "spec", "spec_path", "vendor",
           "write_spec"]
CLASS = "claim"


def vendor(driver: str) -> str:
    return f"k8s.{driver}"


def device_id(driver: str, claim_uid: str, name: str) -> str:
    """The fully qualified CDI name the kubelet hands to the runtime."""
    return f"{vendor(driver)}/{CLASS}={claim_uid}-{name}"


def spec_path(cdi_dir: Path, driver: str, claim_uid: str) -> Path:
    """The transient spec's file: `<vendor>-<class>_<uid>.json`, as cdiapi names them."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{vendor(driver)}-{CLASS}_{claim_uid}")
    return cdi_dir / f"{safe}.json"


def spec(driver: str, claim_uid: str, devices: Sequence[CdiDevice],
         mig_minors: Mapping[str, int]) -> dict[str, Any]:
    return cdi_spec(f"{vendor(driver)}/{CLASS}",
                    [(f"{claim_uid}-{d.name}", container_edits(d, mig_minors))
                     for d in devices])


def write_spec(cdi_dir: Path, driver: str, claim_uid: str, body: Mapping[str, Any]) -> Path:
    return write_atomically(spec_path(cdi_dir, driver, claim_uid), body)


def remove_spec(cdi_dir: Path, driver: str, claim_uid: str) -> None:
    spec_path(cdi_dir, driver, claim_uid).unlink(missing_ok=True)
