"""`segdec-prune data ...`: synthesise, download and check data sets in the KSDD2 layout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..data.ksdd2 import DatasetError
from ..data.synthetic import SynthSpec, write_dataset
from .common import app, console, counter, fail


data_app = typer.Typer(help="Data sets: synthesise, download, check.", no_args_is_help=True)
app.add_typer(data_app, name="data")

@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Output folder (KSDD2 layout).")] = Path("datasets/demo"),
    train: Annotated[int, typer.Option(min=4)] = SynthSpec.train,
    test: Annotated[int, typer.Option(min=4)] = SynthSpec.test,
    positive_fraction: Annotated[float, typer.Option(min=0.01, max=0.9)] = SynthSpec.positive_fraction,
    faint_fraction: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of low-contrast defects.")] = SynthSpec.faint_fraction,
    seed: int = SynthSpec.seed,
) -> None:
    """Write a synthetic data set in the exact KSDD2 layout."""

    spec = SynthSpec(train=train, test=test, positive_fraction=positive_fraction, seed=seed, faint_fraction=faint_fraction)
    with counter("synthesising") as bar:
        task = bar.add_task("", total=train + test)
        counts = write_dataset(out, spec, on_progress=lambda done, total: bar.update(task, completed=done))
    for split, c in counts.items():
        console.print(f"{split}: {c['images']} images, {c['positives']} positive -> {out / split}")


@data_app.command("download")
def data_download(
    out: Annotated[Path, typer.Option(help="Where to put train/ and test/.")] = Path("datasets/KSDD2"),
    url: Annotated[Optional[str], typer.Option(help="Archive URL (default: the official link).")] = None,
) -> None:
    """Fetch the official KSDD2 archive (resumable), unpack it and check the layout."""
    from ..data.download import OFFICIAL_URL, download

    cols = (TextColumn("downloading"), BarColumn(), DownloadColumn(), TimeElapsedColumn())
    try:
        with Progress(*cols, console=console) as bar:
            task = bar.add_task("", total=None)
            download(out, url or OFFICIAL_URL, lambda done, total: bar.update(task, completed=done, total=total))
    except (OSError, DatasetError) as exc:
        fail(exc)
    data_check(out)


@data_app.command("check")
def data_check(root: Annotated[Path, typer.Argument(help="Data set folder (KSDD2 layout).")]) -> None:
    """Count images, positives and negatives per split; list problems (exit 1 if any)."""
    from ..data.download import OFFICIAL_COUNTS, check

    reports = check(root)
    table = Table("split", "images", "positives", "negatives", "problems", title=str(root))
    for r in reports:
        table.add_row(r.split, str(r.images), str(r.positives), str(r.negatives), str(len(r.problems)))
    console.print(table)
    if all((r.images, r.positives) == OFFICIAL_COUNTS[r.split] for r in reports):
        console.print("matches the official KSDD2 counts")
    problems = [p for r in reports for p in r.problems]
    for p in problems:
        console.print(f"[red]problem:[/] {p}")
    if problems:
        raise typer.Exit(1)
