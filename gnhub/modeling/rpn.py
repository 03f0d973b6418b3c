"""Region proposal network: shared 3x3 conv, sigmoid objectness and deltas per anchor."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import RPNConfig
from .anchors import grid_anchors
from .bfloat16 import relu_
from .boxes import encode_boxes
from .conv import conv2d
from .targets import assign, bce_loss, d2_deltas, d2_label, d2_sample, l1_loss, sample

__all__ = ["RPN"]


def _valid(padded: tuple[int, int], stride: int, height: int, width: int, anchors: int, device) -> Tensor:
    """Which anchors of a (height, width) level lie in an image's own padded size (mmdetection's
    valid flags: the batch's extra padding holds no anchors of that image)."""
    h = min(math.ceil(padded[0] / stride), height)
    w = min(math.ceil(padded[1] / stride), width)
    grid = torch.zeros(height, width, dtype=torch.bool, device=device)
    grid[:h, :w] = True
    return grid.reshape(-1, 1).expand(-1, anchors).reshape(-1)


class RPN(nn.Module):
    """The head; anchors and proposal selection are the `convention`'s (gnhub/frameworks/)."""

    def __init__(self, channels: int, cfg: RPNConfig, convention):
        super().__init__()
        self.cfg = cfg
        self.convention = convention
        num_anchors = len(cfg.ratios) * len(cfg.scales)
        self.conv = conv2d(channels, channels, 3, padding=1)
        self.objectness = conv2d(channels, num_anchors, 1)
        self.deltas = conv2d(channels, num_anchors * 4, 1)
        self.base = [convention.base_anchors(s, cfg.ratios, cfg.scales) for s in cfg.strides]

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
        """Proposals (N, 4) and their scores for image `b` of the batch, best first, as the
        convention selects them (scores are objectness probabilities; detectron2's keeps its
        logits, as it does).

        `image_size` is what proposals are clipped to; `scale` (resized / original) only matters
        to Detectron's filter of boxes narrower than one original pixel. `cfg` replaces the
        test settings (training proposals).
        """
        return self.convention.proposals(self.base, objectness, deltas, image_size, b, scale, cfg or self.cfg)

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

    def detectron2_loss(self, objectness: list[Tensor], deltas: list[Tensor], gt_boxes: list[Tensor], train,
                        generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """detectron2's RPN loss as PaddleDetection's RPNHead.get_loss computes it: every anchor of
        the padded batch labelled (d2_label at train.rpn_neg_iou / rpn_pos_iou, low-quality matches
        from IoU > 0) and sampled (subsample_labels: train.rpn_batch_size_per_image, at most rpn_positive_fraction
        of them foreground), summed sigmoid cross-entropy and L1 of the deltas
        against the foreground's own ground truth, both divided by rpn_batch_size_per_image x images.
        Returns (classification, regression)."""
        anchors = torch.cat([grid_anchors(self.base[i].to(objectness[0].device, torch.float32), s, *o.shape[-2:])
                             for i, (s, o) in enumerate(zip(self.cfg.strides, objectness))])
        logits = torch.cat([o.float().permute(0, 2, 3, 1).reshape(len(gt_boxes), -1) for o in objectness], dim=1)
        pred = torch.cat([d.float().permute(0, 2, 3, 1).reshape(len(gt_boxes), -1, 4) for d in deltas], dim=1)
        cls_loss = box_loss = logits.sum() * 0.0
        for b, gt in enumerate(gt_boxes):
            matched, labels = d2_label(anchors, gt, train.rpn_neg_iou, train.rpn_pos_iou)
            fg, bg = d2_sample(labels, train.rpn_batch_size_per_image, train.rpn_positive_fraction, 0, generator)
            both = torch.cat([fg, bg])
            target = torch.cat([logits.new_ones(len(fg)), logits.new_zeros(len(bg))])
            cls_loss = cls_loss + F.binary_cross_entropy_with_logits(logits[b, both], target, reduction="sum")
            if len(fg):
                t = d2_deltas(anchors[fg], gt[matched[fg]], self.cfg.box_stds)
                box_loss = box_loss + (pred[b, fg] - t).abs().sum()
        norm = float(train.rpn_batch_size_per_image * len(gt_boxes))
        return cls_loss / norm, box_loss / norm
