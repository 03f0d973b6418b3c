"""Box coding and NMS with mmdetection's semantics (xyxy boxes, widths x2 - x1)."""
from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import nms

# Largest |log| of the width/height change a delta may ask for (mmdetection's 16 / 1000).
MAX_LOG_SCALE = abs(math.log(16 / 1000))


def decode_boxes(
    boxes: Tensor, deltas: Tensor, stds: tuple[float, ...], max_shape: tuple[int, int] | None = None
) -> Tensor:
    """Applies (dx, dy, dw, dh) deltas, scaled by `stds`, to (N, 4) boxes; clips to (h, w)."""
    d = deltas * deltas.new_tensor(stds)
    pxy = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    pwh = boxes[:, 2:] - boxes[:, :2]
    gxy = pxy + pwh * d[:, :2]
    gwh = pwh * d[:, 2:].clamp(min=-MAX_LOG_SCALE, max=MAX_LOG_SCALE).exp()
    out = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=1)
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
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=boxes.device)
    boxes, scores = boxes.float(), scores.float()  # IoUs in float32, whatever the model's dtype
    offsets = groups.to(boxes) * (boxes.max() + torch.tensor(1).to(boxes))
    shifted = boxes + offsets[:, None]
    if len(boxes) < split:
        return nms(shifted, scores, iou)
    kept = torch.zeros_like(scores, dtype=torch.bool)
    for g in torch.unique(groups):
        idx = (groups == g).nonzero().view(-1)
        kept[idx[nms(shifted[idx], scores[idx], iou)]] = True
    keep = kept.nonzero().view(-1)
    return keep[scores[keep].sort(descending=True)[1]]
