"""Which dtype `--dtype auto` runs a model in: bfloat16 where the hardware has bfloat16 matrix units
(a CPU with AMX-BF16, read from /proc/cpuinfo without torch; a CUDA GPU that computes bfloat16
natively), float32 elsewhere. No torch here unless a GPU is asked about."""
from __future__ import annotations

from pathlib import Path

__all__ = ["auto_dtype", "CPU_BF16_FLAGS", "cpu_bfloat16_units", "cpu_flags", "describe_auto", "DTYPES"]

DTYPES = ("float32", "float16", "bfloat16")
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # what /proc/cpuinfo calls AMX-BF16 and AVX512-BF16


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (Linux); empty where there is no /proc/cpuinfo."""
    try:
        text = Path(cpuinfo).read_text(encoding="ascii", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def cpu_bfloat16_units(flags: set[str] | None = None) -> list[str]:
    """The CPU's bfloat16 units among AMX-BF16 and AVX512-BF16, as /proc/cpuinfo names them."""
    flags = cpu_flags() if flags is None else flags
    return [f for f in CPU_BF16_FLAGS if f in flags]


def auto_dtype(device: str = "cpu", flags: set[str] | None = None) -> str:
    """bfloat16 on a CPU with AMX-BF16 (AVX512-BF16 alone ran bfloat16 slower than float32, see the
    README) or on a CUDA GPU with native bfloat16 (compute capability 8.0 and later); float32
    elsewhere (other CPUs, MPS)."""
    kind = str(device or "cpu").split(":")[0]
    if kind == "cpu":
        return "bfloat16" if "amx_bf16" in cpu_bfloat16_units(flags) else "float32"
    if kind == "cuda":
        # torch only for a CUDA device: the CPU's answer (`gnhub info`) needs none
        import torch

        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported(False) else "float32"
    return "float32"


def describe_auto(flags: set[str] | None = None) -> str:
    """What `--dtype auto` picks on this machine's CPU, and why (for `gnhub info`)."""
    units = cpu_bfloat16_units(flags)
    picked = auto_dtype("cpu", flags)
    have = f"it has {', '.join(units)}" if units else "it has no bfloat16 units"
    return f"{picked} on this CPU ({have}); on a CUDA GPU, bfloat16 where it computes it natively"
