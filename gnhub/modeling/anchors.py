"""Anchors as mmdetection's AnchorGenerator makes them: centred on (0, 0) + shift, unrounded."""
from __future__ import annotations

import torch
from torch import Tensor


def base_anchors(stride: int, ratios: tuple[float, ...], scales: tuple[float, ...]) -> Tensor:
    """(len(ratios) * len(scales), 4) anchors at the origin, ratio-major, ratio = height / width."""
    r = torch.tensor(ratios, dtype=torch.float32, device="cpu")
    s = torch.tensor(scales, dtype=torch.float32, device="cpu")
    h_ratios = torch.sqrt(r)
    w_ratios = 1 / h_ratios
    ws = (stride * w_ratios[:, None] * s[None, :]).view(-1)
    hs = (stride * h_ratios[:, None] * s[None, :]).view(-1)
    return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=-1)


def grid_anchors(base: Tensor, stride: int, height: int, width: int) -> Tensor:
    """(height * width * A, 4) anchors ordered (y, x, anchor), matching a head's (A, H, W) maps."""
    shift_x = torch.arange(width, device=base.device).to(base.dtype) * stride
    shift_y = torch.arange(height, device=base.device).to(base.dtype) * stride
    yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
    xx, yy = xx.reshape(-1), yy.reshape(-1)
    shifts = torch.stack([xx, yy, xx, yy], dim=-1)
    return (base[None, :, :] + shifts[:, None, :]).view(-1, 4)
