"""mig-parted's hooks file (`-k/--hooks-file`), read unchanged, and the running of its hooks.

The file is `version: v1` and `hooks`, a map from hook name to a list of commands, each
`{command, args, envs, workdir}`; mig-parted's own default (`hooks-default.yaml`) stops and
starts the node's GPU clients around a change. `apply` runs them at mig-parted's points:
`apply-start` first, `pre-apply-mode` before MIG modes change, `pre-apply-config` before
MIG devices change, and `apply-exit` at the end whatever happened. Each command sees the
environment, the `MIG_PARTED_*` variables of the apply's flags, and its own `envs`. A hook
that fails stops the apply (`ApplyError`, exit 1); `apply-exit` still runs.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tessera.errors import ApplyError, ConfigError

HookName = Literal["apply-start", "pre-apply-mode", "pre-apply-config", "apply-exit"]
HOOK_NAMES: tuple[HookName, ...] = ("apply-start", "pre-apply-mode", "pre-apply-config",
                                    "apply-exit")


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    command: str = Field(min_length=1)
    args: list[str] = []
    envs: dict[str, str] = {}
    workdir: str = ""


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    version: Literal["v1"]
    hooks: dict[HookName, list[_Command] | None] = {}


@dataclass(frozen=True, slots=True)
class HookCommand:
    """One command of a hook."""

    command: str
    args: tuple[str, ...] = ()
    envs: tuple[tuple[str, str], ...] = ()
    workdir: str = ""

    def __str__(self) -> str:
        return " ".join([self.command, *self.args])


@dataclass(frozen=True)
class Hooks:
    """A parsed hooks file: the commands of each hook, in file order."""

    source: str
    commands: Mapping[HookName, tuple[HookCommand, ...]]

    def run(self, name: HookName, flags: Mapping[str, str]) -> None:
        """Run hook `name`'s commands in order; the first that fails raises ApplyError."""
        for command in self.commands.get(name, ()):
            env = {**os.environ, **flags, **dict(command.envs)}
            try:
                finished = subprocess.run(
                    [command.command, *command.args], cwd=command.workdir or None, env=env,
                    check=False)
            except OSError as e:
                raise ApplyError(f"{self.source}: hook {name}: cannot run `{command}`: "
                                 f"{e.strerror or e}", done=(), failed=None) from e
            if finished.returncode != 0:
                raise ApplyError(f"{self.source}: hook {name}: `{command}` exited "
                                 f"{finished.returncode}; nothing after it ran", done=(),
                                 failed=None)


NO_HOOKS = Hooks(source="<no hooks>", commands={})


def load_hooks(path: Path) -> Hooks:
    """Read and check a hooks file, or raise ConfigError naming the file and the field."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the hooks file: {e.strerror}") from e
    return parse_hooks(text, source=str(path))


def parse_hooks(text: str, *, source: str = "<hooks>") -> Hooks:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {str(e).splitlines()[0]}") from e
    try:
        wire = _File.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "top level"
        if first["type"] == "literal_error" and first["loc"][:1] == ("hooks",):
            reason = f"`{first['input']}` is no hook: hooks are {', '.join(HOOK_NAMES)}"
        elif first["type"] == "extra_forbidden":
            reason = f"unexpected field `{where}`"
        elif first["type"] == "missing":
            reason = f"missing required field `{where}`"
        else:
            reason = f"`{where}`: {first['msg']}"
        raise ConfigError(f"{source}: {reason} (mig-parted's hooks format: `version: v1`, "
                          "`hooks: {<name>: [{command, args, envs, workdir}]}`)") from e
    commands = {
        name: tuple(HookCommand(c.command, tuple(c.args), tuple(c.envs.items()), c.workdir)
                    for c in entries or ())
        for name, entries in wire.hooks.items()
    }
    return Hooks(source=source, commands=commands)
