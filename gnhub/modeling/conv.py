"""Convolutions as the sources build them: plain, or with weight standardisation (Qiao et al.,
arXiv:1903.10520) exactly as mmcv's ConvWS2d computes it. Standardisation is part of the
forward, so the stored weights stay the source's and training sees it too."""
from __future__ import annotations

from torch import Tensor, nn

__all__ = ["WSConv2d", "WS_EPS", "conv2d", "standardized"]

WS_EPS = 1e-5  # mmcv's conv_ws_2d default


def standardized(weight: Tensor, eps: float = WS_EPS) -> Tensor:
    """Each output channel's filter minus its mean, divided by its (unbiased) std + eps."""
    c = weight.size(0)
    flat = weight.reshape(c, -1)  # a copy where the weight is not contiguous (channels_last)
    mean = flat.mean(dim=1, keepdim=True).view(c, 1, 1, 1)
    std = flat.std(dim=1, keepdim=True).view(c, 1, 1, 1)
    return (weight - mean) / (std + eps)


class WSConv2d(nn.Conv2d):
    """nn.Conv2d whose filters are standardised before each use (mmcv's ConvWS2d)."""

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, standardized(self.weight), self.bias)


def conv2d(in_ch: int, out_ch: int, k: int, stride: int = 1, padding: int = 0, groups: int = 1, bias: bool = True,
           weight_std: bool = False) -> nn.Conv2d:
    return (WSConv2d if weight_std else nn.Conv2d)(in_ch, out_ch, k, stride, padding, groups=groups, bias=bias)
