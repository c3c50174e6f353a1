"""What every command shares: the typer app, the console, one-line errors, progress counters."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import get_console
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import distributed
from ..checkpoint import CheckpointError
from ..config import ConfigError
from ..data.ksdd2 import DatasetError


app = typer.Typer(help="Channel-pruning pipeline for SegDecNet on KolektorSDD2.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
console = Console()
USER_ERRORS = (ConfigError, DatasetError, CheckpointError, FileNotFoundError)  # ModelFileError: a ValueError

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="TOML config file.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override, e.g. --set train.epochs=3 (repeatable).")]


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    # Our messages at INFO; libraries' (the ONNX optimiser logs every folded constant) only from WARNING.
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False, show_time=False)])
    logging.getLogger("segdec_prune").setLevel(logging.DEBUG if verbose else logging.INFO)
    if distributed.ranks().rank > 0:  # under torchrun rank 0 speaks for all (errors still reach stderr)
        console.quiet = get_console().quiet = True


def fail(exc: Exception | str, code: int = 2) -> None:
    """One red line, then exit (2: how every command reports bad input)."""
    console.print("[bold red]error:[/]", end=" ")
    console.print(str(exc), markup=False, highlight=False)
    raise typer.Exit(code)


def counter(description: str) -> Progress:
    """A bar with a count: `description` plus whatever the task's own description says now."""
    return Progress(TextColumn(description + " {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console)
