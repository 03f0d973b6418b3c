"""Region proposal network: shared 3x3 conv, sigmoid objectness and deltas per anchor."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..config import RPNConfig
from .anchors import base_anchors, detectron2_base_anchors, detectron_base_anchors, grid_anchors
from .bfloat16 import relu_
from .boxes import (
    batched_nms,
    batched_nms_torchvision,
    clip_boxes,
    decode_boxes,
    decode_boxes_detectron,
    decode_boxes_detectron2,
    encode_boxes,
    nms_detectron,
)
from .conv import conv2d
from .targets import assign, bce_loss, l1_loss, sample

ANCHOR_GENERATORS = {"mmdet": base_anchors, "detectron": detectron_base_anchors,
                     "detectron2": detectron2_base_anchors}


def _valid(padded: tuple[int, int], stride: int, height: int, width: int, anchors: int, device) -> Tensor:
    """Which anchors of a (height, width) level lie in an image's own padded size (mmdetection's
    valid flags: the batch's extra padding holds no anchors of that image)."""
    h = min(math.ceil(padded[0] / stride), height)
    w = min(math.ceil(padded[1] / stride), width)
    grid = torch.zeros(height, width, dtype=torch.bool, device=device)
    grid[:h, :w] = True
    return grid.reshape(-1, 1).expand(-1, anchors).reshape(-1)


class RPN(nn.Module):
    def __init__(self, channels: int, cfg: RPNConfig, box_convention: str = "mmdet"):
        super().__init__()
        self.cfg = cfg
        self.detectron = box_convention == "detectron"
        self.detectron2 = box_convention == "detectron2"
        num_anchors = len(cfg.ratios) * len(cfg.scales)
        self.conv = conv2d(channels, channels, 3, padding=1)
        self.objectness = conv2d(channels, num_anchors, 1)
        self.deltas = conv2d(channels, num_anchors * 4, 1)
        make = ANCHOR_GENERATORS[cfg.anchor_generator]
        self.base = [make(s, cfg.ratios, cfg.scales) for s in cfg.strides]

    def head(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: objectness logits (B, A, H, W) and deltas (B, 4A, H, W)."""
        objectness, deltas = [], []
        for f in feats:
            x = relu_(self.conv(f))
            objectness.append(self.objectness(x))
            deltas.append(self.deltas(x))
        return objectness, deltas

    def proposals(
        self, objectness: list[Tensor], deltas: list[Tensor], image_size: tuple[int, int], b: int, scale: float = 1.0,
        cfg: RPNConfig | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Proposals (N, 4) and their scores for image `b` of the batch, best first (scores are
        objectness probabilities; detectron2's convention keeps its logits, as it does).

        `image_size` is what proposals are clipped to; `scale` (resized / original) only matters
        to Detectron's filter of boxes narrower than one original pixel. `cfg` replaces the
        test settings (training proposals).
        """
        cfg = cfg or self.cfg
        if self.detectron2:
            return self._detectron2(objectness, deltas, image_size, b, cfg)
        tracing = torch.jit.is_tracing()  # exported: every level sorted, the size filter always in the graph
        boxes, scores, anchors, levels = [], [], [], []
        for lvl, (obj, dlt, stride) in enumerate(zip(objectness, deltas, cfg.strides)):
            s = obj[b].permute(1, 2, 0).reshape(-1).float().sigmoid()  # box math in float32
            d = dlt[b].permute(1, 2, 0).reshape(-1, 4).float()
            a = grid_anchors(self.base[lvl].to(d), stride, obj.shape[-2], obj.shape[-1])
            top = cfg.pre_nms_top_n if 0 < cfg.pre_nms_top_n and (tracing or cfg.pre_nms_top_n < s.numel()) else None
            if top is not None or self.detectron:  # Detectron sorts every level (ties: lower index first)
                s, order = s.sort(descending=True, stable=True) if self.detectron else s.sort(descending=True)
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
        if tracing or not valid.all():
            boxes, scores, levels = boxes[valid], scores[valid], levels[valid]
        keep = batched_nms(boxes, scores, levels, cfg.nms_iou)[: cfg.post_nms_top_n]
        return boxes[keep], scores[keep]

    def loss(self, objectness: list[Tensor], deltas: list[Tensor], gt_boxes: list[Tensor], padded: list[tuple],
             train, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """mmdetection's RPN loss over the batch: the anchors inside each image's own padded size
        (`padded`, (h, w)) assigned (MaxIoUAssigner) and sampled (RandomSampler), sigmoid
        cross-entropy and L1 on the deltas, both divided by the number of samples. Returns
        (classification, regression), each summed over the levels."""
        sizes = [o.shape[-2:] for o in objectness]
        device = objectness[0].device
        anchors = torch.cat([grid_anchors(self.base[i].to(device, torch.float32), s, h, w)
                             for i, (s, (h, w)) in enumerate(zip(self.cfg.strides, sizes))])
        labels, weights, targets, box_weights, avg_factor = [], [], [], [], 0
        for gt, pad in zip(gt_boxes, padded):
            valid = torch.cat([_valid(pad, s, h, w, self.base[i].shape[0], device)
                               for i, (s, (h, w)) in enumerate(zip(self.cfg.strides, sizes))])
            inside = torch.nonzero(valid).squeeze(1)
            assigned = torch.full((len(anchors),), -1, dtype=torch.long, device=device)
            assigned[inside] = assign(anchors[inside], gt, train.rpn_pos_iou, train.rpn_neg_iou,
                                      train.rpn_min_pos_iou)
            pos, neg = sample(assigned, train.rpn_batch_size_per_image, train.rpn_positive_fraction, generator)
            lab = anchors.new_zeros(len(anchors))
            lab[pos] = 1.0
            w = anchors.new_zeros(len(anchors))
            w[pos] = w[neg] = 1.0
            t = anchors.new_zeros(len(anchors), 4)
            bw = anchors.new_zeros(len(anchors), 4)
            if len(pos):
                t[pos] = encode_boxes(anchors[pos], gt[assigned[pos] - 1], self.cfg.box_stds)
                bw[pos] = 1.0
            labels.append(lab)
            weights.append(w)
            targets.append(t)
            box_weights.append(bw)
            avg_factor += len(pos) + len(neg)
        cls_loss = box_loss = 0.0
        start = 0
        for obj, dlt in zip(objectness, deltas):  # per level, as mmdetection sums its list of levels
            n = obj.shape[1] * obj.shape[2] * obj.shape[3]
            lvl = slice(start, start + n)
            start += n
            logits = obj.float().permute(0, 2, 3, 1).reshape(len(gt_boxes), -1)
            pred = dlt.float().permute(0, 2, 3, 1).reshape(len(gt_boxes), -1, 4)
            cls_loss = cls_loss + bce_loss(logits.reshape(-1), torch.cat([x[lvl] for x in labels]),
                                           torch.cat([x[lvl] for x in weights]), avg_factor)
            box_loss = box_loss + l1_loss(pred.reshape(-1, 4), torch.cat([x[lvl] for x in targets]),
                                          torch.cat([x[lvl] for x in box_weights]), avg_factor)
        return cls_loss, box_loss

    def _detectron2(self, objectness, deltas, image_size, b, cfg) -> tuple[Tensor, Tensor]:
        """detectron2's find_top_rpn_proposals: per level the pre_nms_top_n best logits (topk),
        all levels together clipped to the image, boxes under min_size dropped, NMS per level
        (torchvision's batched NMS), the post_nms_top_n best kept."""
        boxes, scores, levels = [], [], []
        for lvl, (obj, dlt, stride) in enumerate(zip(objectness, deltas, cfg.strides)):
            s = obj[b].permute(1, 2, 0).reshape(1, -1).float()
            d = dlt[b].permute(1, 2, 0).reshape(-1, 4).float()
            a = grid_anchors(self.base[lvl].to(d), stride, obj.shape[-2], obj.shape[-1])
            top = cfg.pre_nms_top_n if cfg.pre_nms_top_n > 0 else s.shape[1]
            if torch.jit.is_tracing():  # an exported graph: any number of anchors
                s, order = s.sort(dim=1, descending=True)
                s, order = s[:, :top], order[:, :top]
            else:
                s, order = s.topk(min(s.shape[1], top), dim=1)
            boxes.append(decode_boxes_detectron2(a[order[0]], d[order[0]], cfg.box_stds))
            scores.append(s[0])
            levels.append(torch.full_like(s[0], lvl, dtype=torch.long))
        boxes, scores, levels = torch.cat(boxes), torch.cat(scores), torch.cat(levels)
        tracing = torch.jit.is_tracing()
        finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        if tracing or not finite.all():
            boxes, scores, levels = boxes[finite], scores[finite], levels[finite]
        boxes = clip_boxes(boxes, image_size)
        wh = boxes[:, 2:] - boxes[:, :2]
        keep = (wh > cfg.min_size).all(dim=1)
        if tracing or not keep.all():
            boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = batched_nms_torchvision(boxes, scores, levels, cfg.nms_iou)[: cfg.post_nms_top_n]
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
