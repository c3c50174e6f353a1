"""The rich tables the CLI prints from result records (kept out of cli.py, which stays commands only)."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Column, Table

from .results import ship_rows


def num(v, fmt: str) -> str:
    """A number in `fmt`, "-" when missing or NaN (shared by the terminal tables and the HTML report)."""
    return "-" if v is None or v != v else format(v, fmt)


def records_table(records: list[dict], title: str, full: bool = True) -> Table:
    """Model x runtime rows. F1 and FP/FN are at each model's own validation threshold (what
    `predict` uses); `full` adds AUROC, Dice and the test-optimal F1, labelled as such.
    `full=False` keeps what decides a deployment, in fewer columns."""
    cols = {"AP": lambda r: num(r["ap"], ".3f"), "AUROC": lambda r: num(r["auroc"], ".3f"),
            "F1": lambda r: num(r["f1"], ".3f"), "FP/FN": lambda r: f"{r['fp_at_threshold']}/{r['fn_at_threshold']}",
            "F1 test-opt.": lambda r: num(r["best_f1"], ".3f"), "Dice": lambda r: num(r["dice"], ".3f"),
            "ms b1": lambda r: num(r["latency_ms_median"], ".1f"),
            "speedup": lambda r: num(r["speedup_vs_baseline"], ".2f") + "x" * bool(r["speedup_vs_baseline"]),
            "vs ORT32": lambda r: num(r.get("speedup_vs_onnxruntime_fp32"), ".1f") + "x" * bool(
                r.get("speedup_vs_onnxruntime_fp32")),
            "MACs -": lambda r: num(r["mac_reduction"], ".0%")}
    if not full:
        cols = {k: f for k, f in cols.items() if k not in ("AUROC", "Dice", "F1 test-opt.")}
    table = Table(Column("model", no_wrap=True), Column("runtime", no_wrap=True),
                  *(Column(k, no_wrap=True, justify="right") for k in cols), title=title, box=box.SIMPLE_HEAD)
    for r in records:
        runtime = f"{r['runtime']} {r['dtype']}"
        short = runtime.replace("onnxruntime", "ort").replace("openvino", "ov")
        table.add_row(r["model"], runtime if full else short, *(f(r) for f in cols.values()))
    return table


def show(console: Console, table: Table) -> None:
    """Print `table` at its natural width even where the console is narrower (80 columns when
    piped or under CI): rich would otherwise cut model names and numbers to "0.…"; a long line
    that the terminal wraps still shows every figure."""
    width = Measurement.get(console, console.options.update(width=1000), table).maximum
    if width <= console.width:
        return console.print(table)
    Console(file=console.file, width=width, color_system=console.color_system,
            force_terminal=console.is_terminal).print(table)


def ship_table(records: list[dict]) -> Table | None:
    """The baseline, then the Pareto front of test AP vs batch-1 latency (None: nothing to rank)."""
    rows = ship_rows(records)
    if not rows:
        return None
    title = ("which model to ship: the baseline as trained, then the Pareto front of test AP vs batch-1 latency across "
             "the CPU runtimes; speedup: vs the baseline in the same runtime and dtype, vs ORT32: vs the baseline in "
             "ONNX Runtime FP32; F1 and FP/FN at each model's validation threshold")
    return records_table(rows, title, full=False)


def plan_table(rows) -> Table:
    """`run --plan`: one row per step (schedule.PlannedStep)."""
    table = Table(Column("step", no_wrap=True), Column("status", no_wrap=True, min_width=11),
                  Column("expected", no_wrap=True, min_width=18),
                  Column("waits for", no_wrap=True), title="pipeline plan",
                  box=box.SIMPLE_HEAD)
    for r in rows:
        waits = r.depends_on[0] if len(r.depends_on) == 1 else f"{len(r.depends_on)} steps" if r.depends_on else "-"
        expected = "-" if r.status != "to run" else "unknown" if r.seconds is None else f"{r.seconds:.0f} s {r.basis}"
        table.add_row(r.name, r.status, expected, waits)
    return table
