"""The `tessera` command line as a user drives it: exit codes, outputs, the README flow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tessera.cli.main import app
from tessera.mig import spec

runner = CliRunner()


def tessera(*args: str, preset: str = "dgx-a100") -> tuple[int, str, str]:
    result = runner.invoke(app, ["--simulate", preset, *args])
    return result.exit_code, result.stdout, result.stderr


def test_apply_then_assert_then_apply_again_is_a_no_op() -> None:
    code, out, _ = tessera("mig", "apply", "-c", "all-balanced", "-o", "json")
    assert code == 0
    report = json.loads(out)
    assert report["instances"] == {"kept": 0, "destroyed": 0, "created": 64}
    assert len(report["done"]) == len(report["steps"]) == 80
    assert {s["action"] for s in report["done"]} == {
        "set-mig-mode", "reset-gpu", "create-gpu-instance", "create-compute-instance"}
    assert tessera("mig", "assert", "-c", "all-balanced")[0] == 0
    assert tessera("mig", "assert", "-c", "all-1g.10gb")[0] == 1
    code, out, _ = tessera("mig", "apply", "-c", "all-balanced")
    assert code == 0
    assert "nothing to do" in out


def test_apply_reports_what_was_kept_destroyed_and_created() -> None:
    tessera("mig", "apply", "-c", "all-balanced")
    code, out, _ = tessera("mig", "apply", "-c", "all-1g.10gb", "-o", "json")
    assert code == 0
    assert json.loads(out)["instances"] == {"kept": 32, "destroyed": 32, "created": 80}


def test_dry_run_changes_nothing() -> None:
    code, out, _ = tessera("mig", "apply", "-c", "all-3g.40gb", "--dry-run", "-o", "yaml")
    assert code == 0
    assert yaml.safe_load(out)["instances"]["created"] == 32
    assert tessera("mig", "assert", "-c", "all-disabled")[0] == 0


def test_export_is_a_config_that_applies_as_a_no_op(tmp_path: Path) -> None:
    tessera("mig", "apply", "-c", "all-balanced")
    code, out, _ = tessera("mig", "export")
    assert code == 0
    exported = spec.parse(out, source="export")
    name, entries = exported.select(None)
    assert name == "current"
    assert entries[0].devices == tuple(range(8))
    assert {str(p): n for p, n in entries[0].mig_devices} == {
        "1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1}
    path = tmp_path / "current.yaml"
    path.write_text(out)
    assert tessera("mig", "assert", "-f", str(path))[0] == 0


def test_user_file_with_nvidia_names_applies(tmp_path: Path) -> None:
    path = tmp_path / "custom.yaml"
    path.write_text(
        "version: v1\nmig-configs:\n  custom-config:\n"
        "    - devices: [0,1,2,3]\n      mig-enabled: false\n"
        "    - devices: [4]\n      mig-enabled: true\n      mig-devices: {\"1g.10gb\": 7}\n"
        "    - device-filter: [\"0x20B210DE\"]\n      devices: [7]\n      mig-enabled: true\n"
        "      mig-devices: {\"3g.40gb\": 2}\n"
    )
    assert tessera("mig", "apply", "-f", str(path), "-c", "custom-config")[0] == 0
    data = json.loads(tessera("mig", "show", "-o", "json")[1])
    by_index = {g["index"]: g for g in data["gpus"]}
    assert by_index[4]["mig_devices"] == {"1g.10gb": 7}
    assert by_index[7]["mig_devices"] == {"3g.40gb": 2}
    assert not by_index[0]["mig_mode"]["current"]
    assert not by_index[5]["mig_mode"]["current"]  # no entry selects GPUs 5 and 6


def test_bad_input_is_one_red_line_and_exit_code_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("version: v2\nmig-configs: {}\n")
    code, out, err = tessera("mig", "apply", "-f", str(path), "-c", "x")
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error:")
    assert "bad.yaml" in lines[0]
    assert "version" in lines[0]


def test_a_refused_apply_exits_1_and_names_the_pids() -> None:
    tessera("mig", "apply", "-c", "all-1g.10gb")
    code, out, _ = tessera("sim", "process", "start", "0:7:0")
    assert code == 0
    pid = out.strip()
    code, _, err = tessera("mig", "apply", "-c", "all-7g.80gb")
    assert code == 1
    assert pid in err
    assert "--force" in err
    assert tessera("sim", "process", "stop", pid)[0] == 0
    assert tessera("mig", "apply", "-c", "all-7g.80gb")[0] == 0


def test_injected_failure_stops_the_apply_and_the_next_one_converges() -> None:
    assert tessera("sim", "fail", "--after", "5")[0] == 0
    code, _, err = tessera("mig", "apply", "-c", "all-balanced")
    assert code == 1
    assert "step 5 of 80 failed" in err
    assert tessera("mig", "apply", "-c", "all-balanced")[0] == 0
    assert tessera("mig", "assert", "-c", "all-balanced")[0] == 0


def test_profiles_show_and_generate() -> None:
    code, out, _ = tessera("mig", "profiles", "-o", "json", preset="a30x4")
    assert code == 0
    profiles = json.loads(out)
    assert [p["name"] for p in profiles[0]["profiles"]] == [
        "1g.6gb", "1g.6gb+me", "2g.12gb", "2g.12gb+me", "4g.24gb"]
    code, out, _ = tessera("mig", "generate", preset="mixed")
    assert code == 0
    generated = spec.parse(out, source="generated")
    assert {"all-disabled", "all-enabled", "all-balanced", "all-1g.10gb.me"} <= set(
        generated.configs)
    code, out, _ = tessera("mig", "show", preset="mixed")
    assert code == 0
    assert "NVIDIA L40S" in out
    assert "no MIG" in out


def test_sim_reset_and_xid() -> None:
    tessera("mig", "apply", "-c", "all-balanced")
    code, out, _ = tessera("sim", "xid", "3", "79")
    assert code == 0
    assert "XID 79 on GPU 3" in out
    code, _, err = tessera("mig", "show")
    assert code == 1
    assert "GPU 3" in err
    assert "fallen off the bus" in err
    assert tessera("sim", "reset")[0] == 0
    assert tessera("mig", "assert", "-c", "all-disabled")[0] == 0


def test_sim_commands_need_a_preset() -> None:
    result = runner.invoke(app, ["sim", "reset"])
    assert result.exit_code == 2
    assert "--simulate" in result.stderr


@pytest.mark.parametrize("preset", ["dgx-a100", "dgx-h100", "hgx-h200", "a30x4", "mixed"])
def test_generated_balanced_config_applies_on_every_preset(preset: str) -> None:
    assert tessera("mig", "apply", "-c", "all-balanced", preset=preset)[0] == 0
    assert tessera("mig", "assert", "-c", "all-balanced", preset=preset)[0] == 0


def test_readme_main_command_runs_as_a_user_would(tmp_path: Path) -> None:
    """The README's first command, after its install step: the agent partitions, advertises
    and labels a simulated node, and shows it."""
    env = {**os.environ, "TESSERA_SIM_STATE": str(tmp_path / "readme.json"),
           "XDG_STATE_HOME": str(tmp_path / "state")}
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    first = next(line for line in readme.splitlines() if "tessera --simulate" in line)
    command = first[first.index("tessera --simulate"):].rstrip("`").strip()
    bin_dir = Path(sys.executable).parent
    done = subprocess.run(command, shell=True, env={**env, "PATH": f"{bin_dir}:{env['PATH']}"},
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "all-balanced: success" in done.stdout
    assert "nvidia.com/gpu" in done.stdout
    assert "gpu.product=NVIDIA-A100-SXM4-80GB" in done.stdout
    assert "3g.40gb" in done.stdout
    assert "MIG-" in done.stdout


def test_layout_exports_and_applies_exact_placements(tmp_path: Path) -> None:
    assert tessera("mig", "apply", "-c", "all-balanced", preset="a30x4")[0] == 0
    code, out, _ = tessera("mig", "layout", "--json", preset="a30x4")
    assert code == 0
    layout = json.loads(out)
    assert layout["gpus"]["1"] == [{"profile": "2g.12gb", "placement": 0},
                                   {"profile": "1g.6gb", "placement": 2},
                                   {"profile": "1g.6gb", "placement": 3}]
    layout["gpus"]["0"] = [{"profile": "4g.24gb", "placement": 0}]
    wanted = tmp_path / "layout.json"
    wanted.write_text(json.dumps(layout))
    code, out, _ = tessera("mig", "layout", "--apply", str(wanted), preset="a30x4")
    assert code == 0
    # GPU 0's three instances (and their compute instances) go, one comes; the rest stay.
    assert "18 instances kept, 6 destroyed, 2 created" in out
    assert json.loads(tessera("mig", "layout", "--json", preset="a30x4")[1]) == layout

    wanted.write_text(json.dumps({"version": "v1",
                                  "gpus": {"0": [{"profile": "4g.24gb", "placement": 1}]}}))
    code, _, err = tessera("mig", "layout", "--apply", str(wanted), preset="a30x4")
    assert code == 2
    assert "valid placements: 0" in err
