"""What every command shares: the node to talk to, output formats, and error reporting."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Any, NoReturn

import typer
import yaml
from rich.console import Console

from tessera.cli.boundary import EXIT_BAD_INPUT, EXIT_FAILED, print_error, report
from tessera.cli.context import Settings, settings
from tessera.errors import TesseraError

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "Output", "OutputOption", "Settings", "emit", "fail",
           "reported", "settings", "stderr", "stdout"]

stdout = Console(highlight=False, soft_wrap=True)
if not stdout.is_terminal:
    stdout.width = 160  # piped output: do not squeeze tables into 80 columns
stderr = Console(stderr=True, highlight=False, soft_wrap=True)


class Output(StrEnum):
    table = "table"
    yaml = "yaml"
    json = "json"


OutputOption = typer.Option(Output.table, "--output", "-o", help="table, yaml or json.")


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """One red line (`message` is plain text, not markup) and exit with `code`."""
    print_error(message)
    raise typer.Exit(code)


@contextmanager
def reported() -> Iterator[None]:
    """Turn Tessera errors into one red line and the exit code their kind calls for (the
    root command does the same for every other exception)."""
    try:
        yield
    except TesseraError as e:
        raise typer.Exit(report(e)) from e


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


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler that writes to whatever `sys.stderr` is when a record is emitted, not to
    the one it was made with: a command run in-process (tests, embedding) swaps the stream,
    and a background thread logging later must not hit a closed one."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_logging(fmt: str) -> None:
    """Log lines to stderr: text, or one JSON object per line (`fmt` "json")."""
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
