"""One writer per run folder: an exclusive OS lock (flock) on RUN/.lock.

The kernel drops the lock when its holder exits, however it exits (kill -9 included), so a
crashed run never leaves a stale lock. The holder writes who it is into the lock file for the
message the next writer gets. fcntl is used directly (not filelock): the holder's record must
live in the locked file itself, and a "soft" lock that a kill -9 leaves behind is not wanted.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)
LOCK_FILE = ".lock"
_BUSY = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES}
_UNSUPPORTED = {errno.ENOLCK, errno.ENOSYS, errno.EINVAL, getattr(errno, "EOPNOTSUPP", -1), getattr(errno, "ENOTSUP", -1)}


class RunFolderBusy(Exception):
    """Another process writes into this run folder now."""


class RunLock:
    """Held from `acquire` until `release` (or the end of a `with` block, or the process)."""

    def __init__(self, run_dir: Path, fd: int | None) -> None:
        self.run_dir, self.fd = run_dir, fd

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)  # no stale holder record once free
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(run_dir: str | os.PathLike, command: str) -> RunLock:
    """Take RUN/.lock or raise RunFolderBusy naming the holder. Where the file system has no
    locks (some network mounts, Windows), say so once and go on unlocked."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:
        os.close(fd)
        log.warning("no file locks on this platform: nothing stops a second writer in %s", run_dir)
        return RunLock(run_dir, None)
    except OSError as exc:
        if exc.errno in _BUSY:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunFolderBusy(f"{run_dir} is in use by {holder}; wait for it or stop it") from None
        os.close(fd)
        if exc.errno in _UNSUPPORTED:
            log.warning("file locks do not work on %s (%s): going on unlocked, so start no second writer there",
                        run_dir, exc.strerror)
            return RunLock(run_dir, None)
        raise
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
              "since": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[1:]}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    except OSError:  # a full disk: the lock holds all the same; the first artifact write will say why
        pass
    return RunLock(run_dir, fd)


def _read_holder(fd: int) -> str:
    """The holder's record as a phrase; it may not be written yet (it took the lock a moment ago)."""
    try:
        h = json.loads(os.pread(fd, 4096, 0).decode())
        return f"`{h['command']}`, pid {h['pid']} on host {h['host']}, since {h['since']}"
    except (ValueError, KeyError, OSError):
        return "another process (it took the lock a moment ago)"
