"""RoI stage: multi-level RoIAlign, the 4conv1fc box head, the FCN mask head, detection."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from ..config import RoIHeadsConfig
from .boxes import batched_nms, decode_boxes
from .fpn import ConvGN


class MultiLevelRoIAlign(nn.Module):
    """RoIAlign of each RoI on one pyramid level, chosen by its size."""

    def __init__(self, output_size: int, strides: tuple[int, ...], cfg: RoIHeadsConfig):
        super().__init__()
        self.output_size = output_size
        self.strides = strides
        self.sampling_ratio = cfg.sampling_ratio
        self.aligned = cfg.aligned
        self.finest_scale = cfg.finest_scale

    def levels(self, rois: Tensor) -> Tensor:
        """Level index of (K, 5) RoIs: floor(log2(sqrt(area) / finest_scale + 1e-6)), clamped."""
        scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        lvl = torch.floor(torch.log2(scale / self.finest_scale + 1e-6))
        return lvl.clamp(min=0, max=len(self.strides) - 1).long()

    def forward(self, feats: list[Tensor], rois: Tensor) -> Tensor:
        size = self.output_size
        out = feats[0].new_zeros(len(rois), feats[0].shape[1], size, size)
        levels = self.levels(rois)
        for i, stride in enumerate(self.strides):
            idx = (levels == i).nonzero().squeeze(1)
            if idx.numel():
                f = feats[i]
                if f.device.type == "cpu" and f.dtype == torch.bfloat16:  # no CPU kernel: float32
                    f = f.float()
                out[idx] = roi_align(
                    f, rois[idx].to(f.dtype), size, 1.0 / stride, self.sampling_ratio, self.aligned
                ).to(out.dtype)
        return out


class BoxHead(nn.Module):
    """4 x (3x3 conv + GN + ReLU) -> fc + ReLU -> class logits (K + 1, background last), deltas (4K)."""

    def __init__(self, channels: int, num_classes: int, cfg: RoIHeadsConfig):
        super().__init__()
        g, eps = cfg.num_groups, cfg.norm_eps
        self.convs = nn.Sequential(*(ConvGN(channels, channels, 3, g, eps, True) for _ in range(cfg.num_convs)))
        self.fc = nn.Linear(channels * cfg.box_pool_size**2, cfg.fc_channels)
        self.cls_score = nn.Linear(cfg.fc_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(cfg.fc_channels, num_classes * 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = F.relu(self.fc(self.convs(x).flatten(1)))
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Module):
    """4 x (3x3 conv + GN + ReLU) -> 2x2 stride-2 transposed conv + ReLU -> 1x1 conv, K logits."""

    def __init__(self, channels: int, num_classes: int, cfg: RoIHeadsConfig):
        super().__init__()
        g, eps = cfg.num_groups, cfg.norm_eps
        self.convs = nn.Sequential(*(ConvGN(channels, channels, 3, g, eps, True) for _ in range(cfg.num_convs)))
        self.upsample = nn.ConvTranspose2d(channels, channels, 2, stride=2)
        self.logits = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(F.relu(self.upsample(self.convs(x))))


class RoIHeads(nn.Module):
    def __init__(self, channels: int, num_classes: int, strides: tuple[int, ...], cfg: RoIHeadsConfig):
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.box_pool = MultiLevelRoIAlign(cfg.box_pool_size, strides, cfg)
        self.mask_pool = MultiLevelRoIAlign(cfg.mask_pool_size, strides, cfg)
        self.box_head = BoxHead(channels, num_classes, cfg)
        self.mask_head = MaskHead(channels, num_classes, cfg)

    def detect(
        self, cls_logits: Tensor, box_deltas: Tensor, proposals: Tensor, image_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-class decoding, score threshold, per-class NMS -> boxes, scores, labels (best first)."""
        cfg, k, n = self.cfg, self.num_classes, len(proposals)
        scores = F.softmax(cls_logits.float(), dim=-1)[:, :-1].reshape(-1)  # box math in float32
        boxes = decode_boxes(
            proposals.repeat_interleave(k, dim=0), box_deltas.float().reshape(-1, 4), cfg.box_stds, image_size
        )
        labels = torch.arange(k, device=scores.device).repeat(n)
        idx = (scores > cfg.score_thresh).nonzero().squeeze(1)
        boxes, scores, labels = boxes[idx], scores[idx], labels[idx]
        keep = batched_nms(boxes, scores, labels, cfg.nms_iou)[: cfg.detections_per_image]
        return boxes[keep], scores[keep], labels[keep]

    def mask_logits(self, feats: list[Tensor], rois: Tensor, labels: Tensor) -> Tensor:
        """(D, M, M) mask logits of each RoI's own class."""
        logits = self.mask_head(self.mask_pool(feats, rois))
        return logits[torch.arange(len(rois), device=logits.device), labels]
