"""The HTML report of a tiny pipeline run: contents, no paths outside the run folder, and in a real browser."""

import json
import os
import re

import pytest
from typer.testing import CliRunner

from segdec_prune.cli import app

from .browser import need_chromium, probe
from .test_pipeline import CPU_KINDS, _config

runner = CliRunner()
DATA_URI = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]+")

# Injected first into a copy of the page: records errors, then on load clicks, filters and measures.
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message)));
const __consoleError = console.error;
console.error = (...a) => { window.__errors.push(a.join(" ")); __consoleError(...a); };
window.addEventListener("load", () => {
  const t = document.getElementById("records-table");
  const head = Array.from(t.tHead.rows[0].cells);
  const ap = head.findIndex(th => th.textContent.trim() === "AP");
  const column = () => Array.from(t.tBodies[0].rows).map(r => parseFloat(r.cells[ap].dataset.v));
  const out = {rows: t.tBodies[0].rows.length, before: column()};
  head[ap].click(); out.asc = column(); out.aria = head[ap].getAttribute("aria-sort");
  head[ap].click(); out.desc = column();
  const sel = document.querySelector('select[data-column="runtime"]');
  sel.value = "torch"; sel.dispatchEvent(new Event("change"));
  out.torch_rows = Array.from(t.tBodies[0].rows).filter(r => !r.hidden).length;
  out.images = Array.from(document.images).map(i => i.naturalWidth);
  out.errors = window.__errors;
  const pre = document.createElement("pre"); pre.id = "probe"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


@pytest.fixture(scope="module")
def tiny_run(tiny_synth, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    cfg = _config(tiny_synth, tmp, methods='["naive_l1"]')
    r = runner.invoke(app, ["run", "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "report:" in r.output and "report: done" in r.output
    return cfg, tmp / "runs" / "p", tiny_synth


def test_report_has_every_record_and_no_path_outside_the_run(tiny_run):
    cfg, run, data = tiny_run
    page = (run / "report.html").read_text()
    records = json.loads((run / "real_evaluation_results.json").read_text())["records"]
    assert page.count("<tr class=\"front\" data-method=") + page.count("<tr data-method=") == len(records) == \
        2 * len(CPU_KINDS)
    recovery = page[page.index('<h2 id="recovery">'):page.index('<h2 id="benchmarks">')]
    assert "naive_l1_r50" in recovery and "val_ap_pruned" in recovery and "config" in recovery
    assert page.count("data:image/png;base64,") == 3  # the three charts, embedded
    assert "Which model to ship" in page and "TensorRT is not installed" in page  # a skipped runtime's reason
    text = DATA_URI.sub("", page)
    for outside in (str(data), str(run.parent), str(run), os.getcwd(), os.path.expanduser("~")):
        assert outside not in text, outside
    assert "models/naive_l1_r50.pth" in text  # artifacts as seen from the run folder
    again = runner.invoke(app, ["report", "--config", str(cfg)])
    assert again.exit_code == 0 and "report.html" in again.output


def test_report_in_headless_chromium(tiny_run, tmp_path):
    need_chromium()
    _, run, _ = tiny_run
    page = (run / "report.html").read_text()
    probe_file = tmp_path / "probe.html"
    probe_file.write_text(page.replace("<head>", "<head>" + PROBE, 1))
    out = probe(probe_file.as_uri())
    records = json.loads((run / "real_evaluation_results.json").read_text())["records"]
    assert out["rows"] == len(records)
    assert out["aria"] == "ascending" and out["asc"] == sorted(out["before"])
    assert out["desc"] == sorted(out["before"], reverse=True)
    assert out["torch_rows"] == sum(x["runtime"] == "torch" for x in records)
    assert len(out["images"]) == 3 and all(w > 0 for w in out["images"])
