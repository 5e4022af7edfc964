"""How soon `tessera agent` exits after SIGTERM, in the states where it used to hang.

Kubernetes sends SIGTERM and waits `terminationGracePeriodSeconds` (30 s by default) before
SIGKILL; the agent promises to stop within a second in every state. Measured side by side in
one run, on a simulated DGX A100, standalone:

- floor: a bare Python process running an asyncio loop with a SIGTERM handler (what any
  asyncio agent costs to stop: interpreter shutdown);
- serving: the agent idle, devices advertised;
- mid-change: right after the node's MIG config label changed (planning or applying);
- mid-parse: while it parses a plugin config of about a megabyte (seconds of YAML parsing,
  which used to run on the event loop and hold SIGTERM until it finished).

    python bench/agent_stop.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESSERA = [sys.executable, "-c", "from tessera.cli.main import main; main()"]
FLOOR = ("import asyncio, signal\n"
         "async def main():\n"
         "    stop = asyncio.Event()\n"
         "    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)\n"
         "    print('ready', flush=True)\n"
         "    await stop.wait()\n"
         "asyncio.run(main())\n")


def _huge_config(path: Path) -> None:
    entries = "".join(f"    - name: nvidia.com/gpu\n      rename: r{i}\n      replicas: 2\n"
                      for i in range(20_000))
    path.write_text(f"version: v1\nsharing:\n  timeSlicing:\n    resources:\n{entries}")


def _stop(process: subprocess.Popen[str]) -> float:
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    return time.monotonic() - sent


def floor() -> float:
    process = subprocess.Popen([sys.executable, "-c", FLOOR], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    process.stdout.readline()
    return _stop(process)


def agent(state: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        configs = root / "configs"
        configs.mkdir()
        (configs / "default.yaml").write_text("version: v1\n")
        env = {**os.environ, "XDG_STATE_HOME": str(root / "xdg"),
               "XDG_RUNTIME_DIR": str(root / "run"), "TESSERA_SIM_STATE": str(root / "s.json")}
        process = subprocess.Popen(
            [*TESSERA, "--simulate", "dgx-a100", "agent", "--no-kube", "--node-name", "n1",
             "--no-metrics", "--plugin-config", str(configs), "--label",
             "nvidia.com/mig.config=all-1g.10gb"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        status = root / "xdg" / "tessera" / "status-n1-sim-dgx-a100.json"
        while not status.exists():
            if process.poll() is not None:
                raise SystemExit(f"the agent exited with {process.returncode} at start")
            time.sleep(0.05)
        if state == "mid-change":
            node = root / "xdg" / "tessera" / "node-n1-sim-dgx-a100.json"
            data = json.loads(node.read_text())
            data["labels"]["nvidia.com/mig.config"] = "all-balanced"
            data["version"] += 1
            node.write_text(json.dumps(data))
            time.sleep(0.3)
        elif state == "mid-parse":
            _huge_config(configs / "huge.yaml")
            time.sleep(3.0)  # the config poll (every 2 s) has started parsing it
        return _stop(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = [("floor: asyncio process", floor)] + [
        (f"agent {state}", lambda state=state: agent(state))
        for state in ("serving", "mid-change", "mid-parse")]
    results = {name: [run() for _ in range(args.repeats)] for name, run in rows}
    base = statistics.median(results["floor: asyncio process"])
    print(f"{'state':<24} {'median s':>9} {'max s':>7} {'x floor':>8}")
    for name, times in results.items():
        median = statistics.median(times)
        print(f"{name:<24} {median:>9.3f} {max(times):>7.3f} {median / base:>8.1f}")


if __name__ == "__main__":
    main()
