"""ResNet-50/101/152 and ResNeXt with a norm after every conv (stem and shortcut included):
GroupNorm or FrozenBatchNorm (`backbone.norm`; the modules keep the names gn1-gn3 either way),
optionally weight-standardised convs, optionally deformable 3x3 convs (v1, detectron2's
DeformBottleneckBlock); outputs C2-C5."""
from __future__ import annotations

from torch import Tensor, nn

from ..config import BackboneConfig
from .bfloat16 import relu_
from .conv import conv2d
from .norm import backbone_norm
from .ops import deform_conv2d

__all__ = ["Bottleneck", "GNResNet", "STAGE_BLOCKS", "STAGE_CHANNELS", "bottleneck_width"]

STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
STAGE_CHANNELS = (256, 512, 1024, 2048)


def bottleneck_width(planes: int, groups: int, base_width: int) -> int:
    """The 3x3 conv's channels, as mmdetection's ResNeXt builds them (planes for a ResNet)."""
    return planes if groups == 1 else planes * base_width // 64 * groups


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride, "pytorch style"; `groups` for ResNeXt) -> 1x1, a norm after
    each, ReLU after the sum. `deform`: the 3x3 is a deformable convolution v1 (one offset group)
    whose offsets a 3x3 conv with bias (`conv2_offset`, 18 channels) computes from its input."""

    def __init__(self, in_ch: int, width: int, out_ch: int, stride: int, cfg: BackboneConfig, deform: bool = False):
        super().__init__()
        ws = cfg.weight_std
        self.conv1 = conv2d(in_ch, width, 1, bias=False, weight_std=ws)
        self.gn1 = backbone_norm(width, cfg)
        self.conv2_offset = nn.Conv2d(width, 18, 3, stride, 1) if deform else None
        self.conv2 = conv2d(width, width, 3, stride, 1, groups=cfg.groups, bias=False, weight_std=ws)
        self.gn2 = backbone_norm(width, cfg)
        self.conv3 = conv2d(width, out_ch, 1, bias=False, weight_std=ws)
        self.gn3 = backbone_norm(out_ch, cfg)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(conv2d(in_ch, out_ch, 1, stride, bias=False, weight_std=ws),
                                            backbone_norm(out_ch, cfg))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = relu_(self.gn1(self.conv1(x)))
        if self.conv2_offset is None:
            out = self.conv2(out)
        else:
            dtype = out.dtype  # torchvision's CPU kernel is float32 (and float64) only
            out = deform_conv2d(out.float(), self.conv2_offset(out).float(), self.conv2.filters().float(),
                                stride=self.conv2.stride, padding=self.conv2.padding).to(dtype)
        out = relu_(self.gn2(out))
        return relu_(self.gn3(self.conv3(out)).add_(identity))


class GNResNet(nn.Module):
    """Returns the outputs of the four stages, C2 (stride 4) to C5 (stride 32)."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        if cfg.depth not in STAGE_BLOCKS:
            raise ValueError(f"ResNet depth must be one of {sorted(STAGE_BLOCKS)}, got {cfg.depth}")
        self.conv1 = conv2d(3, 64, 7, 2, 3, bias=False, weight_std=cfg.weight_std)
        self.gn1 = backbone_norm(64, cfg)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch = 64
        for i, (blocks, out_ch) in enumerate(zip(STAGE_BLOCKS[cfg.depth], STAGE_CHANNELS)):
            width = bottleneck_width(out_ch // 4, cfg.groups, cfg.base_width)
            deform = cfg.deform_stages[i]
            layer = [Bottleneck(in_ch, width, out_ch, 1 if i == 0 else 2, cfg, deform)]
            layer += [Bottleneck(out_ch, width, out_ch, 1, cfg, deform) for _ in range(blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
            in_ch = out_ch

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(relu_(self.gn1(self.conv1(x))))
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            outs.append(x)
        return outs
