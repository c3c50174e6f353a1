"""Faults: one writer per run folder (an OS lock that a kill frees), a full or read-only disk in
one line with nothing lost, and `predict` that keeps its rows through a crash and resumes."""

import contextlib
import errno
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from segdec_prune.cli import app
from segdec_prune.runtimes.openvino_runtime import unavailable_reason as openvino_reason

runner = CliRunner()
HOLD = ("import sys, time; from segdec_prune.runlock import acquire; acquire(sys.argv[1], 'segdec-prune run'); "
        "print('held', flush=True); time.sleep(600)")


def _invoke(*args):
    r = runner.invoke(app, [str(a) for a in args])
    return r, r.output.replace("\n", "")  # the console wraps long lines


def _one_line_exit_2(r, text: str, cause: str) -> None:
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), (text, r.exception)
    assert cause in text and "Traceback" not in text, text


def test_a_second_writer_is_refused_naming_the_holder_until_a_kill_frees_the_lock(shipped, images, tmp_path):
    cfg, run = shipped
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for command in (["profile"], ["charts"], ["build", "--precision", "int8"], ["run"]):
            r, text = _invoke(command[0], "--config", cfg, *command[1:])
            assert r.exit_code == 2 and "is in use by `segdec-prune run`" in text and f"pid {holder.pid}" in text, text
        r, text = _invoke("run", "--config", cfg, "--plan")  # read-only commands need no lock
        assert r.exit_code == 0, text
        r, text = _invoke("predict", images, "--model", run / "onnx" / "naive_l1_r50.onnx", "--out", tmp_path / "p")
        assert r.exit_code == 1 and "images scored" in text, text  # 1: the corrupt image in `images`
    finally:
        holder.kill()  # SIGKILL: no cleanup runs; the kernel drops the lock
        holder.wait()
    r, text = _invoke("profile", "--config", cfg)
    assert r.exit_code == 0, text
    assert (run / ".lock").read_text() == ""  # released, no stale holder record


def test_commands_in_one_process_release_the_lock_even_when_they_fail(shipped):
    cfg, run = shipped
    for _ in range(2):
        r, _text = _invoke("bundle", "--config", cfg, "--model", "no_such_model", "--out", run.parent / "b")
        assert r.exit_code == 2
    from segdec_prune.runlock import acquire

    with acquire(run, "test"):  # free again
        pass


def test_a_disk_error_on_any_artifact_is_one_line_and_the_earlier_file_stays(shipped, monkeypatch):
    """Where no tmpfs can be mounted: the rename into place fails as a full disk would."""
    import segdec_prune.artifacts as artifacts

    cfg, run = shipped
    int8 = run / "onnx" / "naive_l1_r50_int8.onnx"
    before = int8.read_bytes()

    def no_space(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(artifacts.os, "replace", no_space)
    r, text = _invoke("build", "--config", cfg, "--precision", "int8")
    _one_line_exit_2(r, text, "no space left on the device")
    assert int8.read_bytes() == before and not list(run.rglob(".*.tmp"))
    r, text = _invoke("export", "--model", run / "models" / "naive_l1_r50.pth", "--output", run.parent / "x.onnx")
    _one_line_exit_2(r, text, "no space left on the device")
    assert not (run.parent / "x.onnx").exists() and not list(run.parent.glob(".*.tmp"))


def _mount(folder: Path, size: str, *options: str) -> None:
    folder.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(folder)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'mount failed'}): needs root")


@pytest.fixture
def full_disk(tmp_path):
    """A tmpfs holding one earlier file and filled to its last bytes (skipped where mounting is not allowed)."""
    disk = tmp_path / "full"
    _mount(disk, "4m")
    try:
        (disk / "earlier.txt").write_text("kept")
        (disk / "openvino").mkdir()  # for an IR pair written by OpenVINO's own writer
        with open(disk / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:  # until the disk is full
                f.write(b"\0" * 4096)
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _nothing_left_behind(disk: Path) -> None:
    assert (disk / "earlier.txt").read_text() == "kept"
    assert not [p for p in disk.rglob("*") if p.name.endswith(".tmp")]


def test_a_full_disk_stops_export_predict_bundle_and_run_with_one_line(shipped, images, full_disk, tiny_synth, tmp_path):
    cfg, run = shipped
    r, text = _invoke("export", "--model", run / "models" / "naive_l1_r50.pth", "--output", full_disk / "m.onnx")
    _one_line_exit_2(r, text, "no space left on the device")
    assert not (full_disk / "m.onnx").exists()
    r, text = _invoke("predict", images, "--model", run / "onnx" / "naive_l1_r50.onnx", "--out", full_disk / "p",
                      "--overlays")
    _one_line_exit_2(r, text, "no space left on the device")
    r, text = _invoke("bundle", "--config", cfg, "--model", "naive_l1_r50", "--out", full_disk / "bundle")
    _one_line_exit_2(r, text, "no space left on the device")
    if openvino_reason() is None:  # a run whose openvino/ folder is on the full disk
        copy = tmp_path / "runs" / run.name
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("openvino"))
        (copy / "openvino").symlink_to(full_disk / "openvino", target_is_directory=True)
        moved = tmp_path / "moved.toml"
        moved.write_text(cfg.read_text().replace(str(run.parent), str(copy.parent)))
        r, text = _invoke("build", "--config", moved, "--runtime", "openvino", "--precision", "fp32")
        _one_line_exit_2(r, text, "no space left on the device")
        assert not list((full_disk / "openvino").iterdir())
    fresh = tmp_path / "fresh.toml"  # a run whose folder is on the full disk: its first artifact cannot be written
    fresh.write_text(cfg.read_text().replace(str(run.parent), str(full_disk / "runs")))
    for workers in ("1", "2"):  # in this process, and from a worker process back to the driver
        r, text = _invoke("run", "--config", fresh, "--set", 'prune.methods=["naive_l1"]', "--set", "prune.ratios=[0.5]",
                          "--workers", workers)
        _one_line_exit_2(r, text, "no space left on the device")
        assert f"cannot write {full_disk / 'runs'}" in text  # the first file each writes (2 workers: the executor token)
    _nothing_left_behind(full_disk)


def test_a_read_only_disk_is_one_line(shipped, tmp_path):
    _, run = shipped
    disk = tmp_path / "ro"
    _mount(disk, "1m", "ro")
    try:
        r, text = _invoke("export", "--model", run / "models" / "naive_l1_r50.pth", "--output", disk / "m.onnx")
        _one_line_exit_2(r, text, "read-only file system")
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _lines(csv_path: Path) -> list[str]:
    return csv_path.read_text().splitlines()[1:] if csv_path.is_file() else []


def _predict_until(args: list, csv_path: Path, rows: int, sig: int) -> subprocess.CompletedProcess:
    """Start `predict` in its own process, send `sig` once the CSV holds `rows` rows, wait for it."""
    p = subprocess.Popen([sys.executable, "-m", "segdec_prune.cli", *map(str, args)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while p.poll() is None and len(_lines(csv_path)) < rows and time.monotonic() < deadline:
        time.sleep(0.01)
    p.send_signal(sig)
    out, _ = p.communicate()
    return subprocess.CompletedProcess(p.args, p.returncode, out.replace("\n", ""))


def test_predict_keeps_its_rows_through_ctrl_c_and_kill_and_resume_completes_them(shipped, tiny_synth, tmp_path):
    _, run = shipped
    folder = tmp_path / "many"
    folder.mkdir()
    src = sorted(p for p in (tiny_synth / "test").glob("*.png") if not p.stem.endswith("_GT"))
    for i in range(300):
        shutil.copy(src[i % len(src)], folder / f"{i:04d}.png")
    out = tmp_path / "pred"
    csv_path = out / "predictions.csv"
    args = ["predict", folder, "--model", run / "onnx" / "naive_l1_r50.onnx", "--out", out, "--batch", "1"]
    stopped = _predict_until(args, csv_path, 20, signal.SIGINT)  # Ctrl-C: the batch in hand is finished, then stop
    assert stopped.returncode == 130 and "interrupted" in stopped.stdout and "--resume" in stopped.stdout, stopped.stdout
    kept = _lines(csv_path)
    assert 20 <= len(kept) < 300
    killed = _predict_until([*args, "--resume"], csv_path, len(kept) + 20, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    after_kill = _lines(csv_path)
    assert after_kill[: len(kept)] == kept and len(after_kill) < 300
    with open(csv_path, "a") as f:
        f.write(str(folder / "0299.png") + ",0.12")  # a row torn by the kill: dropped and scored again
    r, text = _invoke(*args, "--resume")
    assert r.exit_code == 0, text
    rows = _lines(csv_path)
    assert len(rows) == 300 and len({row.split(",")[0] for row in rows}) == 300  # every image once
    assert rows[: len(after_kill)] == after_kill and f"({len(after_kill)} of them from an earlier run)" in text
    assert csv_path.read_text().count("path,score") == 1  # one header


def test_the_cli_and_a_refused_run_load_neither_torch_nor_opencv(shipped):
    """What makes a second writer's refusal immediate: the lock is taken before the heavy imports."""
    cfg, run = shipped
    code = ("import sys, subprocess; from segdec_prune.runlock import acquire; from typer.testing import CliRunner; "
            "from segdec_prune.cli import app; loaded = {'torch', 'cv2'} & set(sys.modules); assert not loaded, loaded; "
            "h = subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2]], stdout=subprocess.PIPE, text=True); "
            "assert h.stdout.readline().strip() == 'held'; "
            "r = CliRunner().invoke(app, ['run', '--config', sys.argv[3]]); h.kill(); "
            "assert r.exit_code == 2 and 'in use' in r.output, r.output; "
            "loaded = {'torch', 'cv2'} & set(sys.modules); assert not loaded, loaded")
    r = subprocess.run([sys.executable, "-c", code, HOLD, str(run), str(cfg)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
