"""Pasting 28x28 mask probabilities into full-resolution images."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def paste_masks(probs: Tensor, boxes: Tensor, height: int, width: int, threshold: float) -> Tensor:
    """(D, M, M) probabilities into their (D, 4) boxes -> (D, height, width) bool masks.

    Each mask is bilinearly resampled at pixel centres inside its box (zeros outside the
    M x M grid), as mmdetection does; only the box plus one pixel is computed.
    """
    out = torch.zeros(len(probs), height, width, dtype=torch.bool, device=probs.device)
    for i, (mask, (x0, y0, x1, y1)) in enumerate(zip(probs.float(), boxes.float().tolist())):
        xa, ya = max(math.floor(x0) - 1, 0), max(math.floor(y0) - 1, 0)
        xb, yb = min(math.ceil(x1) + 1, width), min(math.ceil(y1) + 1, height)
        if xa >= xb or ya >= yb:
            continue
        gx = _grid(xa, xb, x0, x1, mask.device)
        gy = _grid(ya, yb, y0, y1, mask.device)
        grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), dim=-1)
        img = F.grid_sample(mask[None, None], grid[None], align_corners=False)[0, 0]
        out[i, ya:yb, xa:xb] = img >= threshold
    return out


def _grid(start: int, stop: int, lo: float, hi: float, device) -> Tensor:
    """Pixel centres start..stop-1 in the box's [-1, 1] coordinates (0 for an empty box)."""
    t = torch.arange(start, stop, device=device).to(torch.float32) + 0.5
    lo_t = torch.tensor(lo, dtype=torch.float32, device=device)
    hi_t = torch.tensor(hi, dtype=torch.float32, device=device)
    t = (t - lo_t) / (hi_t - lo_t) * 2 - 1
    return torch.where(torch.isinf(t), torch.zeros_like(t), t)
