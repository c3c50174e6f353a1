"""The documentation: the README stays a front page, the site builds strictly, and it opens in a browser."""

import os
import re
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .browser import need_chromium, probe

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")

# Injected into a copy of the built home page: on load, what a reader would see.
PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message)));
window.addEventListener("load", () => setTimeout(() => {
  const out = {errors: window.__errors,
    title: document.title,
    nav: Array.from(document.querySelectorAll("nav.md-nav--primary a.md-nav__link")).map(a => a.textContent.trim()),
    images: Array.from(document.images).filter(i => i.src.includes("demo_pareto")).map(i => i.naturalWidth),
    tables: document.querySelectorAll("article table").length};
  const pre = document.createElement("pre"); pre.id = "probe"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}, 500));
</script>"""


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no request lines in the test output
        pass


@pytest.mark.parametrize("name", ["README.md", "README_CN.md"])
def test_readme_is_a_front_page_whose_links_resolve(name):
    text = (ROOT / name).read_text()
    assert len(text.splitlines()) <= 200
    assert "python -m pytest" in text and "bash run.sh" in text
    for target, _ in LINK.findall(text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"{name} links to {target}, which is not in the repository"


def test_cli_pages_match_the_cli():
    sys.path.insert(0, str(ROOT / "docs" / "hooks"))
    try:
        import cli_pages
    finally:
        sys.path.pop(0)
    assert cli_pages.stale() == [], "run `python docs/hooks/cli_pages.py`"
    # and they are what --help says: every option of predict is on its page
    page = (ROOT / "docs" / "cli" / "predict.md").read_text()
    assert "--resume" in page and "--overlays" in page and "--threshold" in page


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    pytest.importorskip("material", reason="mkdocs-material is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


def test_site_builds_strictly_with_every_page(site):
    for page in ["getting-started", "data", "pipeline", "criteria", "recovery", "budgets", "deployment",
                 "shipping", "scaling", "results", "measured", "design", "changelog", "api", "cli/predict", "cli/data"]:
        assert (site / page / "index.html").is_file(), page
    predict = (site / "cli" / "predict" / "index.html").read_text()
    assert "--resume" in predict
    api = (site / "api" / "index.html").read_text()
    assert "load_checkpoint" in api and "SegDecNet" in api


def test_site_home_in_headless_chromium(site):
    need_chromium()
    # beside index.html, so its relative assets resolve
    (site / "probe.html").write_text((site / "index.html").read_text().replace("<head>", "<head>" + PROBE, 1))
    # served over HTTP as a reader gets it (the search index is fetched by a worker: file:// forbids it)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = probe(f"http://127.0.0.1:{server.server_address[1]}/probe.html")
    finally:
        server.shutdown()
    assert out["title"].startswith("segdec-prune")
    assert {"Getting started", "Recovery", "Measured results", "Python API"} <= set(out["nav"])
    assert out["images"] and all(w > 0 for w in out["images"])  # the chart loaded
    assert out["tables"] >= 1, out
