"""NVIDIA's own dcgm-exporter inputs through Tessera's exporter, with dcgm-exporter's outcome.

Two parts, each case stating what dcgm-exporter (4.8.2, `internal/pkg/counters`
`ExtractCounters`, `internal/pkg/devicemonitoring` for the row layout) does with the input and
asserting Tessera does the same — or, for a deliberate difference (listed in the README's
dcgm-exporter table), what Tessera does instead and that it says so:

- Every counters CSV NVIDIA ships or tests with (`etc/*.csv`, the integration test's copy and
  the `parse/` cases): loaded or refused as dcgm-exporter does; every name dcgm-exporter
  registers is either exported under that name or named with the reason it is not.
- NVIDIA's Grafana dashboard (`grafana/dcgm-exporter-dashboard.json`): every template and
  panel query, run by a real Prometheus scraping three simulated nodes — whole A100s, A100s in
  MIG mode and H100s in MIG mode (both `all-balanced`: 4 GPU instances per GPU) — gives the
  series dcgm-exporter's default `-d f` layout gives: one row per GPU, or per GPU instance on
  a MIG GPU, never both, so nothing is counted twice.

The test fails if NVIDIA's inputs gain a file no case accounts for.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import make_node
from metrics_support import (
    NVIDIA_EXPORTER_INPUTS,
    Prometheus,
    fetch,
    fresh_scrape,
    nvidia_input,
    parse,
    running_exporter,
    temp_dir,
)
from plugin_support import apply_layout
from tessera.errors import ConfigError
from tessera.hardware.node import Node
from tessera.hardware.sim.control import SimulatorControl
from tessera.metrics import Exporter, counters
from tessera.metrics.fields import FIELDS

# -- counters files ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Loads:
    """dcgm-exporter loads the file and registers one counter per data row (duplicates
    included). Tessera serves `exported` (None: every row not in `reported`) and names each of
    `reported` in the log and /health with the reason it is not served."""

    exported: tuple[str, ...] | None
    reported: tuple[str, ...] = ()


@dataclass(frozen=True)
class Refused:
    """dcgm-exporter stops with `nvidia`; Tessera exits 2 with `tessera`, naming file and line."""

    nvidia: str
    tessera: str


NOT_READ = ("DCGM_EXP_GPU_HEALTH_STATUS", "DCGM_EXP_P2P_STATUS",
            "DCGM_FI_DEV_NVLINK_BANDWIDTH_L0", "DCGM_FI_DEV_VGPU_LICENSE_STATUS",
            "DCGM_FI_DEV_BRAND", "DCGM_FI_DEV_SERIAL", "DCGM_FI_DEV_OEM_INFOROM_VER",
            "DCGM_FI_DEV_ECC_INFOROM_VER", "DCGM_FI_DEV_POWER_INFOROM_VER",
            "DCGM_FI_DEV_INFOROM_IMAGE_VER", "DCGM_FI_DEV_VBIOS_VERSION")

COUNTERS_CASES: dict[str, Loads | Refused] = {
    "etc_default-counters.csv": Loads(None, ("DCGM_FI_DEV_VGPU_LICENSE_STATUS",)),
    "etc_dcp-metrics-included.csv": Loads(None, ("DCGM_FI_DEV_VGPU_LICENSE_STATUS",)),
    "tests_integration_testdata_default-counters.csv": Loads(
        None, ("DCGM_FI_DEV_VGPU_LICENSE_STATUS",)),
    # 1.x names, served under those names; the PCIe byte counters are listed twice.
    "etc_1.x-compatibility-metrics.csv": Loads(None, ("dcgm_fi_prof_pcie_tx_bytes",
                                                      "dcgm_fi_prof_pcie_rx_bytes")),
    "parse/all_fields_uncommented.csv": Loads(None, NOT_READ),
    "parse/x_valid_gpu_temp.csv": Loads(("DCGM_FI_DEV_GPU_TEMP",)),
    "parse/x_legacy_name.csv": Loads(("dcgm_gpu_temp",)),
    "parse/x_duplicate.csv": Loads(("DCGM_FI_DEV_GPU_TEMP",), ("DCGM_FI_DEV_GPU_TEMP",)),
    "parse/x_ecc_clock_events.csv": Loads(
        ("DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
         "DCGM_FI_DEV_CLOCKS_EVENT_REASONS")),
    "parse/x_ecc_throttle.csv": Loads(
        ("DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
         "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS")),
    "parse/x_exp_xid_count.csv": Loads(("DCGM_FI_DEV_GPU_TEMP", "DCGM_EXP_XID_ERRORS_COUNT")),
    "parse/x_label_fields.csv": Loads(("DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_NVML_VERSION",
                                       "DCGM_FI_DRIVER_VERSION")),
    "parse/x_bad_type.csv": Refused(
        "unsupported Prometheus metric type \"bogus\"",
        "line 1: type 'bogus' of DCGM_FI_DEV_GPU_TEMP is not one of gauge, counter, label"),
    "parse/x_invalid_exp_xxx.csv": Refused(
        "could not find DCGM field",
        "line 1: unknown DCGM field 'DCGM_EXP_XID_ERRORS_COUNTXXX'"),
    "parse/x_two_fields.csv": Refused(
        "malformed CSV record ... expected 3 fields",
        "line 1: expected `<DCGM field>, <type>, <help text>` (exactly two commas)"),
}
DASHBOARD = "grafana_dcgm-exporter-dashboard.json"
DASHBOARD_PROMQL = "dashboard_promql.txt"


def _data_rows(path: Path) -> list[str]:
    """The first column of each row dcgm-exporter's CSV reader returns (comment lines and
    blank lines dropped), in order."""
    return [line.split(",")[0].strip() for line in path.read_text().split("\n")
            if line.strip() and not line.startswith("#")]


def test_every_nvidia_input_is_accounted_for() -> None:
    assert NVIDIA_EXPORTER_INPUTS.is_dir(), f"missing {NVIDIA_EXPORTER_INPUTS}"
    found = {str(p.relative_to(NVIDIA_EXPORTER_INPUTS)) for p in NVIDIA_EXPORTER_INPUTS.rglob("*")
             if p.is_file()}
    assert found == {*COUNTERS_CASES, DASHBOARD, DASHBOARD_PROMQL}


@pytest.mark.parametrize("name", sorted(COUNTERS_CASES))
def test_counters_file_as_dcgm_exporter_reads_it(name: str) -> None:
    path = nvidia_input(name)
    case = COUNTERS_CASES[name]
    if isinstance(case, Refused):
        with pytest.raises(ConfigError) as refused:
            counters.load(path)
        assert str(refused.value).startswith(f"{path}, {case.tessera}")
        return
    parsed = counters.load(path)
    served = [c.name for c in (*parsed.metrics, *parsed.labels)]
    reported = [c.name for c, _ in parsed.skipped]
    # Every row dcgm-exporter registers is served or named, none lost, none made up.
    assert sorted(served + reported) == sorted(_data_rows(path))
    assert reported == list(case.reported)
    if case.exported is not None:
        assert served == list(case.exported)
    assert all(reason for _, reason in parsed.skipped)
    assert len(parsed.warnings()) == len(reported)


@pytest.mark.parametrize("name", sorted(n for n, c in COUNTERS_CASES.items()
                                  if isinstance(c, Loads)))
def test_a_loaded_file_is_served_or_named_never_silently_absent(tmp_path: Path,
                                                                 name: str) -> None:
    """On a node with every kind of value (H100s: GPM, NVLink, HBM), each name the file
    serves has rows (label fields: on every row) or is named in /health with the reason."""
    make_node("dgx-h100", tmp_path / "sim.json")[0].close()
    with running_exporter("dgx-h100", tmp_path / "sim.json", interval_s=0.05,
                          counters=nvidia_input(name)) as exporter:
        for _ in range(2):  # rates and GPM metrics need two samples
            fresh_scrape(exporter)
        text = fresh_scrape(exporter)
        _, _, body = fetch(exporter.port, "/health")
    notes = json.loads(body)["notes"]
    parsed = counters.load(nvidia_input(name))
    families = parse(text)
    temperature = families.get("DCGM_FI_DEV_GPU_TEMP") or families.get("dcgm_gpu_temp") or []
    for c in parsed.labels:
        assert temperature, "no row to carry the label fields"
        assert all(c.name in labels for labels, _ in temperature), c.name
    for c in parsed.metrics:
        named = f"line {c.line}: {c.name} is not exported on this node" in " ".join(notes)
        # prometheus_client's parser names a counter family without its `_total`.
        found = families.get(c.name) or families.get(c.name.removesuffix("_total"))
        if FIELDS[c.field].sparse:  # rows only for events (XIDs, clock events): never named
            assert not named, c.name
        else:
            assert bool(found) != named, (c.name, named)
    for c, _ in parsed.skipped:
        assert any(f"line {c.line}: skipping {c.name}: " in n for n in notes), c.name


# -- the dashboard, through a real Prometheus ---------------------------------------------------


def dashboard() -> tuple[list[str], list[tuple[str, str]]]:
    """NVIDIA's dashboard: its template queries and (panel title, PromQL) of every target."""
    document = json.loads(nvidia_input(DASHBOARD).read_text())
    templates = [t["query"] for t in document["templating"]["list"] if t["type"] == "query"]
    panels: list[tuple[str, str]] = []

    def walk(items: list[dict[str, object]]) -> None:
        for panel in items:
            walk(panel.get("panels", []))  # type: ignore[arg-type]
            for target in panel.get("targets", []):  # type: ignore[attr-defined]
                panels.append((str(panel["title"]), target["expr"]))

    walk(document["panels"])
    return templates, panels


def test_the_promql_list_is_the_dashboards() -> None:
    templates, panels = dashboard()
    listed = nvidia_input(DASHBOARD_PROMQL).read_text().splitlines()[1:]
    assert listed == [f"template {q.split('(')[1].split(',')[1].strip(' )')} : {q}"
                      for q in templates] + [f"panel '{t}' : {e}" for t, e in panels]


@dataclass(frozen=True)
class Target:
    """A simulated node scraped as one Prometheus target."""

    name: str
    preset: str
    layout: str | None  # a mig-parted config of NVIDIA's defaults, or None: whole GPUs
    instances_per_gpu: int


NODES = (Target("a100", "dgx-a100", None, 1),
         Target("a100-mig", "dgx-a100", "all-balanced", 4),
         Target("h100-mig", "dgx-h100", "all-balanced", 4))
GPUS = 8
DATA, EMPTY = "data", "empty"
DCP = ("dcgm-exporter reads DCGM_FI_PROF_* from DCGM's profiling module, which needs DCGM; "
       "Tessera reads NVML, whose GPM has them on Hopper and later only, and names the field "
       "in the log and /health")
# Panel -> node -> (dcgm-exporter's answer, Tessera's if it differs, why).
DIFFERENCES = {("Tensor Core Utilization", "a100"): DCP,
               ("Tensor Core Utilization", "a100-mig"): DCP}


def nvidia_answer(title: str, node: Target) -> str:
    """Data or empty, as dcgm-exporter's `-d f` on that node answers the panel."""
    if title == "GPU Utilization" and node.layout is not None:
        return EMPTY  # DCGM has no GPU_UTIL for a GPU instance (NVIDIA/dcgm-exporter#216)
    return DATA  # every other panel; Tensor Core from DCP on any datacenter GPU since Volta


def nvidia_series(title: str, node: Target) -> int:
    """How many series dcgm-exporter gives for a panel: aggregates one, others one per row."""
    if nvidia_answer(title, node) == EMPTY:
        return 0
    if title in ("GPU Avg. Temp", "GPU Power Total"):
        return 1
    return GPUS * node.instances_per_gpu


@dataclass
class Rig:
    prometheus: Prometheus
    exporters: dict[str, Exporter]

    def instance(self, node: str) -> str:
        return f"127.0.0.1:{self.exporters[node].port}"

    def panel(self, expr: str, node: str) -> str:
        # As Grafana fills a variable: the value, its regex metacharacters escaped (doubled
        # backslashes inside a PromQL string).
        escaped = re.escape(self.instance(node)).replace("\\", "\\\\")
        return expr.replace("$instance", escaped).replace("$gpu", ".*")


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    with temp_dir() as directory, ExitStack() as stack:
        exporters: dict[str, Exporter] = {}
        for node in NODES:
            state = directory / f"{node.name}.json"
            sim, control = make_node(node.preset, state)
            if node.layout is not None:
                apply_layout(sim, node.layout)
            _load(sim, control, node)
            sim.close()
            exporters[node.name] = stack.enter_context(
                running_exporter(node.preset, state, interval_s=0.2))
        targets = [f"127.0.0.1:{e.port}" for e in exporters.values()]
        prometheus = stack.enter_context(Prometheus(directory, targets, {}))
        prometheus.targets_up(len(targets))
        yield Rig(prometheus, exporters)


def _load(sim: Node, control: SimulatorControl, node: Target) -> None:
    """Work on GPU 0: 20000 MiB and 4096 MiB on two of its GPU instances (MIG), or in two
    processes on the whole GPU, with some SM and tensor load."""
    devices = ["0", "0"]
    if node.layout is not None:
        instances = sim.mig_devices(0)
        devices = [instances[0].uuid, instances[-1].uuid]
    for device, memory, load in zip(devices, (20000, 4096), (60, 30), strict=True):
        job = control.start_process(device, memory_mib=memory)
        control.set_load(job.pid, load, tensor=load // 2)


def _answer(result: list[tuple[dict[str, str], float]]) -> str:
    return DATA if result else EMPTY


def test_dashboard_templates_list_every_node_and_gpu(rig: Rig) -> None:
    templates, _ = dashboard()
    assert templates == ["label_values(DCGM_FI_DEV_GPU_TEMP, instance)",
                         "label_values(DCGM_FI_DEV_GPU_TEMP, gpu)"]
    api = rig.prometheus.api
    assert sorted(api("label/instance/values", **{"match[]": "DCGM_FI_DEV_GPU_TEMP"})) == sorted(
        rig.instance(n.name) for n in NODES)
    assert sorted(api("label/gpu/values", **{"match[]": "DCGM_FI_DEV_GPU_TEMP"}),
                  key=int) == [str(i) for i in range(GPUS)]


@pytest.mark.parametrize("node", NODES, ids=[n.name for n in NODES])
def test_every_dashboard_panel_answers_as_dcgm_exporter(rig: Rig, node: Target) -> None:
    _, panels = dashboard()
    assert len(panels) == 8
    prometheus = rig.prometheus
    # Wait until every family with data has been scraped at least once.
    prometheus.wait_until(rig.panel('DCGM_FI_DEV_FB_USED{instance=~"$instance"}', node.name),
                          lambda r: len(r) == GPUS * node.instances_per_gpu)
    agree, differ = [], []
    for title, expr in panels:
        result = prometheus.query(rig.panel(expr, node.name))
        nvidia = nvidia_answer(title, node)
        why = DIFFERENCES.get((title, node.name))
        if why is None:
            assert _answer(result) == nvidia, (title, expr)
            assert len(result) == nvidia_series(title, node), (title, expr, result)
            agree.append(title)
        else:
            assert (nvidia, _answer(result)) == (DATA, EMPTY), title
            differ.append(title)
    assert len(agree) + len(differ) == 8
    assert differ == [t for t, n in DIFFERENCES if n == node.name]
    # The difference is never silent: /health names the field the node cannot supply.
    _, _, body = fetch(rig.exporters[node.name].port, "/health")
    notes = json.loads(body)["notes"]
    named = any("DCGM_FI_PROF_PIPE_TENSOR_ACTIVE is not exported on this node" in n
                for n in notes)
    assert named == bool(differ)


@pytest.mark.parametrize("node", NODES, ids=[n.name for n in NODES])
def test_rows_are_dcgm_exporters_layout_and_count_once(rig: Rig, node: Target) -> None:
    prometheus = rig.prometheus
    where = f'instance="{rig.instance(node.name)}"'
    rows = prometheus.wait_until(f"DCGM_FI_DEV_GPU_TEMP{{{where}}}",
                                 lambda r: len(r) == GPUS * node.instances_per_gpu)
    has_instance = {m.get("GPU_I_ID", "") != "" for m, _ in rows}
    # Whole GPUs: GPU rows only. MIG: instance rows only — no GPU row beside them.
    assert has_instance == {node.layout is not None}
    if node.layout is not None:
        per_gpu = prometheus.query(f"count by (gpu) (DCGM_FI_DEV_GPU_TEMP{{{where}}})")
        assert {v for _, v in per_gpu} == {node.instances_per_gpu}
        profiles = prometheus.query(
            f'count by (GPU_I_PROFILE) (DCGM_FI_DEV_FB_USED{{{where}, gpu="0"}})')
        assert {m["GPU_I_PROFILE"]: v for m, v in profiles} == {
            "1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1}
        # A GPU-wide value repeats on each instance, as dcgm-exporter's instance entities do.
        power = prometheus.query(
            f'count by (gpu) (count_values by (gpu) ("watts", '
            f"DCGM_FI_DEV_POWER_USAGE{{{where}}}))")
        assert [v for _, v in power] == [1] * GPUS
    # `sum by (gpu)` of framebuffer memory counts each MiB once: 20000 + 4096 on GPU 0.
    used = prometheus.query(f'sum by (gpu) (DCGM_FI_DEV_FB_USED{{{where}, gpu="0"}})')
    assert [v for _, v in used] == [24096]
    # dcgm-exporter's "GPU Power Total" sums the rows: on a MIG node, each GPU's power once per
    # instance (NVIDIA/dcgm-exporter#257); `max by (gpu)` first gives the node's draw.
    total = prometheus.query(f"sum(DCGM_FI_DEV_POWER_USAGE{{{where}}})")[0][1]
    draw = prometheus.query(
        f"sum(max by (gpu) (DCGM_FI_DEV_POWER_USAGE{{{where}}}))")[0][1]
    assert total == pytest.approx(draw * node.instances_per_gpu)
