"""The download path against a loopback HTTP server that honours Range, like the real host."""

from __future__ import annotations

import functools
import http.server
import threading
import zipfile

import pytest

from segdec_prune.data.download import check, download, fetch

from .conftest import write_pair


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with 206 partial content; optionally cuts the first response short."""

    cut_after: int | None = None

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        path = self.translate_path(self.path)
        data = open(path, "rb").read()
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if type(self).cut_after is not None:
            body, type(self).cut_after = body[: type(self).cut_after], None
            self.wfile.write(body)
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = type("H", (RangeHandler,), {})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, handler, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _archive(www, src):
    """A small archive in the official layout: one top folder holding train/ and test/."""
    write_pair(src / "train", "10000", defect=True)
    write_pair(src / "train", "10001")
    write_pair(src / "train", "10301 (copy)")
    write_pair(src / "test", "20000", defect=True)
    with zipfile.ZipFile(www / "ksdd2.zip", "w") as zf:
        for p in sorted(src.rglob("*.png")):
            zf.write(p, f"KolektorSDD2/{p.relative_to(src)}")


def test_download_unpacks_and_checks(server, tmp_path):
    www, _, url = server
    _archive(www, tmp_path / "src")
    out = download(tmp_path / "KSDD2", f"{url}/ksdd2.zip")
    reports = {r.split: r for r in check(out)}
    assert (reports["train"].images, reports["train"].positives, reports["train"].negatives) == (2, 1, 1)
    assert (reports["test"].images, reports["test"].positives) == (1, 1)
    assert not reports["train"].problems and not reports["test"].problems


def test_interrupted_download_resumes(server, tmp_path):
    www, handler, url = server
    payload = bytes(range(256)) * 400
    (www / "blob.bin").write_bytes(payload)
    handler.cut_after = 30_000
    dest = tmp_path / "blob.bin"
    with pytest.raises(OSError, match="resume"):
        fetch(f"{url}/blob.bin", dest)
    assert (tmp_path / "blob.bin.part").stat().st_size == 30_000 and not dest.exists()
    fetch(f"{url}/blob.bin", dest)
    assert dest.read_bytes() == payload and not (tmp_path / "blob.bin.part").exists()


def test_check_lists_problems(tmp_path):
    write_pair(tmp_path / "train", "1", mask_size=(10, 10))
    write_pair(tmp_path / "train", "2")
    (tmp_path / "train" / "2_GT.png").unlink()
    reports = {r.split: r for r in check(tmp_path)}
    assert len(reports["train"].problems) == 2
    assert any("missing folder" in p for p in reports["test"].problems)
