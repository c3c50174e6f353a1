"""Keep memory that PyTorch frees inside the process instead of handing it back to the kernel.

Why: glibc's malloc serves every block above its mmap threshold (128 KiB, rising to 32 MiB at
most) with a fresh `mmap` and returns a heap top above its trim threshold to the kernel, so the
large tensors of every training step and inference batch (oneDNN's im2col buffer for the 15x15
convolution alone is about 40 MB at batch 4 and 176x64) come back as new zero-filled pages: the
demo run took 98 million page faults and 286 s of system time that way. With both thresholds at
1 GiB the memory is reused: a fine-tuning epoch of an r20 model at one thread ran 1.20x faster
(`benchmarks/allocator.py`). Arithmetic is untouched: only where the bytes live changes, so
every result is the same.

Applied by every command and pipeline worker; `SEGDEC_PRUNE_MALLOC=default` leaves glibc as it is.
Elsewhere (macOS, Windows, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
RETAIN_BYTES = 1 << 30  # freed blocks below this are kept for reuse; a larger one is still mmapped
OPT_OUT = "SEGDEC_PRUNE_MALLOC"


def keep_freed_memory(limit: int = RETAIN_BYTES) -> bool:
    """Raise glibc's mmap and trim thresholds to `limit` in this process; True when it took.
    Safe to call more than once."""
    if not sys.platform.startswith("linux") or os.environ.get(OPT_OUT, "").lower() == "default":
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl's mallopt does nothing)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, limit)) and bool(mallopt(M_TRIM_THRESHOLD, limit))
