"""The real runs' references as they ship in tests/data/real_runs (scripts/refresh_real_runs.py writes
them from ../shared), and how gnhub's results are held to them.

Small arrays ship in full, and exact ones (integers: labels, packed masks). A float array over
COMPACT_ABOVE elements ships compact: its values at
SAMPLES fixed positions, and the mean and mean |x| of every slice along each axis (a channel, a
row, a column). `assert_close` holds gnhub to either at the tolerance of a full comparison: each
statistic of a difference is bounded by the difference's largest element, so a result that passes
the full comparison passes this one, and one that fails it anywhere but in a few scattered
elements fails this one too.
"""
from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import numpy as np
import torch
from detweights import make_image

REAL_RUNS = Path(__file__).resolve().parent / "data" / "real_runs"
COMPACT_ABOVE = 20_000
SAMPLES = 4096


def sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def compact(name: str, a: np.ndarray) -> dict[str, np.ndarray]:
    """`a` as it ships: in full if not float or up to COMPACT_ABOVE elements, else as `name:shape`,
    `name:index`, `name:sample` and, for each axis longer than 1, `name:mean<axis>` and
    `name:absmean<axis>`."""
    a = np.asarray(a)
    if a.size <= COMPACT_ABOVE or not np.issubdtype(a.dtype, np.floating):
        return {name: a}
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    index = np.sort(rng.choice(a.size, SAMPLES, replace=False)).astype(np.int32)
    out = {f"{name}:shape": np.array(a.shape), f"{name}:index": index, f"{name}:sample": a.reshape(-1)[index]}
    for axis in range(a.ndim):
        if a.shape[axis] > 1:
            other = tuple(d for d in range(a.ndim) if d != axis)
            out[f"{name}:mean{axis}"] = a.mean(axis=other, dtype=np.float64)
            out[f"{name}:absmean{axis}"] = np.abs(a).mean(axis=other, dtype=np.float64)
    return out


def names(ref: dict, prefix: str = "") -> list[str]:
    """The arrays the reference holds (in full or compact) whose names start with `prefix`."""
    return sorted({k.split(":")[0] for k in ref if k.startswith(prefix)})


def assert_close(name: str, got, ref: dict, atol: float, rtol: float = 0.0, rows=None) -> None:
    """|got - want| <= atol + rtol |want| for the reference array `name`. `rows`: which of its
    rows (first axis) `got` holds, in got's order (matched detections); default all, in order."""
    got = torch.as_tensor(got).detach().cpu().double()
    if name in ref:
        want = torch.from_numpy(np.asarray(ref[name])).double()
        want = want if rows is None else want[torch.as_tensor(rows, dtype=torch.long)]
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")
        return
    shape = tuple(int(n) for n in ref[f"{name}:shape"])
    rows = torch.arange(shape[0]) if rows is None else torch.as_tensor(rows, dtype=torch.long)
    assert tuple(got.shape) == (len(rows), *shape[1:]), f"{name}: shape {tuple(got.shape)}, reference {shape}"
    full = torch.full(shape, torch.nan, dtype=torch.float64)
    full[rows] = got
    have = torch.zeros(shape[0], dtype=torch.bool)
    have[rows] = True
    index = torch.from_numpy(ref[f"{name}:index"].astype(np.int64))
    keep = have[index // (full.numel() // shape[0])]
    torch.testing.assert_close(full.reshape(-1)[index[keep]], torch.from_numpy(ref[f"{name}:sample"]).double()[keep],
                               rtol=rtol, atol=atol, msg=lambda m: f"{name}, at {int(keep.sum())} sampled places: {m}")
    for axis in range(len(shape)):
        if f"{name}:mean{axis}" not in ref or (axis and not have.all()):
            continue  # a slice across rows needs every row
        other = [d for d in range(len(shape)) if d != axis]
        sel = have if axis == 0 else torch.ones(shape[axis], dtype=torch.bool)
        bound = atol + rtol * torch.from_numpy(ref[f"{name}:absmean{axis}"])
        for stat, values in (("mean", full), ("absmean", full.abs())):
            diff = (values.mean(dim=other) - torch.from_numpy(ref[f"{name}:{stat}{axis}"])).abs()
            bad = ((diff > bound) & sel).nonzero().flatten()
            assert not len(bad), (f"{name}: the {stat} of slice {int(bad[0])} along axis {axis} is "
                                  f"{float(diff[bad[0]]):.3g} off (allowed {float(bound[bad[0]]):.3g}); "
                                  f"{len(bad)} of {int(sel.sum())} slices off")


def load(case: str, file: str = "reference.npz") -> dict[str, np.ndarray]:
    with np.load(REAL_RUNS / case / file, allow_pickle=False) as z:
        return dict(z)


def image(ref: dict, prefix: str = "image") -> np.ndarray:
    """The run's RGB image, made again by the run's generator and checked byte for byte."""
    rgb = make_image(*(int(n) for n in ref[f"{prefix}_shape"][:2]), int(ref[f"{prefix}_seed"]))
    assert sha256(rgb) == str(ref[f"{prefix}_sha256"]), f"{prefix}: the generator no longer makes the run's image"
    return rgb
