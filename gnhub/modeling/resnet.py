"""ResNet-50/101 with GroupNorm after every conv (stem and shortcut included), outputs C2-C5."""
from __future__ import annotations

from torch import Tensor, nn

from ..config import BackboneConfig

STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
STAGE_CHANNELS = (256, 512, 1024, 2048)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride, "pytorch style") -> 1x1, GN after each, ReLU after the sum."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, stride: int, groups: int, eps: float):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, mid_ch, 1, bias=False)
        self.gn1 = nn.GroupNorm(groups, mid_ch, eps)
        self.conv2 = nn.Conv2d(mid_ch, mid_ch, 3, stride, 1, bias=False)
        self.gn2 = nn.GroupNorm(groups, mid_ch, eps)
        self.conv3 = nn.Conv2d(mid_ch, out_ch, 1, bias=False)
        self.gn3 = nn.GroupNorm(groups, out_ch, eps)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.GroupNorm(groups, out_ch, eps)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.gn1(self.conv1(x)))
        out = self.relu(self.gn2(self.conv2(out)))
        out = self.gn3(self.conv3(out))
        return self.relu(out + identity)


class GNResNet(nn.Module):
    """Returns the outputs of the four stages, C2 (stride 4) to C5 (stride 32)."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        if cfg.depth not in STAGE_BLOCKS:
            raise ValueError(f"ResNet depth must be one of {sorted(STAGE_BLOCKS)}, got {cfg.depth}")
        g, eps = cfg.num_groups, cfg.norm_eps
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.gn1 = nn.GroupNorm(g, 64, eps)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch = 64
        for i, (blocks, out_ch) in enumerate(zip(STAGE_BLOCKS[cfg.depth], STAGE_CHANNELS)):
            stride = 1 if i == 0 else 2
            layer = [Bottleneck(in_ch, out_ch // 4, out_ch, stride, g, eps)]
            layer += [Bottleneck(out_ch, out_ch // 4, out_ch, 1, g, eps) for _ in range(blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
            in_ch = out_ch

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.gn1(self.conv1(x))))
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            outs.append(x)
        return outs
