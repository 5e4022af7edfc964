"""The container image's Dockerfile, checked without a container engine: what it copies
exists and reaches the build context, its entrypoint is the project's console script, its
default command is a `tessera` subcommand, and its base is the Python the project targets."""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
import typer

from tessera.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    stage: int  # index of the FROM it belongs to (-1: before the first)


def instructions() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    found: list[Instruction] = []
    pending = ""
    stage = -1
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        pending = ""
        if keyword.upper() == "FROM":
            stage += 1
        found.append(Instruction(keyword.upper(), arguments.strip(), stage))
    return found


def of(keyword: str) -> list[Instruction]:
    return [i for i in instructions() if i.keyword == keyword]


def build_args() -> dict[str, str]:
    """Defaults of the ARGs, wherever declared."""
    args = {}
    for i in of("ARG"):
        name, sep, default = i.arguments.partition("=")
        if sep:
            args[name] = default
    return args


def exec_form(instruction: Instruction) -> list[str]:
    assert instruction.arguments.startswith("["), f"{instruction.keyword}: use the exec form"
    return list(re.findall(r'"([^"]*)"', instruction.arguments))


# -- .dockerignore, as Docker reads it (last matching pattern wins; `!` re-includes) ---------


def _pattern(text: str) -> re.Pattern[str]:
    parts = re.split(r"(\*\*/?|\*|\?)", text.strip("/"))
    regex = "".join({"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(p)
                    or re.escape(p) for p in parts)
    return re.compile(f"^{regex}$")


def ignored(path: str) -> bool:
    rules = [(line.startswith("!"), _pattern(line.lstrip("!")))
             for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negated, pattern in rules:
        if any(pattern.match(p) for p in prefixes):
            excluded = not negated
    return excluded


# -- the tests -----------------------------------------------------------------------------


def test_every_copied_source_exists_and_is_in_the_build_context() -> None:
    copies = [i for i in of("COPY") if "--from=" not in i.arguments]
    assert copies
    for copy in copies:
        *sources, _destination = shlex.split(copy.arguments)
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
            assert not ignored(source.rstrip("/")), f"COPY {source}: excluded by .dockerignore"


def test_the_build_context_holds_the_package_and_nothing_else() -> None:
    for needed in ("pyproject.toml", "README.md", "src/tessera/cli/main.py",
                   "src/tessera/mig/data/nvidia-default.yaml",
                   "src/tessera/kubeletapi/podresources/v1/api.proto"):
        assert not ignored(needed), needed
    for left_out in (".venv/bin/python", "tests/test_chart.py", "deploy/helm/tessera/Chart.yaml",
                     "src/tessera/__pycache__/errors.cpython-311.pyc", ".git/HEAD",
                     "bench/README.md"):
        assert ignored(left_out), left_out


def test_the_readme_the_build_needs_is_copied() -> None:
    copied = {s for i in of("COPY") for s in shlex.split(i.arguments)[:-1]}
    assert PROJECT["readme"] in copied, "the build backend reads the README pyproject names"


def test_the_base_image_is_the_python_the_project_targets() -> None:
    args = build_args()
    bases = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], i.arguments.split()[0])
             for i in of("FROM")]
    assert len(bases) == 2, "a build stage and a runtime stage"
    for base in bases:
        name, _, tag = base.partition(":")
        assert name == "python"
        assert tag.startswith("3.11-slim"), base
    assert PROJECT["requires-python"] == ">=3.11"


def test_the_entrypoint_is_the_projects_console_script() -> None:
    (entrypoint,) = of("ENTRYPOINT")
    assert exec_form(entrypoint) == ["tessera"]
    assert PROJECT["scripts"]["tessera"] == "tessera.cli.main:app"


def test_the_default_command_is_the_agent() -> None:
    (cmd,) = of("CMD")
    assert exec_form(cmd) == ["agent"]
    group = typer.main.get_command(app)
    assert group.get_command(click.Context(group), "agent") is not None  # type: ignore[attr-defined]


def test_the_runtime_stage_installs_only_the_built_wheels_and_runs_as_non_root() -> None:
    runtime = max(i.stage for i in instructions())
    runs = [i.arguments for i in of("RUN") if i.stage == runtime]
    (install,) = [r for r in runs if "pip install" in r]
    assert "--no-index" in install, "nothing but the wheels of the build stage"
    assert "[test]" not in install
    assert all("apt-get install" not in r for r in runs), "no system packages added"
    (user,) = [i.arguments for i in of("USER") if i.stage == runtime]
    assert user.split(":")[0] not in ("0", "root")


@pytest.mark.parametrize("label", ["title", "description", "version", "licenses"])
def test_oci_labels(label: str) -> None:
    text = " ".join(i.arguments for i in of("LABEL"))
    assert f"org.opencontainers.image.{label}=" in text


def test_the_image_version_is_the_projects() -> None:
    assert build_args()["VERSION"] == PROJECT["version"]
