"""What the `tessera` command costs before it does anything: CPU time of a process.

Four commands, each run as a fresh process, interleaved round by round so that load on a
shared machine hits all of them alike:

- `python -c pass`: the floor, the interpreter alone;
- `python -c "import typer, rich.console"`: the CLI's two libraries and nothing of Tessera;
- `tessera --version`;
- `tessera --simulate dgx-a100 mig show`: a real command, on a simulated 8-GPU node.

CPU time (user + system) is read from the kernel for each child (`os.wait4`), so it is the
cost of that process alone; the median over the rounds is reported, with its ratio to the
floor and to typer + rich. Run: `python bench/cli_startup.py [--rounds N]`. Exits 1 if
`tessera --version` costs 0.25 s of CPU or more (the target of the README).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

TESSERA = [sys.executable, "-c", "from tessera.cli.main import main; main()"]
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "import typer, rich.console": [sys.executable, "-c", "import typer, rich.console"],
    "tessera --version": [*TESSERA, "--version"],
    "tessera --simulate dgx-a100 mig show": [*TESSERA, "--simulate", "dgx-a100", "mig", "show"],
}
VERSION_TARGET_S = 0.25


def cpu_seconds(command: list[str], env: dict[str, str]) -> float:
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    error = process.stderr.read() if process.stderr else b""
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {process.returncode}: {error.decode()}")
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    rounds = parser.parse_args().rounds
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TESSERA_SIM_STATE": str(Path(tmp) / "sim.json")}
        samples: dict[str, list[float]] = {name: [] for name in COMMANDS}
        for command in COMMANDS.values():  # warm the page cache and .pyc files
            cpu_seconds(command, env)
        for _ in range(rounds):
            for name, command in COMMANDS.items():
                samples[name].append(cpu_seconds(command, env))
    medians = {name: statistics.median(times) for name, times in samples.items()}
    floor, libraries = medians["python -c pass"], medians["import typer, rich.console"]
    print(f"CPU time per process, median of {rounds} rounds\n")
    print("| command | CPU ms | × python -c pass | × typer + rich |")
    print("|---|---|---|---|")
    for name, median in medians.items():
        print(f"| `{name}` | {median * 1000:.0f} | {median / floor:.1f} | "
              f"{median / libraries:.2f} |")
    version = medians["tessera --version"]
    print(f"\n`tessera --version`: {version * 1000:.0f} ms of CPU "
          f"(target < {VERSION_TARGET_S * 1000:.0f} ms)")
    return 0 if version < VERSION_TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
