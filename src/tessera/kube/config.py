"""Where the agent's API credentials come from, and the lightkube client built from them.

A kubeconfig file when one is named (the `--kubeconfig` flag, else `$KUBECONFIG`), otherwise
the in-cluster service account the DaemonSet's pod mounts. There is deliberately no fall
back to `~/.kube/config`: an agent started by hand on a node should not quietly act with an
administrator's credentials.

The client gets one addition lightkube's `watch()` has no parameter for: watch requests ask
for bookmarks and get a read timeout derived from the server timeout they asked for (see
`WatchTuning`).
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx2
import lightkube
from lightkube.config.client_adapter import verify_cluster
from lightkube.config.kubeconfig import KubeConfig, SingleConfig

from tessera.errors import ConfigError

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")

#: The name our changes are recorded under in managedFields and as the Events' reporter.
FIELD_MANAGER = "tessera"

#: How much longer than its asked-for timeoutSeconds a watch may stay silent before the
#: connection is taken for dead (a half-open TCP connection after an API server failover).
WATCH_GRACE = 30.0


AGENT_REMEDY = ("pass --kubeconfig, or run the agent from the Helm chart, or run it standalone "
                "without a cluster")


def load_config(kubeconfig: Path | None = None, *,
                service_account: Path = SERVICE_ACCOUNT,
                remedy: str = AGENT_REMEDY) -> SingleConfig:
    """The credentials to use: the kubeconfig named, else `$KUBECONFIG`, else in-cluster."""
    path = kubeconfig or _kubeconfig_from_env()
    if path is not None:
        return _from_file(path)
    try:
        config = KubeConfig.from_service_account(service_account).get()
    except (lightkube.ConfigError, KeyError, OSError) as e:
        raise ConfigError(
            "no Kubernetes credentials: no kubeconfig given, $KUBECONFIG is not set, and "
            f"this is not a pod with a service account ({service_account} and "
            f"$KUBERNETES_SERVICE_HOST; missing: {e}); {remedy}") from e
    assert config is not None  # from_one() always sets a current context
    return config


def _kubeconfig_from_env() -> Path | None:
    value = os.environ.get("KUBECONFIG", "")
    # kubectl merges a list of files; the first that exists is enough to find a cluster.
    paths = [Path(p) for p in value.split(os.pathsep) if p]
    return next((p for p in paths if p.is_file()), paths[0] if paths else None)


def _from_file(path: Path) -> SingleConfig:
    try:
        config = KubeConfig.from_file(path).get()
    except lightkube.ConfigError as e:
        raise ConfigError(f"kubeconfig {path}: {e}") from e
    except Exception as e:
        # A kubeconfig is a user's file: YAML errors, missing keys and wrong types all
        # mean the same thing to them, and must not surface as a traceback.
        raise ConfigError(f"kubeconfig {path}: not a usable kubeconfig ({type(e).__name__}: "
                          f"{e})") from e
    if config is None:
        raise ConfigError(f"kubeconfig {path}: no current-context set")
    if config.user is None:
        raise ConfigError(f"kubeconfig {path}: context {config.context_name!r} names no user; "
                          "the agent needs credentials to patch its Node")
    return config


def make_client(config: SingleConfig, *, timeout: float = 10.0) -> lightkube.AsyncClient:
    """A lightkube client for `config`, with watch requests tuned by `WatchTuning`."""
    if config.user is None:
        raise ConfigError(f"context {config.context_name!r} names no user")
    # httpx2 ignores the client's TLS settings once a transport is given, so the transport
    # gets the same SSL context lightkube would have built (CA, client certificates).
    tls = verify_cluster(config.cluster, config.user, config.abs_file)
    return lightkube.AsyncClient(config, timeout=httpx2.Timeout(timeout),
                                 field_manager=FIELD_MANAGER, transport=WatchTuning(verify=tls))


class WatchTuning(httpx2.AsyncHTTPTransport):
    """What lightkube's `watch()` cannot ask for, added to every watch request on the wire.

    - `allowWatchBookmarks=true`: the watch is filtered to one Node, so the resourceVersion
      it resumes from would otherwise age while the rest of the cluster changes, and a
      reconnect after a quiet spell would cost a 410 and a re-list.
    - A read timeout of the requested `timeoutSeconds` plus `WATCH_GRACE`: lightkube reads
      watches without one, so a connection the server silently lost would hang forever.
    """

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        params = request.url.params
        if params.get("watch") == "true":
            if "allowWatchBookmarks" not in params:
                request.url = request.url.copy_add_param("allowWatchBookmarks", "true")
            asked = params.get("timeoutSeconds")
            if asked is not None and asked.isdigit():
                timeouts = dict(request.extensions.get("timeout") or {})
                timeouts["read"] = int(asked) + WATCH_GRACE
                request.extensions = {**request.extensions, "timeout": timeouts}
        return await super().handle_async_request(request)
