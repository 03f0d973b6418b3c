"""Pasting 28x28 mask probabilities into full-resolution images, as mmdetection or Detectron does."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["paste_masks", "paste_masks_detectron"]


def paste_masks(probs: Tensor, boxes: Tensor, height: int, width: int, threshold: float) -> Tensor:
    """(D, M, M) probabilities into their (D, 4) boxes -> (D, height, width) bool masks.

    Each mask is bilinearly resampled at pixel centres inside its box (zeros outside the
    M x M grid), as mmdetection does; only the box plus one pixel is computed.
    """
    out = torch.zeros(len(probs), height, width, dtype=torch.bool, device=probs.device)
    boxes = boxes.float()
    for i, (mask, box, (x0, y0, x1, y1)) in enumerate(zip(probs.float(), boxes, boxes.tolist())):  # one sync
        xa, ya = max(math.floor(x0) - 1, 0), max(math.floor(y0) - 1, 0)
        xb, yb = min(math.ceil(x1) + 1, width), min(math.ceil(y1) + 1, height)
        if xa >= xb or ya >= yb:
            continue
        gx = _grid(xa, xb, box[0], box[2])
        gy = _grid(ya, yb, box[1], box[3])
        grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), dim=-1)
        img = F.grid_sample(mask[None, None], grid[None], align_corners=False)[0, 0]
        out[i, ya:yb, xa:xb] = img >= threshold
    return out


def _grid(start: int, stop: int, lo: Tensor, hi: Tensor) -> Tensor:
    """Pixel centres start..stop-1 in the box's [-1, 1] coordinates (0 for an empty box). The
    box's ends stay 0-d tensors on its device: no copy from the host, no sync per detection."""
    t = torch.arange(start, stop, device=lo.device).to(torch.float32) + 0.5
    t = (t - lo) / (hi - lo) * 2 - 1
    return torch.where(torch.isinf(t), torch.zeros_like(t), t)


def paste_masks_detectron(probs: Tensor, boxes: Tensor, height: int, width: int, threshold: float) -> Tensor:
    """Detectron's segm_results: the M x M mask zero-padded to M + 2, its box widened by
    (M + 2) / M and cut to whole pixels, cv2.resize to the box (corners inclusive), > threshold."""
    import cv2

    out = torch.zeros(len(probs), height, width, dtype=torch.bool)
    if not len(probs):
        return out.to(probs.device)
    m = probs.shape[-1]
    b = boxes.float().cpu()
    half_w = (b[:, 2] - b[:, 0]) * 0.5 * ((m + 2.0) / m)
    half_h = (b[:, 3] - b[:, 1]) * 0.5 * ((m + 2.0) / m)
    cx, cy = (b[:, 2] + b[:, 0]) * 0.5, (b[:, 3] + b[:, 1]) * 0.5
    ref = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], 1).double().numpy().astype(np.int32)
    padded = np.zeros((m + 2, m + 2), dtype=np.float32)
    for i, (prob, (x0, y0, x1, y1)) in enumerate(zip(probs.float().cpu().numpy(), ref.tolist())):
        padded[1:-1, 1:-1] = prob
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        mask = cv2.resize(padded, (w, h)) > threshold
        xa, xb, ya, yb = max(x0, 0), min(x1 + 1, width), max(y0, 0), min(y1 + 1, height)
        if xa < xb and ya < yb:
            out[i, ya:yb, xa:xb] = torch.from_numpy(mask[ya - y0 : yb - y0, xa - x0 : xb - x0])
    return out.to(probs.device)
