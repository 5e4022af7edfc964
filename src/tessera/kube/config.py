"""Where a command's API credentials come from, and the lightkube client built from them.

The order, kubectl's with the in-cluster service account before the home directory's file:

1. `--kubeconfig FILE`;
2. `$KUBECONFIG`: a list of files separated by `:` (`;` on Windows), merged as kubectl merges
   them: files that do not exist are skipped, the first file to set `current-context` wins,
   and a cluster, context or user named in two files is the first file's; relative paths in
   a file are relative to that file;
3. the in-cluster service account of a pod (`$KUBERNETES_SERVICE_HOST` and the mounted
   token): the agent in its DaemonSet acts as its ServiceAccount, whatever files the image has;
4. `~/.kube/config`.

`find_credentials` says which applies without reading any of them; `load_config` loads it.

The client gets one addition lightkube's `watch()` has no parameter for: watch requests ask
for bookmarks and get a read timeout derived from the server timeout they asked for (see
`WatchTuning`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx2
import lightkube
from lightkube.config.client_adapter import verify_cluster
from lightkube.config.kubeconfig import KubeConfig, SingleConfig

from tessera.errors import ConfigError
from tessera.textinput import default_error, read_yaml

log = logging.getLogger(__name__)

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
HOME_KUBECONFIG = Path(".kube") / "config"  # under the home directory, as kubectl's

#: The name our changes are recorded under in managedFields and as the Events' reporter.
FIELD_MANAGER = "tessera"

#: How much longer than its asked-for timeoutSeconds a watch may stay silent before the
#: connection is taken for dead (a half-open TCP connection after an API server failover).
WATCH_GRACE = 30.0

# Fields of a kubeconfig that name files; kubectl resolves them against the file they are in.
_FILE_FIELDS = {"cluster": ("certificate-authority",),
                "user": ("client-certificate", "client-key", "tokenFile")}

Origin = Literal["--kubeconfig", "$KUBECONFIG", "in-cluster", "~/.kube/config"]


@dataclass(frozen=True)
class Credentials:
    """Where the credentials come from: the files to merge (none for in-cluster)."""

    origin: Origin
    files: tuple[Path, ...] = ()

    def __str__(self) -> str:
        if self.origin == "in-cluster":
            return "the in-cluster service account"
        return f"{self.origin} ({os.pathsep.join(map(str, self.files))})"


def find_credentials(kubeconfig: Path | None = None, *,
                     service_account: Path = SERVICE_ACCOUNT,
                     environ: Mapping[str, str] | None = None,
                     home: Path | None = None) -> Credentials | None:
    """Which credentials a command would use (the module docstring's order), or None when
    there are none. Reads no file; raises `ConfigError` for a `$KUBECONFIG` that lists only
    files that do not exist (kubectl would quietly talk to localhost:8080)."""
    env = os.environ if environ is None else environ
    if kubeconfig is not None:
        return Credentials("--kubeconfig", (kubeconfig,))
    listed = [Path(p) for p in env.get("KUBECONFIG", "").split(os.pathsep) if p]
    if listed:
        found = tuple(p for p in listed if p.is_file())
        if not found:
            raise ConfigError(f"$KUBECONFIG names no file that exists "
                              f"({os.pathsep.join(map(str, listed))}); fix or unset it")
        return Credentials("$KUBECONFIG", found)
    if env.get("KUBERNETES_SERVICE_HOST") and (service_account / "token").is_file():
        return Credentials("in-cluster")
    home_file = (home if home is not None else Path(env.get("HOME") or Path.home())) / \
        HOME_KUBECONFIG
    if home_file.is_file():
        return Credentials("~/.kube/config", (home_file,))
    return None


AGENT_REMEDY = ("pass --kubeconfig, or run the agent from the Helm chart, or run it standalone "
                "without a cluster")


def load_config(kubeconfig: Path | None = None, *,
                service_account: Path = SERVICE_ACCOUNT,
                environ: Mapping[str, str] | None = None,
                home: Path | None = None, remedy: str = AGENT_REMEDY) -> SingleConfig:
    """The credentials to use (see the module docstring); `ConfigError` naming the file and
    the problem when they cannot be used, or what was looked for when there are none
    (`remedy` says what to do then, for the command at hand)."""
    found = find_credentials(kubeconfig, service_account=service_account, environ=environ,
                             home=home)
    if found is None:
        raise ConfigError(
            "no Kubernetes credentials: no --kubeconfig, $KUBECONFIG is not set, this is not "
            f"a pod with a service account ({service_account} and $KUBERNETES_SERVICE_HOST), "
            f"and there is no ~/.kube/config; {remedy}")
    log.info("Kubernetes credentials: %s", found)
    if found.origin == "in-cluster":
        return _in_cluster(service_account)
    return _from_files(found.files)


def _in_cluster(service_account: Path) -> SingleConfig:
    try:
        config = KubeConfig.from_service_account(service_account).get()
    except (lightkube.ConfigError, KeyError, OSError) as e:
        raise ConfigError(f"the in-cluster service account {service_account} cannot be "
                          f"used: {e}") from e
    assert config is not None  # from_one() always sets a current context
    return config


def _from_files(paths: Sequence[Path]) -> SingleConfig:
    where = os.pathsep.join(map(str, paths))
    merged = merge_kubeconfigs([(p, _read(p)) for p in paths])
    try:
        config = KubeConfig.from_dict(merged, fname=paths[0]).get()
    except lightkube.ConfigError as e:
        raise ConfigError(f"kubeconfig {where}: {e}") from e
    except Exception as e:
        # A kubeconfig is a user's file: missing keys and wrong types all mean the same
        # thing to them, and must not surface as a traceback.
        raise ConfigError(f"kubeconfig {where}: not a usable kubeconfig ({type(e).__name__}: "
                          f"{e})") from e
    if config is None:
        raise ConfigError(f"kubeconfig {where}: no current-context set")
    if config.user is None:
        raise ConfigError(f"kubeconfig {where}: context {config.context_name!r} names no "
                          "user; the command needs credentials")
    return config


def _read(path: Path) -> dict[str, Any]:
    # The strict reader: a binary, huge or alias-bomb file is one line, as any other input.
    document = read_yaml(path, error=default_error(f"kubeconfig {path}"), what="kubeconfig")
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"kubeconfig {path}: not a kubeconfig (a {type(document).__name__}, "
                          "not a mapping)")
    return document


def merge_kubeconfigs(documents: Sequence[tuple[Path, Mapping[str, Any]]]) -> dict[str, Any]:
    """kubectl's merge of kubeconfig files, in order: the first `current-context` set wins,
    and so does the first cluster, context or user of a name; the files' relative paths are
    made absolute against each file's directory first. Pure."""
    merged: dict[str, Any] = {"clusters": [], "contexts": [], "users": []}
    current = None
    for path, document in documents:
        current = current or document.get("current-context") or None
        for section, key in (("clusters", "cluster"), ("contexts", "context"),
                             ("users", "user")):
            entries = document.get(section) or []
            if not isinstance(entries, list):
                raise ConfigError(f"kubeconfig {path}: `{section}` is not a list")
            named = {e.get("name") for e in merged[section]}
            for entry in entries:
                if isinstance(entry, dict) and entry.get("name") not in named:
                    merged[section].append(_absolute(entry, key, path.parent))
                    named.add(entry.get("name"))
    merged["current-context"] = current
    return merged


def _absolute(entry: Mapping[str, Any], key: str, directory: Path) -> dict[str, Any]:
    body = entry.get(key)
    if not isinstance(body, dict):
        return dict(entry)
    fixed = dict(body)
    for name in _FILE_FIELDS.get(key, ()):
        value = fixed.get(name)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            fixed[name] = str(directory / value)
    return {**entry, key: fixed}


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
