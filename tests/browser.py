"""Headless Chromium for the page tests (the report, the docs site): open a page whose injected
probe script appends `<pre id="probe">JSON</pre>`, and return that JSON."""

import html
import json
import re
import shutil
import subprocess

import pytest

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def need_chromium() -> None:
    if CHROMIUM is None:
        pytest.skip("no chromium here (.ci/run installs Debian's chromium package)")


def probe(url: str) -> dict:
    """The probe's JSON from the page at `url`, after asserting the page raised no script error."""
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
                        "--virtual-time-budget=10000", "--dump-dom", url], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', r.stdout, re.S)
    assert found, r.stdout[-2000:] + r.stderr[-2000:]
    out = json.loads(html.unescape(found.group(1)))
    assert out["errors"] == [] and "Uncaught" not in r.stderr, (out["errors"], r.stderr[-2000:])
    return out
