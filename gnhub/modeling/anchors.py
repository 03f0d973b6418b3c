"""Anchors as mmdetection's AnchorGenerator, Detectron's generate_anchors or detectron2's
DefaultAnchorGenerator makes them."""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["base_anchors", "detectron2_base_anchors", "detectron_base_anchors", "grid_anchors"]


def base_anchors(stride: int, ratios: tuple[float, ...], scales: tuple[float, ...]) -> Tensor:
    """mmdetection: (len(ratios) * len(scales), 4) anchors centred on (0, 0), unrounded,
    ratio-major, ratio = height / width."""
    r = torch.tensor(ratios, dtype=torch.float32, device="cpu")
    s = torch.tensor(scales, dtype=torch.float32, device="cpu")
    h_ratios = torch.sqrt(r)
    w_ratios = 1 / h_ratios
    ws = (stride * w_ratios[:, None] * s[None, :]).view(-1)
    hs = (stride * h_ratios[:, None] * s[None, :]).view(-1)
    return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=-1)


def detectron_base_anchors(stride: int, ratios: tuple[float, ...], scales: tuple[float, ...]) -> Tensor:
    """Detectron: the (0, 0, stride - 1, stride - 1) cell reshaped per ratio with rounded sides,
    then scaled; corners inclusive (width x2 - x1 + 1), computed in float64 as Detectron does."""
    size = float(stride * stride)
    ctr = 0.5 * (stride - 1)
    rows = []
    for ratio in ratios:
        w = torch.tensor(size / ratio, dtype=torch.float64, device="cpu").sqrt().round()
        h = (w * ratio).round()
        for scale in scales:
            sw, sh = w * scale, h * scale
            half_w, half_h = 0.5 * (sw - 1), 0.5 * (sh - 1)
            rows.append(torch.stack([ctr - half_w, ctr - half_h, ctr + half_w, ctr + half_h]))
    return torch.stack(rows).float()  # on the CPU even under a meta device context


def detectron2_base_anchors(stride: int, ratios: tuple[float, ...], scales: tuple[float, ...]) -> Tensor:
    """detectron2: side `scale * stride` (its SIZES), for each ratio w = sqrt(side^2 / ratio),
    h = ratio * w in float64, centred on (0, 0), then float32; size-major."""
    rows = []
    for scale in scales:
        area = float(scale * stride) ** 2.0
        for ratio in ratios:
            w = math.sqrt(area / ratio)
            h = ratio * w
            rows.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(rows, dtype=torch.float32, device="cpu")


def grid_anchors(base: Tensor, stride: int, height: int, width: int) -> Tensor:
    """(height * width * A, 4) anchors ordered (y, x, anchor), matching a head's (A, H, W) maps."""
    shift_x = torch.arange(width, device=base.device).to(base.dtype) * stride
    shift_y = torch.arange(height, device=base.device).to(base.dtype) * stride
    yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
    xx, yy = xx.reshape(-1), yy.reshape(-1)
    shifts = torch.stack([xx, yy, xx, yy], dim=-1)
    return (base[None, :, :] + shifts[:, None, :]).view(-1, 4)
