"""`tessera mig` as a drop-in for `nvidia-mig-parted`: its flags, hooks and exit codes, bounds
on counts, and one broken GPU leaving the rest of the node workable."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tessera.cli.main import app
from tessera.hardware.sim.state import SimStore

runner = CliRunner()


def tessera(*args: str, preset: str = "dgx-a100",
            env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, ["--simulate", preset, *args], env=env)
    return result.exit_code, result.stdout, result.stderr


def _sim_gpu(index: int) -> tuple[object, ...]:
    """A simulated GPU's MIG mode and instances as its state file holds them (readable even
    when NVML has lost the GPU)."""
    gpu = SimStore("dgx-a100", Path(os.environ["TESSERA_SIM_STATE"])).read().gpus[index]
    return gpu.mig_current, gpu.mig_pending, repr(gpu.gpu_instances)


def _config(tmp_path: Path, devices: str) -> Path:
    path = tmp_path / "mig.yaml"
    path.write_text("version: v1\nmig-configs:\n  big:\n    - devices: all\n"
                    f"      mig-enabled: true\n      mig-devices: {devices}\n")
    return path


# -- bounds ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("devices", "words"), [
    ('{"1g.10gb": 10000}', ["entry 0", "10000x 1g.10gb", "at most 7"]),
    ('{"1g.10gb": 1e30}', ["entry 0", "1g.10gb", "1e30", "at most 8"]),
    ('{"1c.7g.80gb": 8}', ["entry 0", "8x 1c.7g.80gb", "at most 7"]),
])
def test_an_impossible_count_is_refused_at_once_naming_it(
    tmp_path: Path, devices: str, words: list[str]
) -> None:
    code, _, err = tessera("mig", "apply", "-f", str(_config(tmp_path, devices)))
    assert code == 2
    for word in words:
        assert word in err, (word, err)
    assert tessera("mig", "assert", "-c", "all-disabled")[0] == 0


def test_a_profile_from_another_product_is_refused_quickly() -> None:
    # Once seen running past 120 s in a bulk run; it is one lookup before any search.
    nvidia = (Path(__file__).resolve().parents[1].parent / "shared" / "reference"
              / "nvidia-inputs" / "mig"
              / "gpu-operator_state-mig-manager_0400_configmap.config.yaml")
    if not nvidia.is_file():
        pytest.skip("NVIDIA's inputs are not here")
    code, _, err = tessera("mig", "apply", "-f", str(nvidia), "-c", "all-2g.47gb",
                           preset="dgx-a100-40gb")
    assert code == 2
    assert "has no MIG profile 2g.47gb" in err


# -- mig-parted's flags ---------------------------------------------------------------------


def test_mode_only_changes_modes_and_assert_mode_only_sees_them() -> None:
    code, out, _ = tessera("mig", "apply", "-c", "all-balanced", "--mode-only", "-o", "json")
    assert code == 0
    assert {s["action"] for s in json.loads(out)["done"]} == {"set-mig-mode", "reset-gpu"}
    assert tessera("mig", "assert", "-c", "all-balanced", "-m")[0] == 0
    assert tessera("mig", "assert", "-c", "all-balanced")[0] == 1
    assert tessera("mig", "apply", "-c", "all-balanced")[0] == 0
    assert tessera("mig", "assert", "-c", "all-balanced")[0] == 0


def test_skip_reset_leaves_the_mode_change_pending(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIG_PARTED_SKIP_RESET", "true")
    code, _, err = tessera("mig", "apply", "-c", "all-enabled", "-m")
    assert code == 0
    assert "GPU 0: MIG mode change pending until the GPU is reset" in err
    gpus = json.loads(tessera("mig", "show", "-o", "json")[1])["gpus"]
    assert {(g["mig_mode"]["current"], g["mig_mode"]["pending"]) for g in gpus} == {
        (False, True)}
    # Without --mode-only the devices cannot follow before the reset: exit 1, said why.
    code, _, err = tessera("mig", "apply", "-c", "all-balanced")
    assert code == 1
    assert "pending until the GPU is reset" in err
    monkeypatch.delenv("MIG_PARTED_SKIP_RESET")
    assert tessera("mig", "apply", "-c", "all-balanced")[0] == 0
    assert tessera("mig", "assert", "-c", "all-balanced")[0] == 0


def test_debug_says_each_step_and_what_was_skipped(tmp_path: Path) -> None:
    path = tmp_path / "shared.yaml"
    path.write_text("version: v1\nmig-configs:\n  c:\n    - devices: [0, 9]\n"
                    "      mig-enabled: true\n      mig-devices: {3g.40gb: 2}\n")
    code, _, err = tessera("mig", "-d", "apply", "-f", str(path))
    assert code == 0
    assert "debug: entry 0: this node has no GPU 9; skipped there" in err
    assert "debug: GPU 0: enable MIG mode" in err
    assert sum("create" in line for line in err.splitlines()) == 4  # 2 GIs, 2 CIs


def test_export_takes_mig_parteds_output_format_and_label() -> None:
    tessera("mig", "apply", "-c", "all-3g.40gb")
    code, out, _ = tessera("mig", "export", "--output-format", "json", "-l", "now")
    assert code == 0
    data = json.loads(out)
    assert data["mig-configs"]["now"][0]["mig-devices"] == {"3g.40gb": 2}
    code, out, _ = tessera("mig", "export", env={"MIG_PARTED_OUTPUT_FORMAT": "json"})
    assert json.loads(out)["version"] == "v1"


def test_profiles_are_one_table_with_a_gpu_column_and_compute_profiles_too() -> None:
    code, out, _ = tessera("mig", "profiles", preset="mixed")
    assert code == 0
    assert out.count("GPU instance profiles") == 1
    rows = [line.split("│") for line in out.splitlines() if "3g.40gb" in line]
    assert sorted(r[1].strip() for r in rows) == ["0", "1"]  # the A100s; the L40Ss have none
    code, out, _ = tessera("mig", "profiles", "--compute", preset="mixed")
    assert code == 0
    assert "Compute instance profiles" in out
    assert {"1c.3g.40gb", "2c.3g.40gb", "3g.40gb*"} <= {
        cell.strip() for line in out.splitlines() for cell in line.split("│")}
    data = json.loads(tessera("mig", "profiles", "-C", "-o", "json", preset="a30x4")[1])
    assert {p["name"] for p in data[0]["compute_profiles"]} >= {"1c.2g.12gb", "2g.12gb"}


def test_valid_config_only_reads_the_file(tmp_path: Path) -> None:
    path = _config(tmp_path, '{"3g.40gb": 2}')
    assert tessera("mig", "assert", "-f", str(path), "-c", "big", "-a")[0] == 0
    code, _, err = tessera("mig", "assert", "-f", str(path), "-c", "nope", "-a")
    assert code == 2
    assert "no config named 'nope'" in err


# -- assert ---------------------------------------------------------------------------------


def test_assert_names_the_gpus_without_mig() -> None:
    assert tessera("mig", "apply", "-c", "all-disabled", preset="mixed")[0] == 0
    code, out, _ = tessera("mig", "assert", "-c", "all-disabled", preset="mixed")
    assert code == 0
    assert "GPU 2: NVIDIA L40S has no MIG; skipped" in out
    assert "GPU 3: NVIDIA L40S has no MIG; skipped" in out


def test_assert_fails_like_mig_parted_where_mig_is_wanted_on_a_gpu_without_it(
    tmp_path: Path
) -> None:
    path = _config(tmp_path, '{"3g.40gb": 2}')
    assert tessera("mig", "apply", "-f", str(path), preset="mixed")[0] == 0
    code, out, _ = tessera("mig", "assert", "-f", str(path), "-o", "json", preset="mixed")
    assert code == 1
    data = json.loads(out)
    assert data["differences"] == []
    assert data["gpus_wanting_mig_without_it"] == [2, 3]


def test_a_zero_count_is_absent_in_assert_as_in_apply(tmp_path: Path) -> None:
    # Deliberate: mig-parted's assert fails here after its own apply (map lengths differ).
    path = _config(tmp_path, '{"1g.10gb": 0, "2g.20gb": 1}')
    assert tessera("mig", "apply", "-f", str(path))[0] == 0
    assert tessera("mig", "assert", "-f", str(path))[0] == 0


# -- hooks ----------------------------------------------------------------------------------


def _hooks(tmp_path: Path, failing: str | None = None) -> tuple[Path, Path]:
    log = tmp_path / "hooks.log"
    hooks = {}
    for name in ("apply-start", "pre-apply-mode", "pre-apply-config", "apply-exit"):
        line = (f'echo "{name} $MIG_PARTED_SELECTED_CONFIG $MIG_PARTED_MODE_CHANGE_ONLY '
                f'$MIG_PARTED_DEBUG $OWN $(pwd)" >> {log}')
        if name == failing:
            line += "; exit 3"
        hooks[name] = [{"workdir": str(tmp_path), "command": "/bin/sh", "args": ["-c", line],
                        "envs": {"OWN": "mine"}}]
    path = tmp_path / "hooks.yaml"
    path.write_text(yaml.safe_dump({"version": "v1", "hooks": hooks}))
    return path, log


def test_hooks_run_at_mig_parteds_points_with_its_variables(tmp_path: Path) -> None:
    hooks, log = _hooks(tmp_path)
    assert tessera("mig", "apply", "-c", "all-balanced", "-k", str(hooks))[0] == 0
    assert log.read_text().splitlines() == [
        f"{name} all-balanced false false mine {tmp_path}"
        for name in ("apply-start", "pre-apply-mode", "pre-apply-config", "apply-exit")]
    # Nothing to change: no pre-apply hooks, and the flags reach the hooks.
    log.unlink()
    code, _, _ = tessera("mig", "-d", "apply", "-c", "all-balanced", "-m",
                         env={"MIG_PARTED_HOOKS_FILE": str(hooks)})
    assert code == 0
    assert log.read_text().splitlines() == [
        f"{name} all-balanced true true mine {tmp_path}" for name in ("apply-start",
                                                                      "apply-exit")]


def test_a_failing_hook_stops_the_apply_and_apply_exit_still_runs(tmp_path: Path) -> None:
    hooks, log = _hooks(tmp_path, failing="pre-apply-config")
    code, _, err = tessera("mig", "apply", "-c", "all-balanced", "-k", str(hooks))
    assert code == 1
    assert "hook pre-apply-config" in err
    assert "exited 3" in err
    assert [line.split()[0] for line in log.read_text().splitlines()] == [
        "apply-start", "pre-apply-mode", "pre-apply-config", "apply-exit"]
    # The modes changed before the hook; no MIG device was made after it.
    assert tessera("mig", "assert", "-c", "all-balanced", "-m")[0] == 0
    gpus = json.loads(tessera("mig", "show", "-o", "json")[1])["gpus"]
    assert all(g["mig_devices"] == {} for g in gpus)


@pytest.mark.parametrize(("text", "words"), [
    ("version: v2\nhooks: {}\n", ["version"]),
    ("version: v1\nhooks: {pre-apply-modes: []}\n", ["pre-apply-modes", "apply-start"]),
    ("version: v1\nhooks: {apply-start: [{comand: /bin/true}]}\n", ["comand"]),
    ("version: v1\nhooks: {apply-start: [{command: /bin/true, args: [1]}]}\n", ["args"]),
])
def test_a_bad_hooks_file_is_refused_before_anything(tmp_path: Path, text: str,
                                                     words: list[str]) -> None:
    path = tmp_path / "hooks.yaml"
    path.write_text(text)
    code, _, err = tessera("mig", "apply", "-c", "all-balanced", "-k", str(path))
    assert code == 2
    assert str(path) in err
    for word in words:
        assert word in err, (word, err)
    assert tessera("mig", "assert", "-c", "all-disabled")[0] == 0


# -- one broken GPU -------------------------------------------------------------------------


@pytest.mark.parametrize("command", [
    ["show"], ["show", "-o", "json"], ["export"], ["profiles"], ["profiles", "-C"],
    ["layout"], ["generate"], ["assert", "-c", "all-balanced"],
])
def test_a_gpu_off_the_bus_is_named_and_the_others_still_answer(command: list[str]) -> None:
    assert tessera("mig", "apply", "-c", "all-balanced")[0] == 0
    assert tessera("sim", "xid", "3", "79")[0] == 0
    code, out, err = tessera("mig", *command)
    assert code == 1
    assert "GPU 3: left alone, it cannot be read" in err or "GPU 3: cannot be read" in out
    assert "fallen off the bus" in err + out
    if command[0] in ("show", "profiles", "layout", "export"):
        assert "2g.20gb" in out  # the healthy GPUs are all there
    if command == ["show", "-o", "json"]:
        gpus = json.loads(out)["gpus"]
        assert [g["index"] for g in gpus] == list(range(8))
        assert "fallen off the bus" in gpus[3]["error"]
    if command == ["export"]:
        (entry,) = yaml.safe_load(out)["mig-configs"]["current"]
        assert entry["devices"] == [0, 1, 2, 4, 5, 6, 7]


def test_apply_leaves_a_gpu_off_the_bus_alone_and_names_it() -> None:
    assert tessera("mig", "apply", "-c", "all-balanced")[0] == 0
    lost_before = _sim_gpu(3)
    assert tessera("sim", "xid", "3", "79")[0] == 0
    code, _, err = tessera("mig", "apply", "-c", "all-3g.40gb")
    assert code == 1
    assert "GPU 3: left alone" in err
    assert _sim_gpu(3) == lost_before
    gpus = json.loads(tessera("mig", "show", "-o", "json")[1])["gpus"]
    assert [g.get("mig_devices") for g in gpus if g["index"] != 3] == [{"3g.40gb": 2}] * 7


def test_layout_apply_leaves_a_gpu_off_the_bus_alone(tmp_path: Path) -> None:
    assert tessera("sim", "xid", "3", "79")[0] == 0
    layout = tmp_path / "layout.yaml"
    layout.write_text('version: v1\ngpus:\n  "0": [{profile: 7g.80gb, placement: 0}]\n'
                      '  "3": [{profile: 7g.80gb, placement: 0}]\n')
    code, out, err = tessera("mig", "layout", "--apply", str(layout))
    assert code == 1
    assert "GPU 3: left alone" in err
    assert "layout applied" in out
    assert json.loads(tessera("mig", "show", "-o", "json")[1])["gpus"][0]["mig_devices"] == {
        "7g.80gb": 1}
    assert _sim_gpu(3)[:2] == (False, False)


def test_a_failing_nvml_call_stops_only_its_gpu() -> None:
    # The 5th mutation is on GPU 2 (every GPU's mode changes first, two calls each).
    assert tessera("sim", "fail", "--after", "5")[0] == 0
    code, _, err = tessera("mig", "apply", "-c", "all-balanced")
    assert code == 1
    assert "step 5 of 80 failed (GPU 2: enable MIG mode)" in err
    assert "GPU 2 left part-way, every other GPU applied" in err
    gpus = json.loads(tessera("mig", "show", "-o", "json")[1])["gpus"]
    assert [i for i, g in enumerate(gpus) if g.get("mig_devices")] == [0, 1, 3, 4, 5, 6, 7]
    assert tessera("mig", "apply", "-c", "all-balanced")[0] == 0
    assert tessera("mig", "assert", "-c", "all-balanced")[0] == 0
