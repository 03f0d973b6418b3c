"""The backbone's normalisation layer, by config: GroupNorm or detectron2's FrozenBatchNorm2d."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import BackboneConfig

__all__ = ["FrozenBatchNorm2d", "backbone_norm"]


class FrozenBatchNorm2d(nn.Module):
    """Batch normalisation with fixed statistics and affine parameters, all four buffers, as
    detectron2's FrozenBatchNorm2d computes it at inference: `F.batch_norm(training=False)`."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training=False,
                            eps=self.eps)


def backbone_norm(channels: int, cfg: BackboneConfig) -> nn.Module:
    """The norm after a backbone conv: `cfg.norm` "GN" (`cfg.num_groups` groups) or "FrozenBN"."""
    if cfg.norm == "FrozenBN":
        return FrozenBatchNorm2d(channels, cfg.norm_eps)
    return nn.GroupNorm(cfg.num_groups, channels, cfg.norm_eps)
