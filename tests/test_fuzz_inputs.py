"""Every input format, fuzzed: a documented acceptance or the right error in one line.

For mig-parted configs, device plugin configs, explicit layouts, counters files, label
values and annotation values, hypothesis generates plausible and hostile documents (wrong
types, negative numbers, unicode, non-UTF-8 bytes, alias bombs, deep nesting, keys given
twice). Each must parse to a value or raise its ConfigError subclass with one line naming
the source, in bounded time and memory; where a refused input reaches the simulated node,
the node is unchanged. Huge numbers (MIG counts, replicas) are the bounds of their parsers
and have their own tests at the end.
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from fuzz_support import (
    FUZZ,
    counters_files,
    documents,
    explicit_layouts,
    hostile_bytes,
    mig_configs,
    plugin_configs,
    refused_or_accepted,
)
from helpers import make_node
from tessera.agent.drain import parse_disable
from tessera.agent.localnode import LocalNode
from tessera.cli.agent import _seed_labels
from tessera.errors import ConfigError, MigConfigError, PermanentError, PluginConfigError
from tessera.metrics import counters
from tessera.mig import engine, spec
from tessera.mig.explicit import load_layout, parse_layout
from tessera.plugin.config import PluginConfig, load_file, load_set
from tessera.plugin.inventory import read_inventory
from tessera.plugin.resources import plan_resources

# Kubernetes' own rules (apimachinery validation: IsQualifiedName, IsValidLabelValue),
# written out independently of Tessera's check to serve as its oracle.
_K8S_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]"
_K8S_PREFIX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_K8S_VALUE = r"(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?"

label_text = st.one_of(
    st.from_regex(r"\A([a-z0-9]([-a-z0-9]{0,8}[a-z0-9])?(\.[a-z]{2,4})?/)?"
                  r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,12}[A-Za-z0-9])?\Z"),
    st.sampled_from(["nvidia.com/mig.config", "tessera.dev/x", "a/b/c", "/x", "x/", "-x",
                     "UPPER.com/x", "all-balanced", "", "a" * 63, "a" * 64, "a b", "é"]),
    st.text(st.characters(codec="ascii"), max_size=70), st.text(max_size=20))


def node_state(node: object) -> object:
    return engine.observe(node).states  # type: ignore[arg-type]


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# -- mig-parted configs --------------------------------------------------------------------


@FUZZ
@given(data=documents(mig_configs()))
def test_mig_parted_configs(tmp_path: Path, data: bytes) -> None:
    path = write(tmp_path, "mig.yaml", data)
    parsed = refused_or_accepted(lambda: spec.load_file(path), MigConfigError, str(path))
    event("parsed" if parsed is not None else "refused")
    if parsed is None:
        return
    node, control = make_node("a30x4")
    with node:
        for name in parsed.configs:
            before, mutations = node_state(node), control.mutations()
            applied = refused_or_accepted(lambda n=name: engine.apply_config(node, parsed, n),
                                          PermanentError, str(path))
            event("applied" if applied is not None else "refused on the node")
            if applied is None:  # refused: nothing on the node changed
                assert control.mutations() == mutations
                assert node_state(node) == before
            else:
                assert engine.assert_config(node, parsed, name).empty


# -- device plugin configs -----------------------------------------------------------------


@FUZZ
@given(data=documents(plugin_configs()))
def test_device_plugin_configs(tmp_path: Path, data: bytes) -> None:
    path = write(tmp_path, "plugin.yaml", data)
    parsed = refused_or_accepted(lambda: load_file(path, name="fuzz"), PluginConfigError,
                                 str(path))
    event("parsed" if parsed is not None else "refused")
    if parsed is None:
        return
    assert isinstance(parsed, PluginConfig)
    node, _ = make_node("a30x4")
    with node:
        inventory = read_inventory(node)
    # What the config means on a node: resources, or the config's error (one line, no source
    # beyond the field: it is raised against devices, not the file).
    planned = refused_or_accepted(lambda: plan_resources(inventory, parsed), PluginConfigError,
                                  "")
    event("planned" if planned is not None else "refused on the node")


# -- explicit layouts ----------------------------------------------------------------------


@FUZZ
@given(data=documents(explicit_layouts()))
def test_explicit_layouts(tmp_path: Path, data: bytes) -> None:
    path = write(tmp_path, "layout.yaml", data)
    layout = refused_or_accepted(lambda: load_layout(path), MigConfigError, str(path))
    event("parsed" if layout is not None else "refused")
    if layout is None:
        return
    node, control = make_node("a30x4")
    with node:
        before, mutations = node_state(node), control.mutations()
        planned = refused_or_accepted(lambda: engine.plan_layout(node, layout),
                                      MigConfigError, str(path))
        event("planned" if planned is not None else "refused on the node")
        assert control.mutations() == mutations  # planning, accepted or not, changes nothing
        assert node_state(node) == before


# -- counters files ------------------------------------------------------------------------


@FUZZ
@given(data=st.one_of(counters_files(), hostile_bytes()))
def test_counters_files(tmp_path: Path, data: bytes) -> None:
    path = write(tmp_path, "counters.csv", data)
    loaded = refused_or_accepted(lambda: counters.load(path), ConfigError, str(path))
    event("parsed" if loaded is not None else "refused")
    if loaded is not None:
        assert all(c.field.startswith("DCGM_FI_") for c in loaded.metrics)


# -- label values --------------------------------------------------------------------------


@FUZZ
@given(key=label_text, value=label_text)
def test_label_keys_and_values_are_checked_as_kubernetes_does(tmp_path: Path, key: str,
                                                              value: str) -> None:
    node_file = tmp_path / "node.json"
    node_file.write_text(json.dumps({"labels": {"keep": "me"}, "annotations": {},
                                     "version": 3}))
    before = node_file.read_bytes()
    api = LocalNode("fuzz", node_file)
    prefix, slash, name = key.rpartition("/")
    valid = (re.fullmatch(_K8S_NAME, name) is not None
             and (not slash or (len(prefix) <= 253
                                and re.fullmatch(_K8S_PREFIX, prefix) is not None))
             and re.fullmatch(_K8S_VALUE, value) is not None)
    seeded = refused_or_accepted(lambda: _seed_labels(api, [f"{key}={value}"]) or True,
                                 ConfigError, "--label")
    event("valid" if valid else "invalid")
    assert (seeded is not None) == valid, (key, value)
    labels = json.loads(node_file.read_text())["labels"]
    if valid:
        assert labels[key] == value
    else:
        assert node_file.read_bytes() == before  # refused: the node is untouched


@FUZZ
@given(value=label_text)
def test_config_names_from_labels_select_or_say_what_there_is(tmp_path: Path,
                                                              value: str) -> None:
    """`nvidia.com/mig.config` and `nvidia.com/device-plugin.config` values pick a config
    by name: any text either names one or is refused listing the ones there are."""
    mig = spec.parse("version: v1\nmig-configs:\n  all-disabled:\n  - devices: all\n"
                     "    mig-enabled: false\n", source="mig.yaml")
    picked = refused_or_accepted(lambda: mig.select(value), MigConfigError, "mig.yaml")
    if value == "all-disabled":
        assert picked is not None
    assert picked is None or picked[0] == "all-disabled"
    (tmp_path / "plugins").mkdir(exist_ok=True)
    (tmp_path / "plugins" / "sliced.yaml").write_text("version: v1\n")
    named = load_set(tmp_path / "plugins")
    chosen = refused_or_accepted(lambda: named.select(value), PluginConfigError, "")
    if value in ("sliced", "sliced.yaml"):
        assert chosen is not None
    assert chosen is None or chosen[0] == "sliced"


# -- annotation values ---------------------------------------------------------------------


@FUZZ
@given(text=st.one_of(
    st.text(max_size=60), documents(st.dictionaries(st.text(max_size=5), st.text(max_size=5)))
    .map(lambda b: b.decode("utf-8", errors="replace")),
    st.dictionaries(st.text(max_size=6), st.one_of(st.text(max_size=6), st.integers()),
                    max_size=3).map(json.dumps),
    st.integers(1, 100_000).map(lambda n: "[" * n)))
def test_gpu_disable_annotation(text: str) -> None:
    found = refused_or_accepted(lambda: parse_disable(text, "tessera.dev/gpu.disable"),
                                ConfigError, "tessera.dev/gpu.disable")
    if found is not None:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in found.items())


@FUZZ
@given(data=documents(explicit_layouts()))
def test_mig_layout_annotation(data: bytes) -> None:
    text = data.decode("utf-8", errors="replace")
    refused_or_accepted(lambda: parse_layout(text, source="annotation tessera.dev/mig.layout"),
                        MigConfigError, "annotation tessera.dev/mig.layout")


# -- huge numbers: the bounds of the MIG and plugin parsers --------------------------------
# These hold once the parsers bound their counts (the MIG engine's and the device plugin's
# own work); each runs in a child process so that an unbounded parser fails fast here.

PROBE_SECONDS = 20
PROBE_MEMORY = 2 * 1024**3
_PROBE = """
import sys
from helpers import make_node
from tessera.errors import PermanentError
{body}
"""


def _bounded_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (PROBE_MEMORY, PROBE_MEMORY))


def probe(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    """Run `body` in a child with 2 GiB of address space and 20 s: a bound that holds
    refuses well inside both; one that does not fails here instead of eating the machine."""
    tests = Path(__file__).resolve().parent
    script = _PROBE.format(body=body)
    try:
        return subprocess.run([sys.executable, "-c", script], cwd=tests, capture_output=True,
                              text=True, timeout=PROBE_SECONDS, check=False,
                              preexec_fn=_bounded_memory,
                              env={"PYTHONPATH": f"{tests}:{':'.join(sys.path)}",
                                   "TESSERA_SIM_STATE": str(tmp_path / "sim.json")})
    except subprocess.TimeoutExpired:
        pytest.fail(f"not refused within {PROBE_SECONDS} s")


@pytest.mark.parametrize("count", ["10000", "1000000000000000000000000000000", "1e30"])
def test_a_huge_mig_count_is_refused_at_once(tmp_path: Path, count: str) -> None:
    done = probe(tmp_path, f"""
from tessera.mig import engine, spec
node, control = make_node("dgx-a100")
text = "version: v1\\nmig-configs:\\n  big:\\n  - devices: all\\n    mig-enabled: true\\n" \\
       "    mig-devices: {{1g.10gb: {count}}}\\n"
try:
    engine.apply_config(node, spec.parse(text, source="big.yaml"), "big")
except PermanentError as e:
    assert control.mutations() == 0
    print(e)
    sys.exit(2)
""")
    assert done.returncode == 2, done.stderr[-1500:]
    assert "big.yaml" in done.stdout
    assert len(done.stdout.strip().splitlines()) == 1


@pytest.mark.parametrize("replicas", ["100000", "1000000000000"])
def test_huge_replicas_are_refused_at_once(tmp_path: Path, replicas: str) -> None:
    done = probe(tmp_path, f"""
from tessera.plugin.config import parse
from tessera.plugin.inventory import read_inventory
from tessera.plugin.resources import plan_resources
node, _ = make_node("dgx-a100")
text = "version: v1\\nsharing:\\n  timeSlicing:\\n    resources:\\n" \\
       "    - name: nvidia.com/gpu\\n      replicas: {replicas}\\n"
try:
    plan_resources(read_inventory(node), parse(text, source="sliced.yaml"))
except PermanentError as e:
    print(e)
    sys.exit(2)
""")
    assert done.returncode == 2, done.stderr[-1500:]
    assert len(done.stdout.strip().splitlines()) == 1


def test_local_node_file_that_is_not_json_is_named(tmp_path: Path) -> None:
    for data in (b"\xff\xfe", b"[1, 2]", b'{"labels": 5}', b"{" * 50_000):
        path = write(tmp_path, "node.json", data)
        api = LocalNode("n", path)
        with pytest.raises(ConfigError, match=f"node file {re.escape(str(path))}: ") as caught:
            asyncio.run(api.get())
        assert "\n" not in str(caught.value)
