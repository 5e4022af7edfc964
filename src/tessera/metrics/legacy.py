"""Other names dcgm-exporter reads for DCGM fields: 1.x names and deprecated aliases.

dcgm-exporter resolves a counters file's first column through go-dcgm, which knows, beside
each field's current `DCGM_FI_*` name, the lowercase names of dcgm-exporter 1.x (its
`etc/1.x-compatibility-metrics.csv`: `dcgm_sm_clock`, `dcgm_fb_used`, ...; go-dcgm's
`legacy_fields.csv`, by field ID) and names DCGM deprecated but still accepts
(`DCGM_FI_DEV_CLOCK_THROTTLE_REASONS` is field 112, now `DCGM_FI_DEV_CLOCKS_EVENT_REASONS`).
A metric is exported under the name the file gives, with the value of the field it names,
as dcgm-exporter does — so dashboards written against the old names keep working.
"""

from __future__ import annotations

from collections.abc import Mapping

# Deprecated DCGM names -> the current name of the same field ID.
ALIASES: Mapping[str, str] = {
    "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS": "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",  # field 112
}

# go-dcgm's legacy names (dcgm-exporter 1.x) -> the current name of the same field ID.
LEGACY_NAMES: Mapping[str, str] = {
    "dcgm_sm_clock": "DCGM_FI_DEV_SM_CLOCK",  # 100
    "dcgm_memory_clock": "DCGM_FI_DEV_MEM_CLOCK",  # 101
    "dcgm_memory_temp": "DCGM_FI_DEV_MEMORY_TEMP",  # 140
    "dcgm_gpu_temp": "DCGM_FI_DEV_GPU_TEMP",  # 150
    "dcgm_power_usage": "DCGM_FI_DEV_POWER_USAGE",  # 155
    "dcgm_total_energy_consumption": "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",  # 156
    "dcgm_pcie_tx_throughput": "DCGM_FI_DEV_PCIE_TX_THROUGHPUT",  # 200
    "dcgm_pcie_rx_throughput": "DCGM_FI_DEV_PCIE_RX_THROUGHPUT",  # 201
    "dcgm_pcie_replay_counter": "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",  # 202
    "dcgm_gpu_utilization": "DCGM_FI_DEV_GPU_UTIL",  # 203
    "dcgm_mem_copy_utilization": "DCGM_FI_DEV_MEM_COPY_UTIL",  # 204
    "dcgm_enc_utilization": "DCGM_FI_DEV_ENC_UTIL",  # 206
    "dcgm_dec_utilization": "DCGM_FI_DEV_DEC_UTIL",  # 207
    "dcgm_xid_errors": "DCGM_FI_DEV_XID_ERRORS",  # 230
    "dcgm_power_violation": "DCGM_FI_DEV_POWER_VIOLATION",  # 240
    "dcgm_thermal_violation": "DCGM_FI_DEV_THERMAL_VIOLATION",  # 241
    "dcgm_sync_boost_violation": "DCGM_FI_DEV_SYNC_BOOST_VIOLATION",  # 242
    "dcgm_board_limit_violation": "DCGM_FI_DEV_BOARD_LIMIT_VIOLATION",  # 243
    "dcgm_low_util_violation": "DCGM_FI_DEV_LOW_UTIL_VIOLATION",  # 244
    "dcgm_reliability_violation": "DCGM_FI_DEV_RELIABILITY_VIOLATION",  # 245
    "dcgm_fb_free": "DCGM_FI_DEV_FB_FREE",  # 251
    "dcgm_fb_used": "DCGM_FI_DEV_FB_USED",  # 252
    "dcgm_ecc_sbe_volatile_total": "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",  # 310
    "dcgm_ecc_dbe_volatile_total": "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",  # 311
    "dcgm_ecc_sbe_aggregate_total": "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL",  # 312
    "dcgm_ecc_dbe_aggregate_total": "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL",  # 313
    "dcgm_retired_pages_sbe": "DCGM_FI_DEV_RETIRED_SBE",  # 390
    "dcgm_retired_pages_dbe": "DCGM_FI_DEV_RETIRED_DBE",  # 391
    "dcgm_retired_pages_pending": "DCGM_FI_DEV_RETIRED_PENDING",  # 392
    "dcgm_nvlink_flit_crc_error_count_total": "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL",
    "dcgm_nvlink_data_crc_error_count_total": "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL",
    "dcgm_nvlink_replay_error_count_total": "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL",
    "dcgm_nvlink_recovery_error_count_total": "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL",
    "dcgm_nvlink_bandwidth_total": "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",  # 449
    "dcgm_fi_prof_gr_engine_active": "DCGM_FI_PROF_GR_ENGINE_ACTIVE",  # 1001
    "dcgm_fi_prof_sm_active": "DCGM_FI_PROF_SM_ACTIVE",  # 1002
    "dcgm_fi_prof_sm_occupancy": "DCGM_FI_PROF_SM_OCCUPANCY",  # 1003
    "dcgm_fi_prof_pipe_tensor_active": "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",  # 1004
    "dcgm_fi_prof_dram_active": "DCGM_FI_PROF_DRAM_ACTIVE",  # 1005
    "dcgm_fi_prof_pcie_tx_bytes": "DCGM_FI_PROF_PCIE_TX_BYTES",  # 1009
    "dcgm_fi_prof_pcie_rx_bytes": "DCGM_FI_PROF_PCIE_RX_BYTES",  # 1010
}


def canonical(name: str) -> str:
    """The current DCGM name of the field `name` stands for (itself if it is current)."""
    return ALIASES.get(name) or LEGACY_NAMES.get(name) or name
