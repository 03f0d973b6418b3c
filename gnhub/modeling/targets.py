"""Training targets and losses shared by the RPN and the RoI heads, as mmdetection 3.3 computes
them: IoUs, MaxIoUAssigner, RandomSampler, and losses normalised by avg_factor (+ float32 eps);
and as detectron2 computes them for a cascade's RoI stages (and PaddleDetection for its RPN and RoI
heads): pairwise_iou, Matcher, subsample_labels, Box2BoxTransform.get_deltas."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["EPS", "assign", "bce_loss", "box_iou", "ce_loss", "d2_deltas", "d2_ious", "d2_label", "d2_match",
           "d2_sample", "l1_loss", "sample"]

EPS = torch.finfo(torch.float32).eps  # mmdetection's weight_reduce_loss: sum / (avg_factor + eps)


def box_iou(a: Tensor, b: Tensor, floor: float = 1e-6) -> Tensor:
    """(N, M) IoUs of xyxy boxes, with mmdetection's bbox_overlaps arithmetic (union >= `floor`)."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = torch.max(area_a[:, None] + area_b[None, :] - overlap, a.new_tensor([floor]))
    return overlap / union


def assign(boxes: Tensor, gt: Tensor, pos_iou: float, neg_iou: float, min_pos_iou: float) -> Tensor:
    """MaxIoUAssigner (match_low_quality, gt_max_assign_all): per box, 0 negative, -1 ignored,
    i + 1 matched to ground truth i."""
    out = torch.full((len(boxes),), -1, dtype=torch.long, device=boxes.device)
    if len(gt) == 0 or len(boxes) == 0:
        return out.fill_(0) if len(gt) == 0 else out
    overlaps = box_iou(gt, boxes)  # (K, N)
    best, best_gt = overlaps.max(dim=0)
    gt_best, _ = overlaps.max(dim=1)
    out[(best >= 0) & (best < neg_iou)] = 0
    pos = best >= pos_iou
    out[pos] = best_gt[pos] + 1
    for i in range(len(gt)):  # low-quality matches: every box that is a ground truth's best
        if gt_best[i] >= min_pos_iou:
            out[overlaps[i] == gt_best[i]] = i + 1
    return out


def sample(assigned: Tensor, num: int, pos_fraction: float, generator: torch.Generator | None):
    """RandomSampler: (positive, negative) indices, sorted; at most num * pos_fraction positives
    and num minus those negatives, chosen by `generator` where there are more."""
    pos = torch.nonzero(assigned > 0).squeeze(1)
    pos = _choose(pos, int(num * pos_fraction), generator).unique()
    neg = torch.nonzero(assigned == 0).squeeze(1)
    neg = _choose(neg, num - len(pos), generator).unique()
    return pos, neg


def _choose(idx: Tensor, n: int, generator) -> Tensor:
    if len(idx) <= n:
        return idx
    perm = torch.randperm(len(idx), generator=generator, device="cpu")[:n].to(idx.device)
    return idx[perm]


def bce_loss(logits: Tensor, targets: Tensor, weights: Tensor, avg_factor: float) -> Tensor:
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (loss * weights).sum() / (avg_factor + EPS)


def ce_loss(logits: Tensor, labels: Tensor, weights: Tensor, avg_factor: float) -> Tensor:
    loss = F.cross_entropy(logits, labels, reduction="none")
    return (loss * weights).sum() / (avg_factor + EPS)


def l1_loss(pred: Tensor, target: Tensor, weights: Tensor, avg_factor: float) -> Tensor:
    return ((pred - target).abs() * weights).sum() / (avg_factor + EPS)


def d2_ious(gt: Tensor, boxes: Tensor) -> Tensor:
    """(G, N) IoUs as detectron2's pairwise_iou (and PaddleDetection's bbox_overlaps) compute them."""
    area_gt = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    wh = (torch.min(gt[:, None, 2:], boxes[:, 2:]) - torch.max(gt[:, None, :2], boxes[:, :2])).clamp_(min=0)
    inter = wh.prod(dim=2)
    return torch.where(inter > 0, inter / (area_gt[:, None] + area - inter), inter.new_zeros(1))


def d2_match(boxes: Tensor, gt: Tensor, iou: float) -> tuple[Tensor, Tensor]:
    """detectron2's pairwise_iou and Matcher([iou], [0, 1], allow_low_quality_matches=False): per
    box the index of its best ground truth (0 without any) and whether that IoU is >= `iou`."""
    if len(gt) == 0 or len(boxes) == 0:
        zeros = torch.zeros(len(boxes), dtype=torch.long, device=boxes.device)
        return zeros, zeros.bool()
    best, matched = d2_ious(gt, boxes).max(dim=0)
    return matched, best >= iou


def d2_label(boxes: Tensor, gt: Tensor, neg_iou: float, pos_iou: float) -> tuple[Tensor, Tensor]:
    """The RPN's Matcher([neg_iou, pos_iou], [0, -1, 1], allow_low_quality_matches=True), as
    PaddleDetection's label_box computes it: per box its best ground truth (0 without any) and its
    label, 1 from `pos_iou` or where it is a ground truth's best (IoU > 0), 0 under `neg_iou`, else -1."""
    if len(gt) == 0 or len(boxes) == 0:
        zeros = torch.zeros(len(boxes), dtype=torch.long, device=boxes.device)
        return zeros, zeros.clone()
    ious = d2_ious(gt, boxes)
    best, matched = ious.max(dim=0)
    labels = torch.full_like(matched, -1)
    labels[best < neg_iou] = 0
    labels[best >= pos_iou] = 1
    labels[((ious > 0) & (ious == ious.max(dim=1, keepdim=True).values)).any(dim=0)] = 1
    return matched, labels


def d2_sample(labels: Tensor, num: int, pos_fraction: float, background: int, generator: torch.Generator | None):
    """subsample_labels: (foreground, background) indices, each in random order; at most
    num * pos_fraction foreground and num minus those background, drawn from `generator`."""
    fg = torch.nonzero((labels != -1) & (labels != background)).squeeze(1)
    bg = torch.nonzero(labels == background).squeeze(1)
    n_fg = min(len(fg), int(num * pos_fraction))
    n_bg = min(len(bg), num - n_fg)
    pick = [torch.randperm(len(x), generator=generator, device="cpu")[:n].to(x.device) for x, n in ((fg, n_fg),
                                                                                                    (bg, n_bg))]
    return fg[pick[0]], bg[pick[1]]


def d2_deltas(boxes: Tensor, targets: Tensor, stds: tuple[float, ...]) -> Tensor:
    """Box2BoxTransform.get_deltas with weights 1 / stds: widths x2 - x1, centres x1 + w / 2."""
    wx, wy, ww, wh = (1.0 / s for s in stds)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    tw, th = targets[:, 2] - targets[:, 0], targets[:, 3] - targets[:, 1]
    dx = wx * (targets[:, 0] + 0.5 * tw - (boxes[:, 0] + 0.5 * w)) / w
    dy = wy * (targets[:, 1] + 0.5 * th - (boxes[:, 1] + 0.5 * h)) / h
    return torch.stack([dx, dy, ww * torch.log(tw / w), wh * torch.log(th / h)], dim=1)
