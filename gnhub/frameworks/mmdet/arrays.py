"""mmdetection's convention without torch: mmcv's resize, and the numpy twins of its postprocess
and mask paste that gnhub.runtime runs (convention.py holds the torch originals)."""
from __future__ import annotations

import math

import numpy as np

__all__ = ["paste_masks", "postprocess", "rescale"]


def rescale(img: np.ndarray, cfg) -> tuple[np.ndarray, tuple[float, float]]:
    """mmcv's `imrescale`: its scale and rounding, OpenCV bilinear on uint8 (normalised later);
    with crop_size, the shorter side to min(max_size). Returns the image and the (w, h) factor."""
    # OpenCV (slow to import) only when it is called: the torch-free commands import this module
    import cv2

    h, w = img.shape[:2]
    long_side, short_side = max(cfg.max_size), min(cfg.max_size)
    scale = short_side / min(h, w) if cfg.crop_size else min(long_side / max(h, w), short_side / min(h, w))
    new_w, new_h = int(w * scale + 0.5), int(h * scale + 0.5)
    return cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR), (new_w / w, new_h / h)


def postprocess(boxes: np.ndarray, size, original) -> tuple[np.ndarray, None]:
    """Nothing: the graph gives boxes in original pixels already."""
    return boxes, None


def paste_masks(probs: np.ndarray, boxes: np.ndarray, height: int, width: int, threshold: float) -> np.ndarray:
    """(D, M, M) probabilities into their (D, 4) boxes -> (D, height, width) bool masks, as
    gnhub and mmdetection paste them: bilinear at pixel centres inside the box plus one pixel,
    zeros outside the M x M grid (grid_sample, align_corners=False), >= threshold."""
    out = np.zeros((len(probs), height, width), bool)
    for i, (mask, (x0, y0, x1, y1)) in enumerate(zip(probs.astype(np.float32), boxes.astype(np.float32).tolist())):
        xa, ya = max(math.floor(x0) - 1, 0), max(math.floor(y0) - 1, 0)
        xb, yb = min(math.ceil(x1) + 1, width), min(math.ceil(y1) + 1, height)
        if xa < xb and ya < yb:
            wx, ix = _weights(_grid(xa, xb, x0, x1), mask.shape[1])
            wy, iy = _weights(_grid(ya, yb, y0, y1), mask.shape[0])
            value = sum(wy[a][:, None] * wx[b][None, :] * mask[iy[a]][:, ix[b]] for a in (0, 1) for b in (0, 1))
            out[i, ya:yb, xa:xb] = value >= threshold
    return out


def _grid(start: int, stop: int, lo: float, hi: float) -> np.ndarray:
    """Pixel centres start..stop-1 in the box's [-1, 1] coordinates (0 for an empty box)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (np.arange(start, stop, dtype=np.float32) + np.float32(0.5) - np.float32(lo)) / (
            np.float32(hi) - np.float32(lo)) * np.float32(2) - np.float32(1)
    return np.where(np.isinf(t), np.float32(0), t)


def _weights(coord: np.ndarray, size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Bilinear weights and indices of the two neighbours along one axis; a neighbour outside
    the grid weighs 0 (zero padding)."""
    pos = ((coord + np.float32(1)) * np.float32(size) - np.float32(1)) / np.float32(2)
    lo = np.floor(pos)
    frac = pos - lo
    weights, indices = [], []
    for idx, w in ((lo, np.float32(1) - frac), (lo + 1, frac)):
        inside = (idx >= 0) & (idx < size)
        weights.append(np.where(inside, w, np.float32(0)).astype(np.float32))
        indices.append(np.clip(idx, 0, size - 1).astype(np.int64))
    return weights, indices
