"""COCO run-length encoding of binary masks, byte-compatible with pycocotools' compressed RLE."""
from __future__ import annotations

import numpy as np

__all__ = ["decode", "encode"]


def encode(mask: np.ndarray) -> dict:
    """(H, W) bool -> {"size": [H, W], "counts": str}, runs taken in column-major order."""
    h, w = mask.shape
    flat = np.asarray(mask, dtype=bool).T.ravel()
    if flat.size == 0:
        return {"size": [h, w], "counts": ""}
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
    if flat[0]:
        runs.insert(0, 0)
    chars = []
    for i, run in enumerate(runs):
        x = run - runs[i - 2] if i > 2 else run
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            chars.append(chr((c | 0x20 if more else c) + 48))
    return {"size": [h, w], "counts": "".join(chars)}


def decode(rle: dict) -> np.ndarray:
    """The inverse of `encode`."""
    h, w = rle["size"]
    s = rle["counts"].encode() if isinstance(rle["counts"], str) else rle["counts"]
    runs: list[int] = []
    p = 0
    while p < len(s):
        x = k = 0
        more = True
        while more:
            c = s[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    flat = np.zeros(h * w, dtype=bool)
    pos = 0
    for i, run in enumerate(runs):
        if i % 2:
            flat[pos : pos + run] = True
        pos += run
    return flat.reshape(w, h).T
