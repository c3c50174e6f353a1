"""Freed memory stays in the process: large buffers are reused, not faulted in again each time."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# A fresh interpreter (the setting is per process and cannot be undone): allocate, touch and free
# a 64 MB buffer 20 times, and print the minor page faults that took.
CHURN = """
import ctypes, resource, sys
from segdec_prune.allocator import keep_freed_memory
took = keep_freed_memory() and keep_freed_memory() if sys.argv[1] == "keep" else False  # twice: harmless
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    p = libc.malloc(64 << 20)  # 64 MB (oneDNN's scratch buffers are this size), every page written
    ctypes.memset(p, 1, 64 << 20)
    libc.free(p)
print(int(took), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _churn(mode: str, **env: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env}).stdout.split()
    return bool(int(out[0])), int(out[1])


def _libc() -> str:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (AttributeError, ValueError, OSError):  # not a POSIX system, or not glibc
        return ""


glibc = pytest.mark.skipif(not _libc().startswith("glibc"), reason="glibc's malloc only (elsewhere it does nothing)")


@glibc
def test_freed_buffers_are_reused_not_faulted_in_again():
    took, kept = _churn("keep")
    _, default = _churn("default")
    assert took
    assert kept < default / 4  # glibc's default: every buffer a fresh mmap; kept: the first one's pages serve all


@glibc
def test_the_environment_opts_out():
    took, faults = _churn("keep", SEGDEC_PRUNE_MALLOC="default")
    assert not took
    assert faults > 4 * _churn("keep")[1]
