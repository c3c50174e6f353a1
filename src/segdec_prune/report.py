"""One self-contained HTML page per run: the study's answer, every record, the charts, the config.

Everything is inside the file (charts as base64 PNG, CSS and a little JavaScript inline), so it
opens from disk with no server and no network and can be attached to a ticket. Paths in it are
relative to the run folder: the page says nothing about the machine's file system beyond it.
"""

from __future__ import annotations

import base64
import json
import string
from collections.abc import Callable, Sequence
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

from .artifacts import atomic_write
from .config import Config
from .pruning.recipe import CHANCE_DEC_LOSS
from .results import RESULTS_FILE, pareto_front, ship_rows
from .tables import num

REPORT_FILE = "report.html"
BENCHMARKS = {  # file in the run folder -> what its table shows
    "criteria_benchmark.json": "Criteria: test AP after pruning and fine-tuning, mean and SD over seeds "
                               "(benchmarks/criteria.py)",
    "recovery_benchmark.json": "Recovery recipes at one ratio, mean and SD over seeds (benchmarks/recovery.py)",
    "budget_benchmark.json": "Budgets: uniform vs allocated widths at equal MACs or latency (benchmarks/budget.py)",
    "int8_benchmark.json": "INT8: FP32 vs INT8 before and after the per-model search (benchmarks/int8.py)",
}
CHARTS = {"chart1_master_benchmark.png": "Accuracy, compute, size and speed-up, every model and runtime",
          "chart2_pareto.png": "Which model to ship: test AP vs CPU latency, Pareto front",
          "chart3_qualitative.png": "Defect maps on defective test images: baseline vs a pruned model"}


# The records table: header, cell text, sort value (None: the text), left-aligned.
Column = tuple[str, Callable[[dict], str], Callable[[dict], Any] | None, bool]
COLUMNS: list[Column] = [
    ("model", lambda r: r["model"], None, True),
    ("method", lambda r: r["method"], None, True),
    ("target", lambda r: _target(r), None, True),
    ("runtime", lambda r: r["runtime"], None, True),
    ("dtype", lambda r: r["dtype"], None, True),
    ("AP", lambda r: num(r["ap"], ".3f"), lambda r: r["ap"], False),
    ("AUROC", lambda r: num(r["auroc"], ".3f"), lambda r: r["auroc"], False),
    ("F1", lambda r: num(r["f1"], ".3f"), lambda r: r["f1"], False),
    ("threshold", lambda r: num(r["threshold"], ".2f"), lambda r: r["threshold"], False),
    ("FP", lambda r: str(r["fp_at_threshold"]), lambda r: r["fp_at_threshold"], False),
    ("FN", lambda r: str(r["fn_at_threshold"]), lambda r: r["fn_at_threshold"], False),
    ("F1 test-opt.", lambda r: num(r["best_f1"], ".3f"), lambda r: r["best_f1"], False),
    ("Dice", lambda r: num(r["dice"], ".3f"), lambda r: r["dice"], False),
    ("ms b1", lambda r: num(r["latency_ms_median"], ".2f"), lambda r: r["latency_ms_median"], False),
    ("ms p90", lambda r: num(r["latency_ms_p90"], ".2f"), lambda r: r["latency_ms_p90"], False),
    ("img/s", lambda r: num(r["throughput_ips"], ".0f"), lambda r: r["throughput_ips"], False),
    ("speed-up", lambda r: num(r["speedup_vs_baseline"], ".2f"), lambda r: r["speedup_vs_baseline"], False),
    ("vs ORT FP32", lambda r: num(r["speedup_vs_onnxruntime_fp32"], ".2f"), lambda r: r["speedup_vs_onnxruntime_fp32"],
     False),
    ("GMACs", lambda r: num(r["macs"] / 1e9, ".3f"), lambda r: r["macs"], False),
    ("MACs -", lambda r: num(r["mac_reduction"], ".0%"), lambda r: r["mac_reduction"], False),
    ("params (M)", lambda r: num(r["parameters"] / 1e6, ".2f"), lambda r: r["parameters"], False),
    ("file", lambda r: r["artifact"], None, True),
]


def _target(r: dict) -> str:
    if r.get("budget"):
        b = r["budget"]
        return f"{b['kind']} {b['value']:g}" if "value" in b else b["kind"]
    return "-" if r["ratio"] in (None, 0) else f"ratio {r['ratio']:g}"


TEXT = ' class="text"'  # a left-aligned cell


def _cell(text: str, value: Any = None, left: bool = False) -> str:
    attr = f' data-v="{escape(str(value))}"' if value is not None else ""
    return f"<td{TEXT if left else ''}{attr}>{escape(text)}</td>"


def table_html(columns: Sequence[Column], rows: Sequence[dict], table_id: str = "", sortable: bool = True,
               row_attrs: Callable[[dict], str] = lambda r: "") -> str:
    """A table; numeric cells carry their raw value (data-v) so the page sorts numbers as numbers."""
    head = "".join(f"<th{TEXT if left else ''}>{escape(h)}</th>" for h, _, _, left in columns)
    body = "".join(f"<tr{row_attrs(r)}>" + "".join(_cell(text(r), value(r) if value else None, left)
                                                    for _, text, value, left in columns) + "</tr>" for r in rows)
    ident = f' id="{table_id}"' if table_id else ""
    return f'<table{ident} class="{"sortable" if sortable else ""}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _records(records: list[dict], front: list[dict]) -> tuple[str, str]:
    """The full table and its filters (method, runtime, dtype)."""
    keys = {(r["model"], r["runtime"], r["dtype"]) for r in front}

    def attrs(r: dict) -> str:
        cls = ' class="front"' if (r["model"], r["runtime"], r["dtype"]) in keys else ""
        return cls + "".join(f' data-{k}="{escape(r[k])}"' for k in ("method", "runtime", "dtype"))

    filters = "".join(
        f'<label>{k} <select data-column="{k}"><option value="">all</option>'
        + "".join(f'<option>{escape(v)}</option>' for v in sorted({r[k] for r in records})) + "</select></label>"
        for k in ("method", "runtime", "dtype"))
    return table_html(COLUMNS, records, "records-table", row_attrs=attrs), filters


def _ship(records: list[dict]) -> str:
    rows = ship_rows(records)
    if not rows:
        return "<p>Nothing to rank: no latency was measured.</p>"
    keep = {"model", "runtime", "dtype", "AP", "F1", "threshold", "FP", "FN", "ms b1", "speed-up", "vs ORT FP32",
            "MACs -", "params (M)"}
    return ("<p>The baseline as trained, then the Pareto front of test AP vs batch-1 latency across the CPU runtimes "
            "(no other model is both faster and more accurate). <i>speed-up</i>: against the baseline in the same "
            "runtime and dtype (what pruning gave); <i>vs ORT FP32</i>: against the baseline in ONNX Runtime FP32 "
            "(what pruning and the runtime gave). F1 and FP/FN at each model's validation threshold.</p>"
            + table_html([c for c in COLUMNS if c[0] in keep], rows))


def _benchmarks(run: Path) -> str:
    """A table per benchmark JSON file present: its rows' scalar fields, lists as their values."""
    parts = []
    for name, what in BENCHMARKS.items():
        path = run / name
        if not path.is_file():
            continue
        rows = json.loads(path.read_text()).get("rows") or []
        keys = [k for k in dict.fromkeys(k for r in rows for k in r) if all(_plain(r.get(k)) for r in rows)]
        cols: list[Column] = [(k, lambda r, k=k: _fmt(r.get(k)), lambda r, k=k: _sort_value(r.get(k)),
                               isinstance(rows[0].get(k), str)) for k in keys]
        parts.append(f"<h3>{escape(what)}</h3><p class=\"note\">{escape(name)}, {len(rows)} rows</p>"
                     f'<div class="scroll">{table_html(cols, rows)}</div>')
    return "".join(parts) or "<p>No benchmark results in this run folder (see benchmarks/ and docs/measured.md).</p>"


def _recovery(run: Path) -> str:
    """One row per pruned model: validation AP before/after, the recipe and who chose it, stuck heads."""
    path = run / "profiling_results.json"
    models = json.loads(path.read_text())["models"] if path.is_file() else {}
    rows = [{"model": name, **rec["recovery"]} for name, rec in models.items() if rec.get("recovery")]
    if not rows:
        return "<p>No pruned models profiled yet.</p>"
    keys = ["model", "val_ap_pruned", "val_ap", "lr", "momentum", "recipe_source", "probe_candidates",
            "probe_seconds", "epochs", "stopped_early", "final_dec_loss", "stuck_dec_loss"]
    cols: list[Column] = [(k, lambda r, k=k: _fmt(r.get(k)), lambda r, k=k: _sort_value(r.get(k)),
                           k in ("model", "recipe_source")) for k in keys]
    stuck = [r["model"] for r in rows if r.get("stuck_dec_loss") is not None]
    warn = (f"<p><b>Not recovered</b> (training decision loss near chance, {CHANCE_DEC_LOSS:.3f}): "
            f"{escape(', '.join(stuck))}.</p>" if stuck else "")
    return ("<p>Validation AP right after pruning and after fine-tuning; the fine-tuning lr and momentum, "
            "from the config or chosen by the probe on the validation split (prune.finetune_lr = \"auto\").</p>"
            + warn + f'<div class="scroll">{table_html(cols, rows)}</div>')


def _plain(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float)) or (isinstance(v, list) and all(isinstance(x, (int, float)) for x in v))


def _fmt(v: Any) -> str:
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def _sort_value(v: Any) -> Any:
    return v if isinstance(v, (int, float)) else None


def _stages(manifest: dict) -> str:
    totals: dict[str, list[float]] = {}
    for rec in manifest.values():
        totals.setdefault(rec.get("stage", "?"), []).append(float(rec.get("wall_seconds") or 0))
    rows = [{"stage": s, "steps": len(t), "seconds": sum(t)} for s, t in totals.items()]
    cols: list[Column] = [("stage", lambda r: r["stage"], None, True), ("steps", lambda r: str(r["steps"]), None, False),
                          ("seconds (last run of each step)", lambda r: f"{r['seconds']:.1f}", lambda r: r["seconds"], False)]
    return "<h3>Wall time per stage (manifest.json)</h3>" + table_html(cols, rows, sortable=False)


def _facts(results: dict, records: list[dict], manifest: dict) -> str:
    base = next((r for r in records if r["model"] == "baseline_best"), records[0])
    versions = ", ".join(f"{k} {v}" for k, v in results.get("libraries", {}).items())
    devices = sorted({r["device"] for r in records})
    finished = sorted(r.get("finished", "") for r in manifest.values() if r.get("finished"))
    facts = {"data set": Path(results.get("data", "")).name, "split": results.get("split", "test"),
             "input (H x W)": " x ".join(map(str, results.get("input_size", []))),
             "test images": f"{base['images']} ({base['positives']} defective)",
             "models": str(len({r["model"] for r in records})), "records": str(len(records)),
             "machines (manifest)": ", ".join(sorted({r["device"] for r in manifest.values() if r.get("device")})) or "-",
             "runtime devices": ", ".join(devices), "threads": str(base["threads"]), "libraries": versions,
             "last step finished": finished[-1] if finished else "-"}
    return '<dl class="facts">' + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in facts.items()) + "</dl>"


def _config(cfg: Config) -> str:
    """The config as TOML, with its paths cut to folder names (they lie outside the run folder)."""
    raw = cfg.to_dict()
    raw["data"]["root"] = Path(cfg.data.root).name
    raw["run"]["dir"] = "."
    lines = []
    for section, values in raw.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        lines.append("")
    return escape("\n".join(lines))


def _charts(run: Path) -> str:
    parts = []
    for name, what in CHARTS.items():
        path = run / "charts" / name
        if path.is_file():
            data = base64.b64encode(path.read_bytes()).decode()
            parts.append(f'<h3>{escape(what)}</h3><img class="chart" alt="{escape(name)}" '
                         f'src="data:image/png;base64,{data}">')
    return "".join(parts) or "<p>No charts yet: run <code>segdec-prune charts</code>.</p>"


def render(cfg: Config) -> str:
    """The page for this run, from its results file, manifest, charts and benchmark files."""
    run = cfg.run_dir
    src = run / RESULTS_FILE
    if not src.is_file():
        raise FileNotFoundError(f"no {src}; run `segdec-prune evaluate --config ...` first")
    results = json.loads(src.read_text())
    records = [{**r, "artifact": _inside(r["artifact"], run)} for r in results["records"]]
    manifest = json.loads((run / "manifest.json").read_text())["steps"] if (run / "manifest.json").is_file() else {}
    front = pareto_front(records)
    table, filters = _records(records, front)
    skipped = "".join(f"<li>{escape(s['runtime'])}: {escape(s['reason'])}</li>" for s in results.get("skipped", []))
    template = string.Template(resources.files("segdec_prune").joinpath("templates/report.html").read_text())
    return template.substitute(
        title=escape(f"SegDecNet pruning study: {cfg.run.name}"),
        subtitle=escape(f"{len({r['model'] for r in records})} models x {len({(r['runtime'], r['dtype']) for r in records})} "
                        f"runtimes on {Path(results.get('data', '')).name}; results schema "
                        f"{results.get('schema_version')}"),
        ship=_ship(records), records=table, filters=filters,
        skipped=f"<h3>Runtimes not run</h3><ul>{skipped}</ul>" if skipped else "",
        charts=_charts(run), recovery=_recovery(run), benchmarks=_benchmarks(run), facts=_facts(results, records, manifest),
        stages=_stages(manifest) if manifest else "", config=_config(cfg))


def _inside(path: str, run: Path) -> str:
    """A path as seen from the run folder (its name alone when it lies outside)."""
    p, root = Path(path).resolve(), run.resolve()
    return str(p.relative_to(root)) if p.is_relative_to(root) else "/".join(Path(path).parts[-2:])


def make_report(cfg: Config) -> Path:
    """Write runs/<name>/report.html (atomically)."""
    page = render(cfg)
    return atomic_write(cfg.run_dir / REPORT_FILE, lambda tmp: tmp.write_text(page, encoding="utf-8"))
