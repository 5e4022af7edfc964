"""What every command shares: the node to talk to, output formats, and error reporting."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

import typer
import yaml
from rich.console import Console

from tessera.errors import PermanentError, TesseraError
from tessera.hardware.backend import open_backend
from tessera.hardware.node import Node

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

stdout = Console(highlight=False, soft_wrap=True)
if not stdout.is_terminal:
    stdout.width = 160  # piped output: do not squeeze tables into 80 columns
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


class Output(StrEnum):
    table = "table"
    yaml = "yaml"
    json = "json"


OutputOption = typer.Option(Output.table, "--output", "-o", help="table, yaml or json.")


@dataclass
class Settings:
    """Global flags, set by the root command."""

    simulate: str | None = None
    sim_state: Path | None = None

    def node(self) -> Node:
        return Node(open_backend(self.simulate, self.sim_state))


def settings(ctx: typer.Context) -> Settings:
    found = ctx.find_object(Settings)
    return found if found is not None else Settings()


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    stderr.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    raise typer.Exit(code)


@contextmanager
def reported() -> Iterator[None]:
    """Turn Tessera errors into one red line and the exit code their kind calls for."""
    try:
        yield
    except PermanentError as e:
        fail(_escape(str(e)), EXIT_BAD_INPUT)
    except TesseraError as e:
        fail(_escape(str(e)), EXIT_FAILED)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def emit(data: Any, output: Output) -> None:
    """Print structured data as YAML or JSON."""
    if output is Output.json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log pipelines."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname.lower(),
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(fmt: str) -> None:
    """Log lines to stderr: text, or one JSON object per line (`fmt` "json")."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
