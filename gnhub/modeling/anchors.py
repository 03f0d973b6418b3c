"""Anchors on a level's grid; each framework's base anchors are its convention's
(gnhub/frameworks/)."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["grid_anchors"]


def grid_anchors(base: Tensor, stride: int, height: int, width: int) -> Tensor:
    """(height * width * A, 4) anchors ordered (y, x, anchor), matching a head's (A, H, W) maps."""
    shift_x = torch.arange(width, device=base.device).to(base.dtype) * stride
    shift_y = torch.arange(height, device=base.device).to(base.dtype) * stride
    yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
    xx, yy = xx.reshape(-1), yy.reshape(-1)
    shifts = torch.stack([xx, yy, xx, yy], dim=-1)
    return (base[None, :, :] + shifts[:, None, :]).view(-1, 4)
