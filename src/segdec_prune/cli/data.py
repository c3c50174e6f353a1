"""`segdec-prune data ...`: synthesise, download, import and check data sets in the KSDD2 layout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import DatasetError
from ..data.synthetic import SynthSpec, write_dataset
from .common import app, console, counter, fail


data_app = typer.Typer(help="Data sets: synthesise, download, import your own, check.", no_args_is_help=True)
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


@data_app.command("import")
def data_import(
    src: Annotated[Path, typer.Argument(help="Source folder in one of the --format layouts.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="yolo-seg | mvtec | folder | ksdd1.")],
    out: Annotated[Path, typer.Option(help="Output folder: the KSDD2 layout + import.json (new, or an earlier import).")],
    val_from: Annotated[str, typer.Option(help="train: carve val/ from train here (grouped, stratified); split: the "
                                          "source's own val split; none: leave it to training (data.val_fraction).")] = "train",
    val_fraction: Annotated[float, typer.Option(help="Share of train held out as val/ (--val-from train).")] = 0.2,
    test_fraction: Annotated[float, typer.Option(help="Share held out as test/ when the source has no test split.")] = 0.3,
    group_by: Annotated[Optional[str], typer.Option(help="Regex on the source-relative path; its first group (or "
                                                    "match) is the physical part: a part never spans two splits.")] = None,
    group_size: Annotated[Optional[int], typer.Option(help="Parts are blocks of N consecutive images (numbered exports).")] = None,
    good: Annotated[Optional[list[str]], typer.Option(help="folder: a class folder without defects (repeatable); "
                                                      "every other class is then defective.")] = None,
    positive_dir: Annotated[Optional[list[Path]], typer.Option(help="folder: images here are defective "
                                                               "(image-level label; a mask is optional).")] = None,
    masks: Annotated[Optional[Path], typer.Option(help="folder: masks in their own folder (same sub-path or flat).")] = None,
    mask_suffix: Annotated[str, typer.Option(help="folder: mask stem = image stem + this (e.g. _mask).")] = "",
    defect_train_fraction: Annotated[float, typer.Option(help="mvtec: share of each test defect type moved to train.")] = 0.5,
    skip_bad: Annotated[bool, typer.Option(help="Import the rest when some files are bad; import.json lists them.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of every split the import makes.")] = 0,
) -> None:
    """Import your own data (YOLO polygons, MVTec AD, image+mask folders, KSDD1) as the KSDD2 layout."""
    from ..data.formats import FormatOptions
    from ..data.importer import MANIFEST, ImportOptions, import_dataset

    reader = FormatOptions(good=tuple(good or ()), positive_dirs=tuple(positive_dir or ()), masks=masks,
                           mask_suffix=mask_suffix, defect_train_fraction=defect_train_fraction, seed=seed)
    opts = ImportOptions(fmt, val_from, val_fraction, test_fraction, group_by, group_size, skip_bad, seed, reader)
    try:
        with counter("importing") as bar:
            task = bar.add_task("", total=None)
            manifest = import_dataset(src, out, opts, lambda d, t: bar.update(task, completed=d, total=t))
    except (OSError, DatasetError) as exc:
        fail(exc)
    table = Table("split", "images", "positives", "negatives", "no mask", "classes", title=f"{out} ({fmt})")
    for split, c in manifest["counts"].items():
        classes = ", ".join(f"{k} {v}" for k, v in c["classes"].items())
        table.add_row(split, str(c["images"]), str(c["positives"]), str(c["negatives"]),
                      str(c["positives_without_mask"]), classes)
    console.print(table)
    groups = manifest["groups"]
    console.print(f"{groups['count']} groups; {len(groups['in_more_than_one_split'])} in more than one split"
                  + (f"; {groups['unmatched_by_pattern']} images not matched by --group-by" if groups["unmatched_by_pattern"] else ""))
    for fact, value in manifest["facts"].items():
        console.print(f"{fact.replace('_', ' ')}: {value}")
    for s in manifest["skipped"]:
        console.print(f"[yellow]left out:[/] {s['file']}: {s['reason']}", highlight=False)
    console.print(f"wrote {out} and {out / MANIFEST}")


@data_app.command("check")
def data_check(root: Annotated[Path, typer.Argument(help="Data set folder (KSDD2 layout).")]) -> None:
    """Count images, positives and negatives per split; list problems (exit 1 if any)."""
    from ..data.download import OFFICIAL_COUNTS, check

    reports = check(root)
    table = Table("split", "images", "positives", "negatives", "problems", title=str(root))
    for r in reports:
        table.add_row(r.split, str(r.images), str(r.positives), str(r.negatives), str(len(r.problems)))
    console.print(table)
    if all((r.images, r.positives) == OFFICIAL_COUNTS.get(r.split) for r in reports):
        console.print("matches the official KSDD2 counts")
    problems = [p for r in reports for p in r.problems]
    for p in problems:
        console.print(f"[red]problem:[/] {p}")
    if problems:
        raise typer.Exit(1)
