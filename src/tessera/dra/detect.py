"""Finding what the cluster serves (the thin edge over `features`): its version and whether it
has `resource.k8s.io/v1`, at start, and which DRA gates keep their fields, by a dry-run
create of a probe slice, at start and, while a gate is found off, at every resync (so a gate
turned on later is found without a restart, and no stored slice ever flips between the two
shapes to find out). A gate turned off under a running plugin shows in the answer to the
next write that carries its fields (`DraPlugin.publish`).
"""

from __future__ import annotations

import logging

from tessera.dra.features import (
    FALLBACKS,
    Features,
    ServerVersion,
    dropped,
    layout_for,
    needs_resource_v1,
    parse_version,
    probe_slice,
)
from tessera.dra.slices import Layout, slice_name
from tessera.errors import UnsupportedError
from tessera.kube.dra import DraApi

log = logging.getLogger(__name__)

AUTO = "auto"


async def detect_version(api: DraApi, layout: Layout | str) -> Features:
    """The layout to publish in, from `/version` and the discovery of `resource.k8s.io/v1`
    (`layout` "auto"), or as the flag says (logged beside what the server says).
    UnsupportedError for a server without `resource.k8s.io/v1`, or (auto) a version that
    cannot be read; DraApiError when the server cannot be asked."""
    document = await api.server_version()
    version: ServerVersion | None = None
    try:
        version = parse_version(document)
    except UnsupportedError:
        if layout == AUTO:
            raise
        log.warning("cannot read the API server's version (%.200r); publishing in the %s "
                    "layout as --slice-layout says", document, layout)
    if not await api.serves_resource_v1():
        raise needs_resource_v1(version)
    shown = str(version) if version else ""
    if layout == AUTO:
        assert version is not None
        chosen = layout_for(version)
        log.info("API server %s serves resource.k8s.io/v1: publishing ResourceSlices in the "
                 "%s layout", shown, chosen)
        return Features(layout=chosen, layout_source="detected", server_version=shown)
    fixed: Layout = "combined" if layout == "combined" else "split"
    if version is not None and layout_for(version) != fixed:
        log.warning("API server %s validates the %s layout, but --slice-layout %s says %s; "
                    "publishing %s", shown, layout_for(version), fixed, fixed, fixed)
    else:
        log.info("publishing ResourceSlices in the %s layout, as --slice-layout says", fixed)
    return Features(layout=fixed, layout_source="flag", server_version=shown)


async def probe_gates(api: DraApi, features: Features, *, driver: str,
                      node: str) -> Features:
    """`features` with each gate as a dry-run create of a probe slice finds it. DraApiError
    when the server refuses the probe or cannot answer (the caller keeps what it knew: the
    answers to the real writes still tell)."""
    body = probe_slice(f"{slice_name(node, driver, 0)}-probe", driver=driver, node=node,
                       layout=features.layout)
    off = dropped(body, await api.create_slice(body, dry_run=True))
    found = Features(features.layout, features.layout_source, features.server_version)
    return found.without(off)


def report_change(old: Features, new: Features) -> None:
    """One line per gate whose state changed: a warning naming the gate and what to enable
    when it is found off, an info line when it is found on again."""
    was, now = set(old.disabled()), set(new.disabled())
    for gate in sorted(now - was):
        log.warning("the API server drops the fields of %s (the feature gate is off): %s",
                    gate, FALLBACKS[gate])
    for gate in sorted(was - now):
        log.info("the API server keeps the fields of %s now: publishing with it again", gate)
