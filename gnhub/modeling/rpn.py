"""Region proposal network: shared 3x3 conv, sigmoid objectness and deltas per anchor."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import RPNConfig
from .anchors import base_anchors, detectron_base_anchors, grid_anchors
from .boxes import batched_nms, decode_boxes, decode_boxes_detectron, nms_detectron

ANCHOR_GENERATORS = {"mmdet": base_anchors, "detectron": detectron_base_anchors}


class RPN(nn.Module):
    def __init__(self, channels: int, cfg: RPNConfig, box_convention: str = "mmdet"):
        super().__init__()
        self.cfg = cfg
        self.detectron = box_convention == "detectron"
        num_anchors = len(cfg.ratios) * len(cfg.scales)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.objectness = nn.Conv2d(channels, num_anchors, 1)
        self.deltas = nn.Conv2d(channels, num_anchors * 4, 1)
        make = ANCHOR_GENERATORS[cfg.anchor_generator]
        self.base = [make(s, cfg.ratios, cfg.scales) for s in cfg.strides]

    def head(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: objectness logits (B, A, H, W) and deltas (B, 4A, H, W)."""
        objectness, deltas = [], []
        for f in feats:
            x = F.relu(self.conv(f))
            objectness.append(self.objectness(x))
            deltas.append(self.deltas(x))
        return objectness, deltas

    def proposals(
        self, objectness: list[Tensor], deltas: list[Tensor], image_size: tuple[int, int], b: int, scale: float = 1.0
    ) -> tuple[Tensor, Tensor]:
        """Proposals (N, 4) and their scores for image `b` of the batch, best first.

        `image_size` is what proposals are clipped to; `scale` (resized / original) only matters
        to Detectron's filter of boxes narrower than one original pixel.
        """
        cfg = self.cfg
        boxes, scores, anchors, levels = [], [], [], []
        for lvl, (obj, dlt, stride) in enumerate(zip(objectness, deltas, cfg.strides)):
            s = obj[b].permute(1, 2, 0).reshape(-1).float().sigmoid()  # box math in float32
            d = dlt[b].permute(1, 2, 0).reshape(-1, 4).float()
            a = grid_anchors(self.base[lvl].to(d), stride, obj.shape[-2], obj.shape[-1])
            top = cfg.pre_nms_top_n if 0 < cfg.pre_nms_top_n < s.numel() else None
            if top is not None or self.detectron:  # Detectron sorts every level (ties: lower index first)
                s, order = s.sort(descending=True, stable=self.detectron)
                s, order = s[:top], order[:top]
                d, a = d[order], a[order]
            if self.detectron:  # Detectron: NMS per level, then the best over all levels
                box, s = self._detectron_level(a, d, s, image_size, scale)
                boxes.append(box)
            else:
                boxes.append(d)
                anchors.append(a)
            scores.append(s)
            levels.append(torch.full_like(s, lvl, dtype=torch.long))
        scores, levels = torch.cat(scores), torch.cat(levels)
        if self.detectron:
            boxes = torch.cat(boxes)
            keep = torch.sort(scores, descending=True, stable=True).indices[: cfg.post_nms_top_n]
            return boxes[keep], scores[keep]
        boxes = decode_boxes(torch.cat(anchors), torch.cat(boxes), cfg.box_stds, image_size)
        wh = boxes[:, 2:] - boxes[:, :2]
        valid = (wh > cfg.min_size).all(dim=1)
        if not valid.all():
            boxes, scores, levels = boxes[valid], scores[valid], levels[valid]
        keep = batched_nms(boxes, scores, levels, cfg.nms_iou)[: cfg.post_nms_top_n]
        return boxes[keep], scores[keep]

    def _detectron_level(self, anchors, deltas, scores, image_size, scale):
        """Detectron's GenerateProposals on one level: decode, clip, drop boxes under one original
        pixel or centred outside the image, NMS, keep post_nms_top_n."""
        cfg = self.cfg
        boxes = decode_boxes_detectron(anchors, deltas, cfg.box_stds, image_size)
        s32 = torch.tensor(scale, dtype=torch.float32)
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        least = max(cfg.min_size, 1.0)
        cx, cy = boxes[:, 0] + (w + 1) / 2.0, boxes[:, 1] + (h + 1) / 2.0
        ok = (w / s32 + 1 >= least) & (h / s32 + 1 >= least) & (cx < image_size[1]) & (cy < image_size[0])
        boxes, scores = boxes[ok], scores[ok]
        keep = nms_detectron(boxes, scores, cfg.nms_iou)[: cfg.post_nms_top_n]
        return boxes[keep], scores[keep]
