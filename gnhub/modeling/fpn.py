"""Feature pyramid with GN (or no norm) on lateral and output convs; P6 by stride-2 subsampling of P5."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..config import FPNConfig
from .bfloat16 import GroupNorm, relu_
from .conv import conv2d

__all__ = ["ConvGN", "FPN"]


class ConvGN(nn.Module):
    """conv (optionally weight-standardised) -> GroupNorm -> optional ReLU; with `gn` False the
    conv has a bias and no norm follows."""

    def __init__(self, in_ch: int, out_ch: int, k: int, groups: int, eps: float, relu: bool, weight_std: bool = False,
                 gn: bool = True):
        super().__init__()
        self.conv = conv2d(in_ch, out_ch, k, padding=k // 2, bias=not gn, weight_std=weight_std)
        self.norm = GroupNorm(groups, out_ch, eps) if gn else None
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return relu_(x) if self.relu else x


class FPN(nn.Module):
    """C2-C5 -> P2-P6: 1x1 laterals, top-down nearest upsampling to the lateral's size, 3x3 outputs."""

    def __init__(self, in_channels: tuple[int, ...], cfg: FPNConfig):
        super().__init__()
        c, g, eps, ws, gn = cfg.channels, cfg.num_groups, cfg.norm_eps, cfg.weight_std, cfg.norm == "GN"
        self.lateral = nn.ModuleList(ConvGN(i, c, 1, g, eps, False, ws, gn) for i in in_channels)
        self.output = nn.ModuleList(ConvGN(c, c, 3, g, eps, False, ws, gn) for _ in in_channels)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            up = F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
            laterals[i - 1] = laterals[i - 1] + up
        outs = [conv(x) for conv, x in zip(self.output, laterals)]
        outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return outs
