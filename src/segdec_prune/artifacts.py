"""Atomic artifact writes: a reader never sees a half-written file, and a full disk, a missing
permission or a read-only file system is one sentence (ArtifactWriteError), the earlier file intact."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()  # the process's file-creation mask, read once (reading it means setting it)


DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}
_FULL = 64 << 10  # a write that failed with less than this left on its file system filled it


class ArtifactWriteError(Exception):
    """An artifact could not be written (disk full, no permission, read-only file system)."""


def _free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the file system that holds `path` (its nearest existing folder); None: unknown."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def free_space(path: str | os.PathLike) -> str:
    """Free space on the file system that holds `path`, for a message."""
    free = _free_bytes(path)
    if free is None:
        return "free space unknown"
    return f"{free / 2**20:.1f} MB free" if free < 2**30 else f"{free / 2**30:.1f} GB free"


def _filled(path: Path) -> bool:
    """Whether the file system that holds `path` is (nearly) full now."""
    free = _free_bytes(path.absolute().parent)
    return free is not None and free < _FULL


def disk_fault(exc: BaseException, scratch: Path) -> int | None:
    """The errno of the disk fault behind `exc`, raised while writing into `scratch` (a temporary
    file or folder beside the artifact, not yet removed), or None when it is no disk fault."""
    code = exc.errno if isinstance(exc, OSError) else None
    if code in DISK_ERRNOS:
        return code
    if isinstance(exc, Exception) and not isinstance(exc, ArtifactWriteError) and _filled(scratch):
        return errno.ENOSPC  # torch.save, onnx and OpenVINO report a full disk as their own errors
    return None


def write_error(path: str | os.PathLike | None, code: int) -> ArtifactWriteError:
    """The one line for a write of `path` (None: not known) that failed with errno `code` (one of DISK_ERRNOS)."""
    why = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
           errno.EROFS: "read-only file system"}.get(code, "permission denied")
    if path is None:
        return ArtifactWriteError(f"a write failed: {why}")
    return ArtifactWriteError(f"cannot write {path}: {why} ({free_space(path)}); any earlier file there is unchanged")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if exc.errno in DISK_ERRNOS:
            raise write_error(path, exc.errno) from None
        raise
    os.close(fd)
    code = None
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; artifacts get the usual mode
        os.replace(tmp, path)
    except BaseException as exc:
        code = disk_fault(exc, Path(tmp))
        Path(tmp).unlink(missing_ok=True)
        if code is None:
            raise
    if code is not None:  # out of the handler: the failed writer (and its open file) is gone, so the free space is true
        raise write_error(path, code)
    return path


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    import torch  # here, not at the top: the CLI imports this module before it needs torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def strict_json(obj: Any) -> Any:
    """NaN and infinities as null: `json.dumps` would write `NaN`, which strict parsers reject."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    text = json.dumps(strict_json(obj), indent=2, sort_keys=False, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
