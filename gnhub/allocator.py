"""Freed memory kept for reuse on the CPU. PyTorch allocates CPU tensors with malloc. glibc's
malloc maps large blocks fresh from the kernel and unmaps them when they are freed (from 128 KB,
a threshold that grows up to 32 MB), and it trims its heap. So every forward page-faults and
zeroes its activations again: an R-50 predict on 2 cores took 0.7-0.9 million page faults."""
from __future__ import annotations

import ctypes
import os

import torch

from ..settings import system_malloc

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's malloc.h
_applied = False


def keep_freed_memory(device: torch.device) -> None:
    """Once per process, for a model on the CPU: glibc's malloc serves every size from its heap
    and never trims it, so the next forward reuses freed activations. The process keeps its peak
    memory after a forward. Skipped where the C library is not glibc, where malloc is tuned
    already (GLIBC_TUNABLES, MALLOC_* variables), and with GNHUB_MALLOC=system."""
    global _applied
    if _applied or device.type != "cpu":
        return
    _applied = True
    if system_malloc() or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return
    if any(name.startswith("MALLOC_") for name in os.environ):
        return
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (ValueError, OSError, AttributeError):  # not glibc
        return
    mallopt(_M_MMAP_MAX, 0)
    mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
