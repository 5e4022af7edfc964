"""Kubernetes credentials found as kubectl finds them: `--kubeconfig`, `$KUBECONFIG` (a merged
list), the in-cluster service account, `~/.kube/config`. Against the fake API server over
HTTP, through lightkube; the commands in their own processes with HOME in a temp dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tessera.agent.keys import GPU_DISABLE, MIG_CONFIG, MIG_CONFIG_STATE
from tessera.errors import ConfigError
from tessera.kube import NodeClient, RetryPolicy
from tessera.kube.config import find_credentials, load_config, make_client, merge_kubeconfigs
from tessera.kube.testing import FakeApiServer

TESSERA = [sys.executable, "-c", "from tessera.cli.main import main; main()"]
NODE = "gpu-node-1"
FAST = RetryPolicy(attempts=2, first_delay=0.05, max_delay=0.1)


@pytest.fixture
def server() -> Any:
    with FakeApiServer() as api:
        api.add_node(NODE, labels={"kubernetes.io/hostname": NODE})
        yield api


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def env_for(home: Path, tmp_path: Path, **extra: str) -> dict[str, str]:
    """A user's shell: HOME in a temp dir, no cluster or simulation set."""
    clean = {k: v for k, v in os.environ.items()
             if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "TESSERA_SIMULATE",
                          "NODE_NAME", "TESSERA_STATUS_FILE")}
    return {**clean, "HOME": str(home), "XDG_STATE_HOME": str(tmp_path / "state"),
            "XDG_RUNTIME_DIR": str(tmp_path / "run"),
            "TESSERA_SIM_STATE": str(tmp_path / "sim.json"), **extra}


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TESSERA, *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


# -- the commands, as a person runs them ---------------------------------------------------


def test_home_kubeconfig_serves_status_and_gpu_disable(
        server: FakeApiServer, home: Path, tmp_path: Path) -> None:
    server.kubeconfig(home / ".kube" / "config")
    env = env_for(home, tmp_path)
    disabled = run(env, "gpu", "disable", "3", "--reason", "ECC errors", "--node", NODE)
    assert disabled.returncode == 0, disabled.stderr
    assert json.loads(server.node(NODE)["metadata"]["annotations"][GPU_DISABLE])["3"] == (
        "ECC errors")
    # No agent status file on this machine: status reads the Node, as kubectl would.
    server.add_node("gpu-node-2", labels={MIG_CONFIG: "all-balanced",
                                          MIG_CONFIG_STATE: "success"})
    shown = run(env, "status", "--node", "gpu-node-2", "-o", "json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["mig"] == {"config": "all-balanced", "state": "success",
                                               "reason": None}


def test_kubeconfig_list_uses_the_first_file_that_exists(
        server: FakeApiServer, home: Path, tmp_path: Path) -> None:
    real = server.kubeconfig(tmp_path / "cluster.yaml")
    missing = tmp_path / "absent.yaml"
    env = env_for(home, tmp_path, KUBECONFIG=os.pathsep.join([str(missing), str(real)]))
    # A simulated agent joins the cluster $KUBECONFIG names and labels the Node there.
    done = run(env, "--simulate", "a30x4", "agent", "--node-name", NODE, "--once",
               "--no-metrics")
    assert done.returncode == 0, done.stderr
    labels = server.node(NODE)["metadata"]["labels"]
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-A30"
    assert "Kubernetes credentials: $KUBECONFIG" in done.stderr


def test_home_kubeconfig_does_not_pull_a_simulated_agent_into_a_cluster(
        server: FakeApiServer, home: Path, tmp_path: Path) -> None:
    server.kubeconfig(home / ".kube" / "config")
    done = run(env_for(home, tmp_path), "--simulate", "a30x4", "agent", "--node-name", NODE,
               "--once")
    assert done.returncode == 0, done.stderr
    assert "nvidia.com/gpu.product" not in server.node(NODE)["metadata"]["labels"]
    assert not [r for r in server.requests if r.method == "PATCH"]


def test_kubeconfig_naming_only_missing_files_is_one_line(home: Path, tmp_path: Path) -> None:
    env = env_for(home, tmp_path, KUBECONFIG=str(tmp_path / "nowhere.yaml"))
    done = run(env, "gpu", "enable", "3", "--node", NODE)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: $KUBECONFIG names no file that exists ({tmp_path / 'nowhere.yaml'}); fix or "
        "unset it"]


def test_no_credentials_anywhere_says_where_it_looked(home: Path, tmp_path: Path) -> None:
    done = run(env_for(home, tmp_path), "gpu", "enable", "3", "--node", NODE)
    assert done.returncode == 2
    assert "~/.kube/config" in done.stderr
    assert "Traceback" not in done.stderr


# -- the order and kubectl's merge ---------------------------------------------------------


def _service_account(tmp_path: Path) -> Path:
    account = tmp_path / "serviceaccount"
    account.mkdir()
    for name, text in (("token", "t"), ("namespace", "tessera"), ("ca.crt", "")):
        (account / name).write_text(text)
    return account


def test_order_flag_then_env_then_in_cluster_then_home(tmp_path: Path, home: Path) -> None:
    account = _service_account(tmp_path)
    (home / ".kube").mkdir()
    home_file = home / ".kube" / "config"
    home_file.write_text("{}")
    listed = tmp_path / "listed.yaml"
    listed.write_text("{}")
    flag = tmp_path / "flag.yaml"
    pod = {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}

    def origin(kubeconfig: Path | None, **env: str) -> str | None:
        found = find_credentials(kubeconfig, service_account=account, environ=env, home=home)
        return found.origin if found else None

    assert origin(flag, KUBECONFIG=str(listed), **pod) == "--kubeconfig"
    assert origin(None, KUBECONFIG=str(listed), **pod) == "$KUBECONFIG"
    assert origin(None, **pod) == "in-cluster"  # a pod acts as its ServiceAccount
    assert origin(None) == "~/.kube/config"
    home_file.unlink()
    assert origin(None) is None


async def test_kubeconfig_list_is_merged_as_kubectl_merges_it(
        server: FakeApiServer, tmp_path: Path) -> None:
    whole = json.loads(server.kubeconfig(tmp_path / "whole.yaml").read_text())
    # The context and user in one file, the cluster in another, and a third file whose
    # same-named cluster points elsewhere: the first file to name a cluster wins.
    first = tmp_path / "first.yaml"
    first.write_text(json.dumps({"current-context": "fake", "contexts": whole["contexts"],
                                 "users": whole["users"]}))
    second = tmp_path / "second.yaml"
    second.write_text(json.dumps({"current-context": "other", "clusters": whole["clusters"]}))
    third = tmp_path / "third.yaml"
    third.write_text(json.dumps({"clusters": [
        {"name": "fake", "cluster": {"server": "http://127.0.0.1:9"}}]}))
    env = {"KUBECONFIG": os.pathsep.join(map(str, (first, second, third)))}
    config = load_config(environ=env, home=tmp_path)
    assert config.context_name == "fake"
    assert config.cluster.server == server.url
    # ... and the merged credentials work: the token from the first file, the server from
    # the second.
    client = NodeClient(make_client(config), NODE, retry=FAST)
    try:
        assert (await client.get()).name == NODE
    finally:
        await client.close()


def test_relative_paths_are_relative_to_their_file(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "config", tmp_path / "b" / "config"
    merged = merge_kubeconfigs([
        (a, {"clusters": [{"name": "one", "cluster": {"server": "https://x",
                                                      "certificate-authority": "ca.crt"}}],
             "users": [{"name": "me", "user": {"client-certificate": "me.crt",
                                               "client-key": "/abs/me.key"}}]}),
        (b, {"users": [{"name": "you", "user": {"tokenFile": "token"}}]}),
    ])
    assert merged["clusters"][0]["cluster"]["certificate-authority"] == str(
        tmp_path / "a" / "ca.crt")
    assert merged["users"][0]["user"] == {"client-certificate": str(tmp_path / "a" / "me.crt"),
                                          "client-key": "/abs/me.key"}
    assert merged["users"][1]["user"]["tokenFile"] == str(tmp_path / "b" / "token")
    assert merged["current-context"] is None


@pytest.mark.parametrize("content", ["[1, 2]", "clusters: 3", "{not yaml: ["])
def test_a_broken_file_in_the_list_is_named(tmp_path: Path, content: str) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("{}")
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    with pytest.raises(ConfigError, match=f"kubeconfig {bad}"):
        load_config(environ={"KUBECONFIG": f"{good}{os.pathsep}{bad}"}, home=tmp_path)


@pytest.mark.parametrize(("content", "reason"), [
    (b"\x7fELF\x02\x01\x01\x00\xd0\xff", "not UTF-8 text"),  # a binary passed by mistake
    (b"a: &a [" + b"*a, " * 10 + b"]\nb: &b [" + b"*a, " * 10 + b"]\n"
     + b"".join(b"c%d: &c%d [" % (i, i) + (b"*%s, " % (b"b" if i == 0 else b"c%d" % (i - 1))) * 10
                + b"]\n" for i in range(8)), "alias"),
])
def test_a_binary_or_bomb_kubeconfig_is_one_line(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    bad = tmp_path / "config"
    bad.write_bytes(content)
    with pytest.raises(ConfigError, match=f"kubeconfig {bad}: .*{reason}"):
        load_config(bad, home=tmp_path)
