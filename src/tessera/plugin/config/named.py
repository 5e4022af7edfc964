"""Named configs: the ConfigMap behind the `nvidia.com/device-plugin.config` node label.

`load_set` reads every config of a directory (a ConfigMap mounted as files) or one file into
a `ConfigSet`, which picks the config a node's label names, or the default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tessera.errors import PluginConfigError
from tessera.plugin.config.parse import load_file
from tessera.plugin.config.values import PluginConfig

_EXTENSIONS = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class ConfigSet:
    """The named configs a node can choose from with the `nvidia.com/device-plugin.config`
    label: the keys of a ConfigMap mounted as a directory, or one file."""

    source: str
    configs: Mapping[str, PluginConfig]
    default: str | None = None

    def select(self, name: str | None) -> tuple[str, PluginConfig]:
        """Config `name` (exact, or without .yaml/.yml/.json); None selects the default."""
        if name is None:
            if self.default is None:
                raise PluginConfigError(
                    "no config selected and no default: label the node "
                    "nvidia.com/device-plugin.config=<name>, set a default, or add a config "
                    f"named 'default'; available: {self._names()}",
                    source=self.source,
                )
            return self.default, self.configs[self.default]
        key = _match(self.configs, name, self.source)
        if key is None:
            default = f" (default: {self.default})" if self.default else ""
            raise PluginConfigError(
                f"no config named {name!r}; available: {self._names()}{default}. Label the node "
                "with one of them or add it to the ConfigMap",
                source=self.source,
            )
        return key, self.configs[key]

    def _names(self) -> str:
        return ", ".join(sorted(self.configs)) or "none"


def load_set(path: Path, *, default: str | None = None) -> ConfigSet:
    """Read every named config under `path`, a directory (one file each) or a single file.

    Fails on the first bad file, naming it, so that the caller can keep its last good set.
    """
    path = Path(path)
    if path.is_dir():
        configs = {f.name: load_file(f, name=f.name) for f in _config_files(path)}
    else:
        configs = {path.stem: load_file(path, name=path.stem)}
    return ConfigSet(str(path), configs, _default_name(configs, default, str(path)))


def _config_files(directory: Path) -> list[Path]:
    """Regular files, skipping hidden entries such as a ConfigMap volume's `..data`."""
    try:
        entries = sorted(directory.iterdir())
    except OSError as e:
        raise PluginConfigError(
            f"cannot list the directory: {e.strerror or e}", source=str(directory)
        ) from e
    return [e for e in entries if not e.name.startswith(".") and e.is_file()]


def _default_name(
    configs: Mapping[str, PluginConfig], default: str | None, source: str
) -> str | None:
    if default is not None:
        key = _match(configs, default, source)
        if key is None:
            raise PluginConfigError(
                f"the default config {default!r} does not exist; available: "
                f"{', '.join(sorted(configs)) or 'none'}",
                source=source,
            )
        return key
    key = _match(configs, "default", source)
    if key is None and len(configs) == 1:
        key = next(iter(configs))
    return key


def _match(configs: Mapping[str, PluginConfig], name: str, source: str) -> str | None:
    """The key `name` selects: itself, else the one key that is `name` plus an extension."""
    if name in configs:
        return name
    stem = _strip_extension(name)
    keys = [k for k in configs if _strip_extension(k) == stem]
    if len(keys) > 1:
        raise PluginConfigError(
            f"config name {name!r} is ambiguous: it matches {', '.join(sorted(keys))}; "
            "use the full name",
            source=source,
        )
    return keys[0] if keys else None


def _strip_extension(name: str) -> str:
    return next((name[: -len(e)] for e in _EXTENSIONS if name.endswith(e) and name != e), name)
