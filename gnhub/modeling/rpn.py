"""Region proposal network: shared 3x3 conv, sigmoid objectness and deltas per anchor."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import RPNConfig
from .anchors import base_anchors, grid_anchors
from .boxes import batched_nms, decode_boxes


class RPN(nn.Module):
    def __init__(self, channels: int, cfg: RPNConfig):
        super().__init__()
        self.cfg = cfg
        num_anchors = len(cfg.ratios) * len(cfg.scales)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.objectness = nn.Conv2d(channels, num_anchors, 1)
        self.deltas = nn.Conv2d(channels, num_anchors * 4, 1)
        self.base = [base_anchors(s, cfg.ratios, cfg.scales) for s in cfg.strides]

    def head(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: objectness logits (B, A, H, W) and deltas (B, 4A, H, W)."""
        objectness, deltas = [], []
        for f in feats:
            x = F.relu(self.conv(f))
            objectness.append(self.objectness(x))
            deltas.append(self.deltas(x))
        return objectness, deltas

    def proposals(
        self, objectness: list[Tensor], deltas: list[Tensor], image_size: tuple[int, int], b: int
    ) -> tuple[Tensor, Tensor]:
        """Proposals (N, 4) and their scores for image `b` of the batch, best first."""
        cfg = self.cfg
        boxes, scores, anchors, levels = [], [], [], []
        for lvl, (obj, dlt, stride) in enumerate(zip(objectness, deltas, cfg.strides)):
            s = obj[b].permute(1, 2, 0).reshape(-1).float().sigmoid()  # box math in float32
            d = dlt[b].permute(1, 2, 0).reshape(-1, 4).float()
            a = grid_anchors(self.base[lvl].to(d), stride, obj.shape[-2], obj.shape[-1])
            if 0 < cfg.pre_nms_top_n < s.numel():
                s, order = s.sort(descending=True)
                s, order = s[: cfg.pre_nms_top_n], order[: cfg.pre_nms_top_n]
                d, a = d[order], a[order]
            scores.append(s)
            boxes.append(d)
            anchors.append(a)
            levels.append(torch.full_like(s, lvl, dtype=torch.long))
        scores, levels = torch.cat(scores), torch.cat(levels)
        boxes = decode_boxes(torch.cat(anchors), torch.cat(boxes), cfg.box_stds, image_size)
        wh = boxes[:, 2:] - boxes[:, :2]
        valid = (wh > cfg.min_size).all(dim=1)
        if not valid.all():
            boxes, scores, levels = boxes[valid], scores[valid], levels[valid]
        keep = batched_nms(boxes, scores, levels, cfg.nms_iou)[: cfg.post_nms_top_n]
        return boxes[keep], scores[keep]
