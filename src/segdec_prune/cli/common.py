"""What every command shares: the typer app, the console, one-line errors, progress counters."""

from __future__ import annotations

import logging
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup
from rich import get_console
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import distributed
from ..allocator import keep_freed_memory
from ..artifacts import DISK_ERRNOS, ArtifactWriteError, write_error
from ..config import ConfigError
from ..errors import CheckpointError, DatasetError
from ..runlock import RunFolderBusy, RunLock, acquire


_HELD: ContextVar[list[RunLock] | None] = ContextVar("run_locks_of_this_command", default=None)


class _OneLineWriteErrors(TyperGroup):
    """Around every command: the run-folder locks it took are released when it ends, however it
    ends; and the one place a full disk, a missing permission or a read-only file system becomes
    one line and exit 2, whichever command's write met it (atomic writes keep the earlier file)."""

    def invoke(self, ctx):
        token = _HELD.set([])
        try:
            return super().invoke(ctx)
        except ArtifactWriteError as exc:
            fail(exc)
        except OSError as exc:
            if exc.errno not in DISK_ERRNOS:
                raise
            fail(write_error(exc.filename, exc.errno))
        finally:
            for lock in _HELD.get() or ():
                lock.release()
            _HELD.reset(token)


app = typer.Typer(help="Channel-pruning pipeline for SegDecNet on KolektorSDD2.", no_args_is_help=True,
                  pretty_exceptions_enable=False, cls=_OneLineWriteErrors)
console = Console()
USER_ERRORS = (ConfigError, DatasetError, CheckpointError, FileNotFoundError,  # ModelFileError: a ValueError
               ArtifactWriteError, RunFolderBusy)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="TOML config file.")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override, e.g. --set train.epochs=3 (repeatable).")]


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    # Our messages at INFO; libraries' (the ONNX optimiser logs every folded constant) only from WARNING.
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False, show_time=False)])
    logging.getLogger("segdec_prune").setLevel(logging.DEBUG if verbose else logging.INFO)
    keep_freed_memory()  # large tensors reused, not re-faulted from the kernel every batch (allocator.py)
    if distributed.ranks().rank > 0:  # under torchrun rank 0 speaks for all (errors still reach stderr)
        console.quiet = get_console().quiet = True


def fail(exc: Exception | str, code: int = 2) -> None:
    """One red line, then exit (2: how every command reports bad input). Never wrapped by us
    (soft wrap: the terminal folds it): a piped or 80-column console would otherwise break it
    into lines, and a wrap at a space dropped the space for anyone joining them."""
    console.print("[bold red]error:[/]", end=" ")
    console.print(str(exc), markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def lock_run(run_dir: Path, command: str) -> RunLock | None:
    """What every command that writes into a run folder holds until it returns: a second writer
    gets one line naming the holder, exit 2 (read-only commands and `run --plan` take none; under
    torchrun rank 0 holds it for all)."""
    if distributed.ranks().rank > 0:
        return None
    try:
        lock = acquire(run_dir, f"segdec-prune {command}")
    except RunFolderBusy as exc:
        fail(exc)
    held = _HELD.get()
    if held is not None:  # released when the command ends, also on an error exit
        held.append(lock)
    return lock


def counter(description: str) -> Progress:
    """A bar with a count: `description` plus whatever the task's own description says now."""
    return Progress(TextColumn(description + " {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console)
