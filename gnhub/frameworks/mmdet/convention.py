"""mmdetection 3.3's convention: widths x2 - x1, unrounded anchors centred on 0, mmcv's batched
NMS, boxes divided by the scale factor, grid_sample mask pasting (the model's defaults)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ...modeling.anchors import grid_anchors
from ...modeling.boxes import batched_nms, decode_boxes
from ..base import Convention
from . import arrays

__all__ = ["base_anchors", "CONVENTION", "MMDetConvention", "paste_masks"]


def base_anchors(stride: int, ratios: tuple[float, ...], scales: tuple[float, ...]) -> Tensor:
    """mmdetection: (len(ratios) * len(scales), 4) anchors centred on (0, 0), unrounded,
    ratio-major, ratio = height / width."""
    r = torch.tensor(ratios, dtype=torch.float32, device="cpu")
    s = torch.tensor(scales, dtype=torch.float32, device="cpu")
    h_ratios = torch.sqrt(r)
    w_ratios = 1 / h_ratios
    ws = (stride * w_ratios[:, None] * s[None, :]).view(-1)
    hs = (stride * h_ratios[:, None] * s[None, :]).view(-1)
    return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=-1)


def paste_masks(probs: Tensor, boxes: Tensor, height: int, width: int, threshold: float) -> Tensor:
    """(D, M, M) probabilities into their (D, 4) boxes -> (D, height, width) bool masks.

    Each mask is bilinearly resampled at pixel centres inside its box (zeros outside the
    M x M grid), as mmdetection does; only the box plus one pixel is computed.
    """
    out = torch.zeros(len(probs), height, width, dtype=torch.bool, device=probs.device)
    boxes = boxes.float()
    for i, (mask, box, (x0, y0, x1, y1)) in enumerate(zip(probs.float(), boxes, boxes.tolist())):  # one sync
        xa, ya = max(math.floor(x0) - 1, 0), max(math.floor(y0) - 1, 0)
        xb, yb = min(math.ceil(x1) + 1, width), min(math.ceil(y1) + 1, height)
        if xa >= xb or ya >= yb:
            continue
        gx = _grid(xa, xb, box[0], box[2])
        gy = _grid(ya, yb, box[1], box[3])
        grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), dim=-1)
        img = F.grid_sample(mask[None, None], grid[None], align_corners=False)[0, 0]
        out[i, ya:yb, xa:xb] = img >= threshold
    return out


def _grid(start: int, stop: int, lo: Tensor, hi: Tensor) -> Tensor:
    """Pixel centres start..stop-1 in the box's [-1, 1] coordinates (0 for an empty box). The
    box's ends stay 0-d tensors on its device: no copy from the host, no sync per detection."""
    t = torch.arange(start, stop, device=lo.device).to(torch.float32) + 0.5
    t = (t - lo) / (hi - lo) * 2 - 1
    return torch.where(torch.isinf(t), torch.zeros_like(t), t)


def _reciprocal(factors, like: Tensor) -> Tensor:
    """(1 / w, 1 / h, 1 / w, 1 / h) as mmdetection makes it: Python floats' reciprocals in float32
    (the exported graph's float32 factors: their reciprocals)."""
    if isinstance(factors, Tensor):
        return (1 / factors.to(like)).repeat(2)
    return torch.tensor([1 / factors[0], 1 / factors[1]], dtype=like.dtype, device=like.device).repeat(2)


class MMDetConvention(Convention):
    name = "mmdet"
    rescale = staticmethod(arrays.rescale)

    def base_anchors(self, stride, ratios, scales):
        return base_anchors(stride, ratios, scales)

    def proposals(self, base, objectness, deltas, image_size, b, scale, cfg):
        """Per level the pre_nms_top_n best sigmoid scores; all decoded and clipped to the image,
        boxes not wider and higher than min_size dropped, NMS within each level (mmcv's batched
        NMS), the first post_nms_top_n kept."""
        tracing = torch.jit.is_tracing()  # exported: every level sorted, the size filter always in the graph
        boxes, scores, anchors, levels = [], [], [], []
        for lvl, (obj, dlt, stride) in enumerate(zip(objectness, deltas, cfg.strides)):
            s = obj[b].permute(1, 2, 0).reshape(-1).float().sigmoid()  # box math in float32
            d = dlt[b].permute(1, 2, 0).reshape(-1, 4).float()
            a = grid_anchors(base[lvl].to(d), stride, obj.shape[-2], obj.shape[-1])
            top = cfg.pre_nms_top_n if 0 < cfg.pre_nms_top_n and (tracing or cfg.pre_nms_top_n < s.numel()) else None
            if top is not None:
                s, order = s.sort(descending=True)
                s, order = s[:top], order[:top]
                d, a = d[order], a[order]
            boxes.append(d)
            anchors.append(a)
            scores.append(s)
            levels.append(torch.full_like(s, lvl, dtype=torch.long))
        scores, levels = torch.cat(scores), torch.cat(levels)
        boxes = decode_boxes(torch.cat(anchors), torch.cat(boxes), cfg.box_stds, image_size)
        wh = boxes[:, 2:] - boxes[:, :2]
        valid = (wh > cfg.min_size).all(dim=1)
        if tracing or not valid.all():
            boxes, scores, levels = boxes[valid], scores[valid], levels[valid]
        keep = batched_nms(boxes, scores, levels, cfg.nms_iou)[: cfg.post_nms_top_n]
        return boxes[keep], scores[keep]

    def roi_levels(self, rois, finest_scale, num_levels):
        """floor(log2(sqrt(area) / finest_scale + 1e-6)), clamped."""
        scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        lvl = torch.floor(torch.log2(scale / finest_scale + 1e-6))
        return lvl.clamp(min=0, max=num_levels - 1).long()

    rescales_box_only = True  # StandardRoIHead: bbox_rescale = rescale if not self.with_mask else False

    def detect(self, proposals, deltas, scores, labels, n, k, image_size, cfg, factors=None):
        """Decoded and clipped, (with `factors`) times 1 / factor into original pixels as
        BBoxHead's scale_boxes does, score > score_thresh, NMS per class (mmcv's batched NMS), the
        best detections_per_image."""
        boxes = decode_boxes(proposals, deltas, cfg.box_stds, image_size)
        if factors is not None:
            boxes = boxes * _reciprocal(factors, boxes)
        idx = (scores > cfg.score_thresh).nonzero().squeeze(1)
        boxes, scores, labels = boxes[idx], scores[idx], labels[idx]
        keep = batched_nms(boxes, scores, labels, cfg.nms_iou)[: cfg.detections_per_image]
        return boxes[keep], scores[keep], labels[keep]

    def to_original(self, boxes, factors):
        """Divided by the (w, h) scale factors (Python floats, or the graph's float32 input)."""
        return boxes / torch.as_tensor(factors, dtype=boxes.dtype, device=boxes.device).repeat(2)

    def paste_masks(self, probs, boxes, height, width, threshold):
        return paste_masks(probs, boxes, height, width, threshold)


CONVENTION = MMDetConvention()
