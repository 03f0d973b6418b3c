"""Convolutions as the sources build them: plain, or with weight standardisation (Qiao et al.,
arXiv:1903.10520) exactly as mmcv's ConvWS2d computes it. Standardisation is part of the
forward, so the stored weights stay the source's and training sees it too."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .bfloat16 import packable, packed_conv

__all__ = ["conv2d", "standardized", "WS_EPS", "WSConv2d"]

WS_EPS = 1e-5  # mmcv's conv_ws_2d default


def standardized(weight: Tensor, eps: float = WS_EPS) -> Tensor:
    """Each output channel's filter minus its mean, divided by its (unbiased) std + eps."""
    c = weight.size(0)
    flat = weight.reshape(c, -1)  # a copy where the weight is not contiguous (channels_last)
    mean = flat.mean(dim=1, keepdim=True).view(c, 1, 1, 1)
    std = flat.std(dim=1, keepdim=True).view(c, 1, 1, 1)
    return (weight - mean) / (std + eps)


class Conv2d(nn.Conv2d):
    """nn.Conv2d. In bfloat16 on the CPU, without autograd, its filters go to oneDNN reordered
    once and kept (bfloat16.packed_conv)."""

    def filters(self) -> Tensor:
        return self.weight

    def forward(self, x: Tensor) -> Tensor:
        if packable(x):
            return packed_conv(self, x)
        return self._conv_forward(x, self.filters().to(x.dtype), self.bias)


class WSConv2d(Conv2d):
    """A Conv2d whose filters are standardised before each use (mmcv's ConvWS2d); packed, they are
    standardised once. Its weight stays float32 when the model is cast to float16 or bfloat16, and
    the standardised filters are rounded instead: standardisation divides a filter's deviations
    from its mean by their spread, which rounding the raw filter to bfloat16 moved by up to 40% of
    C5 (X-50 GN+WS reference weights)."""

    def filters(self) -> Tensor:
        return standardized(self.weight)

    def _apply(self, fn, recurse=True):
        weight = self.weight.data
        super()._apply(fn, recurse)
        if weight.dtype == torch.float32 and self.weight.dtype in (torch.float16, torch.bfloat16):
            self.weight.data = weight.to(self.weight.device, memory_format=torch.preserve_format)
        return self


def conv2d(in_ch: int, out_ch: int, k: int, stride: int = 1, padding: int = 0, groups: int = 1, bias: bool = True,
           weight_std: bool = False) -> nn.Conv2d:
    return (WSConv2d if weight_std else Conv2d)(in_ch, out_ch, k, stride, padding, groups=groups, bias=bias)
