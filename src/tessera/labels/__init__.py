"""Node feature labels: the `nvidia.com/*` labels GPU feature discovery writes, from devices.

Pure, apart from one blocking reader: `facts.read_facts(node)` takes what the labels need
from the GPU seam into frozen values (`NodeFacts`); `features.feature_labels(facts, ...)`
turns them into the label dict GFD would write for the same node, MIG strategy and sharing;
`features.label_changes(current, wanted)` is the smallest node patch from the labels a node
has to the labels it should have, removing only keys this labeler owns (`features.owned`);
`changes.stamped` adds `gfd.timestamp` without making a steady node change.

Modules: `facts` (inputs and the reader), `values` (how values are spelled), `keys` (which
keys are ours), `resources` (the labels of one advertised resource), `features` (the node's
labels, warnings and the patch).
"""

from tessera.labels.changes import stamped
from tessera.labels.facts import (
    DMI_PRODUCT_NAME,
    GpuFacts,
    NodeFacts,
    SharingFacts,
    read_facts,
    read_system,
)
from tessera.labels.features import (
    PREFIX,
    feature_labels,
    label_changes,
    owned,
    single_strategy_problem,
    warnings,
)

__all__ = [
    "DMI_PRODUCT_NAME",
    "PREFIX",
    "GpuFacts",
    "NodeFacts",
    "SharingFacts",
    "feature_labels",
    "label_changes",
    "owned",
    "read_facts",
    "read_system",
    "single_strategy_problem",
    "stamped",
    "warnings",
]
