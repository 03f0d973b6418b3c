"""RoI stage: multi-level RoIAlign, the 4conv1fc box head, the FCN mask head, detection."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from ..config import RoIHeadsConfig
from .boxes import batched_nms, decode_boxes, decode_boxes_detectron, nms_detectron
from .fpn import ConvGN


class MultiLevelRoIAlign(nn.Module):
    """RoIAlign of each RoI on one pyramid level, chosen by its size."""

    def __init__(self, output_size: int, strides: tuple[int, ...], cfg: RoIHeadsConfig, detectron: bool = False):
        super().__init__()
        self.detectron = detectron
        self.output_size = output_size
        self.strides = strides
        self.sampling_ratio = cfg.sampling_ratio
        self.aligned = cfg.aligned
        self.finest_scale = cfg.finest_scale

    def levels(self, rois: Tensor) -> Tensor:
        """Level index of (K, 5) RoIs: floor(log2(sqrt(area) / finest_scale + 1e-6)), clamped.

        Detectron: floor(4 + log2(sqrt(area) / (4 * finest_scale) + 1e-6)) - 2, areas with + 1
        (a negative area, where Detectron would assert, counts as 0).
        """
        if self.detectron:
            scale = torch.sqrt(((rois[:, 3] - rois[:, 1] + 1) * (rois[:, 4] - rois[:, 2] + 1)).clamp(min=0))
            lvl = torch.floor(4 + torch.log2(scale / (4 * self.finest_scale) + 1e-6)) - 2
        else:
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
                if f.device.type == "cpu" and f.dtype in (torch.bfloat16, torch.float16):
                    f = f.float()  # no bfloat16 CPU kernel; the float16 one is about 25x slower than float32
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
    def __init__(
        self, channels: int, num_classes: int, strides: tuple[int, ...], cfg: RoIHeadsConfig, box_convention="mmdet"
    ):
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.detectron = box_convention == "detectron"
        self.box_pool = MultiLevelRoIAlign(cfg.box_pool_size, strides, cfg, self.detectron)
        self.mask_pool = MultiLevelRoIAlign(cfg.mask_pool_size, strides, cfg, self.detectron)
        self.box_head = BoxHead(channels, num_classes, cfg)
        self.mask_head = MaskHead(channels, num_classes, cfg)

    def detect(
        self, cls_logits: Tensor, box_deltas: Tensor, proposals: Tensor, image_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Per-class decoding, score threshold, per-class NMS -> boxes, scores, labels (best first).

        `proposals` and `image_size` are in the coordinates detection happens in (config
        roi_heads.detect_in); the result is in the same coordinates.
        """
        cfg, k, n = self.cfg, self.num_classes, len(proposals)
        scores = F.softmax(cls_logits.float(), dim=-1)[:, :-1].reshape(-1)  # box math in float32
        decode = decode_boxes_detectron if self.detectron else decode_boxes
        boxes = decode(
            proposals.repeat_interleave(k, dim=0), box_deltas.float().reshape(-1, 4), cfg.box_stds, image_size
        )
        labels = torch.arange(k, device=scores.device).repeat(n)
        if self.detectron:
            return self._detect_detectron(boxes, scores, labels)
        idx = (scores > cfg.score_thresh).nonzero().squeeze(1)
        boxes, scores, labels = boxes[idx], scores[idx], labels[idx]
        keep = batched_nms(boxes, scores, labels, cfg.nms_iou)[: cfg.detections_per_image]
        return boxes[keep], scores[keep], labels[keep]

    def _detect_detectron(self, boxes: Tensor, scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Detectron's box_results_with_nms_and_limit: per class score > thresh and NMS, then all
        detections scoring at least the detections_per_image-th best (ties may keep more)."""
        cfg = self.cfg
        idx = (scores > cfg.score_thresh).nonzero().squeeze(1)
        boxes, scores, labels = boxes[idx], scores[idx], labels[idx]
        keep = [i[nms_detectron(boxes[i], scores[i], cfg.nms_iou)]
                for i in (torch.nonzero(labels == c).squeeze(1) for c in torch.unique(labels))]
        keep = torch.cat(keep) if keep else labels.new_zeros(0)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        limit = cfg.detections_per_image
        if 0 < limit < len(scores):
            ok = scores >= torch.sort(scores).values[-limit]
            boxes, scores, labels = boxes[ok], scores[ok], labels[ok]
        order = torch.sort(scores, descending=True, stable=True).indices
        return boxes[order], scores[order], labels[order]

    def mask_logits(self, feats: list[Tensor], rois: Tensor, labels: Tensor) -> Tensor:
        """(D, M, M) mask logits of each RoI's own class."""
        logits = self.mask_head(self.mask_pool(feats, rois))
        return logits[torch.arange(len(rois), device=logits.device), labels]
