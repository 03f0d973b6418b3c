"""`gnhub.tune_cpu()`: freed memory kept for reuse on the CPU, an opt-in the `gnhub` command takes.

PyTorch allocates CPU tensors with malloc. glibc's malloc maps large blocks fresh from the kernel
and unmaps them when they are freed (from 128 KB, a threshold that grows up to 32 MB), and it
trims its heap. So every forward page-faults and zeroes its activations again: an R-50 predict on
2 cores took 0.7-0.9 million page faults. Imports no torch.
"""
from __future__ import annotations

import ctypes
import os

from .settings import system_malloc

__all__ = ["tune_cpu"]

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's malloc.h
_applied = False


def tune_cpu() -> bool:
    """Tells glibc's malloc, for the whole process, to serve every size from its heap and never
    trim it, so each CPU forward reuses the memory of the last one (the process keeps its peak
    memory). A process-wide setting: the `gnhub` command calls it once; a library caller opts in.
    Skipped (False) where the C library is not glibc, where malloc is tuned already
    (GLIBC_TUNABLES, MALLOC_* variables), and with GNHUB_MALLOC=system. Idempotent."""
    global _applied
    if _applied:
        return True
    if system_malloc() or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    if any(name.startswith("MALLOC_") for name in os.environ):
        return False
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return False
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (ValueError, OSError, AttributeError):  # not glibc
        return False
    mallopt(_M_MMAP_MAX, 0)
    mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    _applied = True
    return True
