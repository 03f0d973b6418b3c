"""Box coding and NMS every convention builds on: mmdetection's coder and batched NMS (xyxy boxes,
widths x2 - x1; training's too), the weighted deltas of Detectron and detectron2, clipping, RoIs.
Each framework's own coder and NMS are in gnhub/frameworks/."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .ops import nms

__all__ = ["batched_nms", "clip_boxes", "decode_boxes", "encode_boxes", "MAX_LOG_SCALE", "to_rois"]

# Largest |log| of the width/height change a delta may ask for (mmdetection's 16 / 1000).
MAX_LOG_SCALE = abs(math.log(16 / 1000))


def decode_boxes(
    boxes: Tensor, deltas: Tensor, stds: tuple[float, ...], max_shape: tuple[int, int] | None = None
) -> Tensor:
    """Applies (dx, dy, dw, dh) deltas, scaled by `stds`, to (N, 4) boxes; clips to (h, w)
    (a tensor in an exported graph, where the image size is an input)."""
    d = deltas * deltas.new_tensor(stds)
    pxy = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    pwh = boxes[:, 2:] - boxes[:, :2]
    gxy = pxy + pwh * d[:, :2]
    gwh = pwh * d[:, 2:].clamp(min=-MAX_LOG_SCALE, max=MAX_LOG_SCALE).exp()
    out = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=1)
    if isinstance(max_shape, Tensor):
        return torch.minimum(out.clamp(min=0), max_shape.flip(0).repeat(2).to(out))
    if max_shape is not None:
        out[:, 0::2].clamp_(min=0, max=max_shape[1])
        out[:, 1::2].clamp_(min=0, max=max_shape[0])
    return out


def encode_boxes(boxes: Tensor, targets: Tensor, stds: tuple[float, ...]) -> Tensor:
    """The inverse of `decode_boxes` (without clipping)."""
    pxy = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    pwh = boxes[:, 2:] - boxes[:, :2]
    gxy = (targets[:, :2] + targets[:, 2:]) * 0.5
    gwh = targets[:, 2:] - targets[:, :2]
    d = torch.cat([(gxy - pxy) / pwh, torch.log(gwh / pwh)], dim=1)
    return d / d.new_tensor(stds)


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou: float, split: int = 10000) -> Tensor:
    """NMS within each group; indices of kept boxes by decreasing score.

    Groups are separated by offsetting boxes by group * (max coordinate + 1), as mmcv does,
    one NMS call below `split` boxes and one per group above it (the offsets stay: they move
    IoUs by float rounding, and matching mmdetection means matching that too).
    """
    tracing = torch.jit.is_tracing()  # an exported graph: one NMS, for any number of boxes
    if boxes.numel() == 0 and not tracing:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    boxes, scores = boxes.float(), scores.float()  # IoUs in float32, whatever the model's dtype
    top = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max() if tracing else boxes.max()  # clipped: >= 0
    offsets = groups.to(boxes) * (top + torch.tensor(1).to(boxes))
    shifted = boxes + offsets[:, None]
    if tracing or len(boxes) < split:
        return nms(shifted, scores, iou)
    kept = torch.zeros_like(scores, dtype=torch.bool)
    for g in torch.unique(groups):
        idx = (groups == g).nonzero().view(-1)
        kept[idx[nms(shifted[idx], scores[idx], iou)]] = True
    keep = kept.nonzero().view(-1)
    return keep[scores[keep].sort(descending=True)[1]]


def apply_weighted_deltas(boxes: Tensor, deltas: Tensor, stds: tuple[float, ...], one: float):
    """Detectron's and detectron2's decoding: widths x2 - x1 + `one`, centres x1 + w / 2, deltas
    divided by the weights 1 / stds, dw and dh clamped from above only: (cx, cy, w, h)."""
    w = boxes[:, 2] - boxes[:, 0] + one
    h = boxes[:, 3] - boxes[:, 1] + one
    cx, cy = boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h
    wx, wy, ww, wh = (1.0 / s for s in stds)
    dw = (deltas[:, 2] / ww).clamp(max=MAX_LOG_SCALE)
    dh = (deltas[:, 3] / wh).clamp(max=MAX_LOG_SCALE)
    px, py = deltas[:, 0] / wx * w + cx, deltas[:, 1] / wy * h + cy
    return px, py, torch.exp(dw) * w, torch.exp(dh) * h


def clip_boxes(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """xyxy boxes clamped to [0, width] and [0, height] (detectron2's Boxes.clip); `size` (h, w)
    may be a tensor (an exported graph's input)."""
    if isinstance(size, Tensor):
        return torch.minimum(boxes.clamp(min=0), size.flip(0).repeat(2).to(boxes))
    h, w = size
    return torch.stack([boxes[:, 0].clamp(min=0, max=w), boxes[:, 1].clamp(min=0, max=h),
                        boxes[:, 2].clamp(min=0, max=w), boxes[:, 3].clamp(min=0, max=h)], dim=1)


def to_rois(boxes: list[Tensor]) -> Tensor:
    """Per-image (N_i, 4) boxes -> (sum N_i, 5) RoIs with the batch index first."""
    return torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
