"""`tessera plugin`: run the kubelet device plugin on its own (the agent embeds the same one).

Takes NVIDIA's flags under NVIDIA's names (and their older aliases), so a DaemonSet written
for NVIDIA's plugin runs unchanged; their environment variables are read by the config
layer (`with_overrides`), which also ranks flag over variable over file as NVIDIA does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

import typer

from tessera.cdi import DEFAULT_CDI_DIR
from tessera.cli.bounds import Seconds, writable_dir
from tessera.cli.common import reported, settings
from tessera.errors import TesseraError
from tessera.hardware.backend import open_backend
from tessera.hardware.node import Node
from tessera.kubeletapi.constants import DEVICE_PLUGIN_PATH, KUBELET_SOCKET_NAME
from tessera.plugin.lock import AlreadyRunning
from tessera.plugin.manager import DevicePlugin, PluginSettings

log = logging.getLogger("tessera.plugin")


def plugin(
    ctx: typer.Context,
    socket_dir: Path = typer.Option(
        DEVICE_PLUGIN_PATH, "--socket-dir", envvar="TESSERA_SOCKET_DIR", parser=writable_dir,
        help="The kubelet's device-plugins directory; one socket per resource is served here.",
    ),
    kubelet_socket: str | None = typer.Option(
        None, "--kubelet-socket", envvar="KUBELET_SOCKET",
        help="The kubelet's registration socket (default: kubelet.sock in --socket-dir; "
             "empty: serve without registering).",
    ),
    config: Path | None = typer.Option(
        None, "--config", "--config-file", envvar="CONFIG_FILE",
        help="Device plugin config (NVIDIA's v1 format): a file, or a directory of named "
             "configs such as a mounted ConfigMap.",
    ),
    config_name: str | None = typer.Option(
        None, "--config-name", envvar="TESSERA_PLUGIN_CONFIG_NAME",
        help="Which named config to use (what the label nvidia.com/device-plugin.config says).",
    ),
    default_config: str | None = typer.Option(
        None, "--default-config", envvar="DEFAULT_CONFIG",
        help="The named config used when no name is given.",
    ),
    mig_strategy: str | None = typer.Option(
        None, "--mig-strategy", help="none, single or mixed (overrides MIG_STRATEGY and the "
                                     "config file)."),
    device_list_strategy: str | None = typer.Option(
        None, "--device-list-strategy",
        help="envvar, volume-mounts, cdi-annotations, cdi-cri (comma-separated)."),
    device_id_strategy: str | None = typer.Option(None, "--device-id-strategy",
                                                  help="uuid or index."),
    fail_on_init_error: bool | None = typer.Option(
        None, "--fail-on-init-error/--no-fail-on-init-error",
        help="Exit when devices or config cannot be read at start (default), or wait."),
    pass_device_specs: bool | None = typer.Option(
        None, "--pass-device-specs/--no-pass-device-specs",
        help="Give containers the GPUs' device nodes (PASS_DEVICE_SPECS)."),
    nvidia_driver_root: str | None = typer.Option(
        None, "--driver-root", "--nvidia-driver-root",
        help="Root of the driver installation on the host (NVIDIA_DRIVER_ROOT)."),
    nvidia_dev_root: str | None = typer.Option(
        None, "--dev-root", "--nvidia-dev-root",
        help="Host root of /dev/nvidia* (NVIDIA_DEV_ROOT; default: the driver root)."),
    mps_root: str | None = typer.Option(
        None, "--mps-root", help="Where MPS pipes and logs live on the host (MPS_ROOT); "
                                 "required to share with MPS."),
    gdrcopy_enabled: bool | None = typer.Option(
        None, "--gdrcopy-enabled/--no-gdrcopy-enabled", help="NVIDIA_GDRCOPY=enabled "
                                                             "(GDRCOPY_ENABLED)."),
    gds_enabled: bool | None = typer.Option(
        None, "--gds-enabled/--no-gds-enabled", help="NVIDIA_GDS=enabled (GDS_ENABLED)."),
    mofed_enabled: bool | None = typer.Option(
        None, "--mofed-enabled/--no-mofed-enabled", help="NVIDIA_MOFED=enabled "
                                                         "(MOFED_ENABLED)."),
    cdi_annotation_prefix: str | None = typer.Option(
        None, "--cdi-annotation-prefix", help="CDI annotation prefix (CDI_ANNOTATION_PREFIX)."),
    nvidia_ctk_path: str | None = typer.Option(
        None, "--nvidia-cdi-hook-path", "--nvidia-ctk-path",
        help="nvidia-cdi-hook / nvidia-ctk on the host (NVIDIA_CDI_HOOK_PATH)."),
    container_driver_root: str | None = typer.Option(
        None, "--driver-root-ctr-path", "--container-driver-root",
        help="Where the host's driver root is mounted in this container "
             "(DRIVER_ROOT_CTR_PATH)."),
    shared_devices_allocation_policy: str | None = typer.Option(
        None, "--shared-devices-allocation-policy",
        help="distributed or packed replicas (SHARED_DEVICES_ALLOCATION_POLICY)."),
    device_discovery_strategy: str | None = typer.Option(
        None, "--device-discovery-strategy",
        help="auto, nvml or tegra (DEVICE_DISCOVERY_STRATEGY); Tessera reads NVML always."),
    imex_channel_ids: str | None = typer.Option(
        None, "--imex-channel-ids", help="IMEX channels to inject: empty or 0 "
                                         "(IMEX_CHANNEL_IDS)."),
    imex_required: bool | None = typer.Option(
        None, "--imex-required/--no-imex-required",
        help="Fail allocations when the IMEX channels are missing (IMEX_REQUIRED)."),
    refresh: float = typer.Option(2.0, "--refresh", metavar="SECONDS", parser=Seconds(),
                                  help="How often to re-read the MIG layout."),
    cdi_dir: Path = typer.Option(
        DEFAULT_CDI_DIR, "--cdi-dir", envvar="TESSERA_CDI_DIR",
        help="Where the CDI spec for the cdi-annotations / cdi-cri strategies is written "
             "(k8s.device-plugin.nvidia.com-gpu.json)."),
    cdi_spec: bool = typer.Option(
        True, "--cdi-spec/--no-cdi-spec",
        help="Write that spec; --no-cdi-spec leaves it to another writer of kind "
             "k8s.device-plugin.nvidia.com/gpu."),
) -> None:
    """Serve every GPU, MIG device and shared replica to the kubelet until stopped.

    SIGHUP re-reads the config; SIGTERM or SIGINT stops cleanly.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    common = settings(ctx)
    overrides = {
        key: value for key, value in {
            "mig_strategy": mig_strategy,
            "device_list_strategy": device_list_strategy,
            "device_id_strategy": device_id_strategy,
            "fail_on_init_error": fail_on_init_error,
            "pass_device_specs": pass_device_specs,
            "nvidia_driver_root": nvidia_driver_root,
            "nvidia_dev_root": nvidia_dev_root,
            "mps_root": mps_root,
            "gdrcopy_enabled": gdrcopy_enabled,
            "gds_enabled": gds_enabled,
            "mofed_enabled": mofed_enabled,
            "cdi_annotation_prefix": cdi_annotation_prefix,
            "nvidia_ctk_path": nvidia_ctk_path,
            "container_driver_root": container_driver_root,
            "shared_devices_allocation_policy": shared_devices_allocation_policy,
            "device_discovery_strategy": device_discovery_strategy,
            "imex_channel_ids": imex_channel_ids,
            "imex_required": imex_required,
        }.items() if value is not None
    }
    wiring = PluginSettings(
        socket_dir=socket_dir,
        kubelet_socket=(Path(kubelet_socket) if kubelet_socket
                        else socket_dir / KUBELET_SOCKET_NAME),
        register=kubelet_socket != "",
        config_path=config,
        config_name=config_name,
        default_config=default_config,
        overrides=overrides,
        env=dict(os.environ),
        refresh_seconds=refresh,
        cdi_dir=cdi_dir if cdi_spec else None,
    )

    def open_node() -> Node:
        return Node(open_backend(common.simulate, common.sim_state))

    with reported():
        asyncio.run(_serve(DevicePlugin(open_node, wiring)))


async def _serve(plugin: DevicePlugin) -> None:
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    loop.add_signal_handler(signal.SIGHUP,
                            lambda: loop.create_task(plugin.select_config(plugin.status()
                                                                          .config_name)))
    try:
        await plugin.start()
    except TesseraError as e:
        if plugin.config.flags.fail_on_init_error or isinstance(e, AlreadyRunning):
            await plugin.stop()  # another plugin serves here: never wait beside it
            raise
        # NVIDIA's legacy mode: stay up (so a DaemonSet on a non-GPU node is not crash-looping)
        log.error("cannot start, waiting until stopped (failOnInitError is false): %s", e)
        await stopped.wait()
        await plugin.stop()
        return
    log.info("serving %s in %s", ", ".join(plugin.servers) or "nothing",
             plugin.settings.socket_dir)
    await stopped.wait()
    await plugin.stop()
