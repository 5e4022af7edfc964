"""The counters CSV: dcgm-exporter's format, read unchanged; mistakes named by file and line."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.errors import ConfigError
from tessera.metrics import counters
from tessera.metrics.fields import FIELDS, LABEL_FIELDS, NOT_EXPORTED
from tessera.metrics.legacy import LEGACY_NAMES
from tessera.textinput import MAX_FILE_BYTES

# dcgm-exporter's dcp-metrics-included.csv style: `,,` comment tails, padding, a space
# before a comma, label rows, commented-out rows.
DCGM_STYLE = """\
# Format,,
# If line starts with a '#' it is considered a comment,,
# DCGM FIELD, Prometheus metric type, help message

# Clocks,,
DCGM_FI_DEV_SM_CLOCK,  gauge, SM clock frequency (in MHz).
DCGM_FI_DEV_DEC_UTIL ,     gauge, Decoder utilization (in %).
# DCGM_FI_DEV_POWER_VIOLATION,       counter, Throttling duration due to power constraints (in us).
DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION, counter, Total energy consumption since boot (in mJ).
DCGM_FI_DEV_VGPU_LICENSE_STATUS, gauge, vGPU License status
DCGM_FI_DRIVER_VERSION,        label, Driver Version
DCGM_FI_PROF_GR_ENGINE_ACTIVE,   gauge, Ratio of time the graphics engine is active.
"""


def test_dcgm_exporters_own_file_reads_unchanged() -> None:
    parsed = counters.parse(DCGM_STYLE, "dcp-metrics-included.csv")
    assert [(c.field, c.kind, c.line) for c in parsed.metrics] == [
        ("DCGM_FI_DEV_SM_CLOCK", "gauge", 6),
        ("DCGM_FI_DEV_DEC_UTIL", "gauge", 7),
        ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "counter", 9),
        ("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "gauge", 12),
    ]
    assert parsed.metrics[1].help == "Decoder utilization (in %)."
    assert [c.field for c in parsed.labels] == ["DCGM_FI_DRIVER_VERSION"]
    assert parsed.warnings() == [
        "dcp-metrics-included.csv, line 10: skipping DCGM_FI_DEV_VGPU_LICENSE_STATUS: only vGPU "
        "guests hold a licence; a GPU node has none"]


def test_the_default_is_dcgm_exporters_default_list() -> None:
    parsed = counters.default_counters()
    assert {c.field for c in parsed.metrics} == {
        "DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_MEM_CLOCK", "DCGM_FI_DEV_MEMORY_TEMP",
        "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE",
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
        "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_MEM_COPY_UTIL", "DCGM_FI_DEV_ENC_UTIL",
        "DCGM_FI_DEV_DEC_UTIL", "DCGM_FI_DEV_XID_ERRORS", "DCGM_FI_DEV_FB_FREE",
        "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_RESERVED", "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
        "DCGM_FI_DEV_ROW_REMAP_FAILURE", "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "DCGM_FI_PROF_DRAM_ACTIVE",
        "DCGM_FI_PROF_PCIE_TX_BYTES", "DCGM_FI_PROF_PCIE_RX_BYTES",
    }
    kinds = {c.field: c.kind for c in parsed.metrics}
    assert kinds["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"] == "counter"
    assert kinds["DCGM_FI_DEV_GPU_UTIL"] == "gauge"
    assert [c.field for c in parsed.labels] == ["DCGM_FI_DRIVER_VERSION"]
    assert [c.field for c, _ in parsed.skipped] == ["DCGM_FI_DEV_VGPU_LICENSE_STATUS"]


@pytest.mark.parametrize(("line", "message"), [
    ("DCGM_FI_DEV_SM_CLOCK, gauge", "counters.csv, line 2: expected `<DCGM field>, <type>, "
                                    "<help text>` (exactly two commas)"),
    ("DCGM_FI_DEV_SM_CLOCK, gauge, SM clock, in MHz", "counters.csv, line 2: expected"),
    ("DCGM_FI_DEV_SM_CLOK, gauge, SM clock", "counters.csv, line 2: unknown DCGM field "
                                             "'DCGM_FI_DEV_SM_CLOK'"),
    ("DCGM_FI_DEV_SM_CLOCK, histogram, SM clock", "counters.csv, line 2: type 'histogram' of "
                                                  "DCGM_FI_DEV_SM_CLOCK is not one of gauge, "
                                                  "counter, label"),
    ("DCGM_FI_DRIVER_VERSION, gauge, Driver", "counters.csv, line 2: DCGM_FI_DRIVER_VERSION is "
                                              "text; give it the type label"),
    ("DCGM_FI_DEV_GPU_UTIL, label, util", "counters.csv, line 2: DCGM_FI_DEV_GPU_UTIL is a "
                                          "number"),
    ("dcgm_gpu_tmp, gauge, typo", "counters.csv, line 2: unknown DCGM field 'dcgm_gpu_tmp'"),
    ("DCGM_EXP_XID_ERRORS_COUNTXXX, gauge, x", "counters.csv, line 2: unknown DCGM field "
                                               "'DCGM_EXP_XID_ERRORS_COUNTXXX'"),
])
def test_a_bad_line_is_named(line: str, message: str) -> None:
    text = f"DCGM_FI_DEV_GPU_TEMP, gauge, GPU temperature (in C).\n{line}\n"
    with pytest.raises(ConfigError) as raised:
        counters.parse(text, "counters.csv")
    assert str(raised.value).startswith(message)


def test_1x_names_and_deprecated_aliases_keep_their_names() -> None:
    parsed = counters.parse(
        "dcgm_sm_clock, gauge, SM clock frequency (in MHz).\n"
        "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS, gauge, throttle\n"
        "DCGM_FI_DEV_CLOCKS_EVENT_REASONS, gauge, clock event reasons\n"
        "dcgm_pcie_tx_throughput, counter, not read\n", "1.x.csv")
    assert [(c.name, c.field) for c in parsed.metrics] == [
        ("dcgm_sm_clock", "DCGM_FI_DEV_SM_CLOCK"),
        ("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "DCGM_FI_DEV_CLOCKS_EVENT_REASONS"),
        ("DCGM_FI_DEV_CLOCKS_EVENT_REASONS", "DCGM_FI_DEV_CLOCKS_EVENT_REASONS"),
    ]
    assert [(c.name, c.field) for c, _ in parsed.skipped] == [
        ("dcgm_pcie_tx_throughput", "DCGM_FI_DEV_PCIE_TX_THROUGHPUT")]


def test_a_name_listed_twice_keeps_the_first_line_and_warns_once() -> None:
    parsed = counters.parse("DCGM_FI_DEV_GPU_TEMP, gauge, temperature\n"
                            "DCGM_FI_DEV_GPU_TEMP, counter, temperature again\n"
                            "DCGM_FI_DEV_GPU_TEMP, gauge, and again\n", "twice.csv")
    assert [(c.name, c.kind, c.help, c.line) for c in parsed.metrics] == [
        ("DCGM_FI_DEV_GPU_TEMP", "gauge", "temperature", 1)]
    assert parsed.warnings() == [
        "twice.csv, line 2: skipping DCGM_FI_DEV_GPU_TEMP: already listed on line 1, which is "
        "used; remove one of the two lines",
        "twice.csv, line 3: skipping DCGM_FI_DEV_GPU_TEMP: already listed on line 1, which is "
        "used; remove one of the two lines"]


def test_a_file_that_is_not_text_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"DCGM_FI_DEV_GPU_TEMP, gauge, GPU temperature\n"
                     b"DCGM_FI_DEV_SM_CLOCK, gauge, SM clock (in \xb5s)\n")
    with pytest.raises(ConfigError, match=r"latin1\.csv: not UTF-8 text \(line 2, byte"):
        counters.load(path)


def test_a_huge_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "huge.csv"
    path.write_bytes(b"# padding\n" * (MAX_FILE_BYTES // 10 + 1))
    with pytest.raises(ConfigError, match=r"huge\.csv: \d+ bytes is more than the"):
        counters.load(path)


def test_a_missing_file_says_which(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"counters file .*nope\.csv: does not exist"):
        counters.load(tmp_path / "nope.csv")


def test_a_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "counters.csv"
    path.write_text("DCGM_FI_DEV_FB_USED, gauge, Framebuffer memory used (in MiB).\n")
    parsed = counters.load(path)
    assert parsed.source == str(path)
    assert [c.field for c in parsed.metrics] == ["DCGM_FI_DEV_FB_USED"]


_NUMBERS = sorted(FIELDS)
_TEXT = sorted(LABEL_FIELDS)
_HELP = st.text(st.characters(blacklist_characters=",\n\r", blacklist_categories=("Cs",)),
                max_size=30)


@given(
    st.lists(st.sampled_from(_NUMBERS + _TEXT + sorted(NOT_EXPORTED) + sorted(LEGACY_NAMES)),
             unique=True, max_size=15),
    st.data(),
)
def test_any_well_formed_file_reads_back_field_for_field(fields: list[str],
                                                         data: st.DataObject) -> None:
    lines = []
    expected = []
    for name in fields:
        kind = "label" if name in LABEL_FIELDS else data.draw(st.sampled_from(["gauge",
                                                                               "counter"]))
        pad = data.draw(st.sampled_from(["", " ", "   "]))
        help_text = data.draw(_HELP)
        lines.append(f"{name}{pad},{pad}{kind},{pad}{help_text}")
        expected.append((name, kind, help_text.strip() or name))
        if data.draw(st.booleans()):
            lines.append(f"# {name}, {kind}, commented out")
    parsed = counters.parse("\n".join(lines))
    got = [(c.name, c.kind, c.help) for c in (*parsed.metrics, *parsed.labels)]
    got += [(c.name, c.kind, c.help) for c, _ in parsed.skipped]
    assert sorted(got) == sorted(expected)
