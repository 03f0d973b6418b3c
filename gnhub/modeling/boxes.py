"""Box coding and NMS: mmdetection's (xyxy boxes, widths x2 - x1), Detectron's (widths + 1) and
detectron2's (widths x2 - x1, deltas divided by weights, torchvision's batched NMS)."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .ops import nms

__all__ = ["MAX_LOG_SCALE", "batched_nms", "batched_nms_torchvision", "clip_boxes", "decode_boxes",
    "decode_boxes_detectron", "decode_boxes_detectron2", "encode_boxes", "nms_detectron", "to_rois"]

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


def _apply_weighted_deltas(boxes: Tensor, deltas: Tensor, stds: tuple[float, ...], one: float):
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


def decode_boxes_detectron(
    boxes: Tensor, deltas: Tensor, stds: tuple[float, ...], max_shape: tuple[int, int]
) -> Tensor:
    """Detectron's bbox_transform and clip_tiled_boxes: widths x2 - x1 + 1, deltas divided by
    the weights 1 / stds, dw and dh clamped from above only, corners clipped to [0, size - 1]."""
    px, py, pw, ph = _apply_weighted_deltas(boxes, deltas, stds, 1.0)
    x1, y1 = px - 0.5 * pw, py - 0.5 * ph
    x2, y2 = px + 0.5 * pw - 1, py + 0.5 * ph - 1
    out = torch.stack([x1, y1, x2, y2], dim=1)
    out[:, 0::2].clamp_(min=0, max=max_shape[1] - 1)
    out[:, 1::2].clamp_(min=0, max=max_shape[0] - 1)
    return out


def nms_detectron(boxes: Tensor, scores: Tensor, iou: float) -> Tensor:
    """Detectron's greedy NMS: areas with + 1, a box is suppressed at IoU >= iou; kept indices by
    decreasing score (ties: lower index first). float32 throughout, as its Cython kernel."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    order = torch.sort(scores.float(), descending=True, stable=True).indices
    b = boxes.float()[order].cpu()
    area = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    w = (torch.minimum(b[:, None, 2], b[None, :, 2]) - torch.maximum(b[:, None, 0], b[None, :, 0]) + 1).clamp(min=0)
    h = (torch.minimum(b[:, None, 3], b[None, :, 3]) - torch.maximum(b[:, None, 1], b[None, :, 1]) + 1).clamp(min=0)
    inter = w * h
    over = (inter / (area[:, None] + area[None, :] - inter) >= iou).numpy()
    removed = np.zeros(len(b), dtype=bool)
    keep = []
    for i in range(len(b)):
        if not removed[i]:
            keep.append(i)
            removed |= over[i]
    return order[torch.tensor(keep, device=order.device)]


def decode_boxes_detectron2(boxes: Tensor, deltas: Tensor, stds: tuple[float, ...]) -> Tensor:
    """detectron2's Box2BoxTransform.apply_deltas: widths x2 - x1, centres x1 + w / 2, deltas
    divided by the weights 1 / stds, dw and dh clamped from above only; no clipping."""
    px, py, pw, ph = _apply_weighted_deltas(boxes.to(deltas.dtype), deltas, stds, 0.0)
    return torch.stack([px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw, py + 0.5 * ph], dim=1)


def clip_boxes(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """xyxy boxes clamped to [0, width] and [0, height] (detectron2's Boxes.clip); `size` (h, w)
    may be a tensor (an exported graph's input)."""
    if isinstance(size, Tensor):
        return torch.minimum(boxes.clamp(min=0), size.flip(0).repeat(2).to(boxes))
    h, w = size
    return torch.stack([boxes[:, 0].clamp(min=0, max=w), boxes[:, 1].clamp(min=0, max=h),
                        boxes[:, 2].clamp(min=0, max=w), boxes[:, 3].clamp(min=0, max=h)], dim=1)


def batched_nms_torchvision(boxes: Tensor, scores: Tensor, groups: Tensor, iou: float) -> Tensor:
    """torchvision.ops.batched_nms (what detectron2 calls), the same arithmetic: one NMS of boxes
    offset by group * (max coordinate + 1) up to 4000 coordinates on a CPU (100000 elsewhere),
    else one NMS per group without offsets, kept indices sorted by score."""
    boxes = boxes.float()
    if boxes.numel() > (4000 if boxes.device.type == "cpu" else 100_000) and not torch.jit.is_tracing():
        kept = torch.zeros_like(scores, dtype=torch.bool)
        for g in torch.unique(groups):
            idx = torch.where(groups == g)[0]
            kept[idx[nms(boxes[idx], scores[idx], iou)]] = True
        keep = torch.where(kept)[0]
        return keep[scores[keep].sort(descending=True)[1]]
    if boxes.numel() == 0 and not torch.jit.is_tracing():
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    top = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max() if torch.jit.is_tracing() else boxes.max()
    offsets = groups.to(boxes) * (top + torch.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, iou)


def to_rois(boxes: list[Tensor]) -> Tensor:
    """Per-image (N_i, 4) boxes -> (sum N_i, 5) RoIs with the batch index first."""
    return torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
