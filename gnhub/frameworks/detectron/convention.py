"""Detectron's convention (core/test.py, utils/boxes.py, ops/generate_proposals.py,
modeling/FPN.py): widths x2 - x1 + 1 everywhere, rounded anchors, proposals per level clipped to
the padded batch, detection in original pixels, cv2 mask pasting."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ...modeling.anchors import grid_anchors
from ...modeling.boxes import apply_weighted_deltas
from ..base import Convention
from . import arrays

__all__ = ["base_anchors", "CONVENTION", "decode_boxes", "DetectronConvention", "nms", "paste_masks"]


def base_anchors(stride: int, ratios: tuple[float, ...], scales: tuple[float, ...]) -> Tensor:
    """Detectron: the (0, 0, stride - 1, stride - 1) cell reshaped per ratio with rounded sides,
    then scaled; corners inclusive (width x2 - x1 + 1), computed in float64 as Detectron does."""
    size = float(stride * stride)
    ctr = 0.5 * (stride - 1)
    rows = []
    for ratio in ratios:
        w = torch.tensor(size / ratio, dtype=torch.float64, device="cpu").sqrt().round()
        h = (w * ratio).round()
        for scale in scales:
            sw, sh = w * scale, h * scale
            half_w, half_h = 0.5 * (sw - 1), 0.5 * (sh - 1)
            rows.append(torch.stack([ctr - half_w, ctr - half_h, ctr + half_w, ctr + half_h]))
    return torch.stack(rows).float()  # on the CPU even under a meta device context


def decode_boxes(boxes: Tensor, deltas: Tensor, stds: tuple[float, ...], max_shape: tuple[int, int]) -> Tensor:
    """Detectron's bbox_transform and clip_tiled_boxes: widths x2 - x1 + 1, deltas divided by
    the weights 1 / stds, dw and dh clamped from above only, corners clipped to [0, size - 1]."""
    px, py, pw, ph = apply_weighted_deltas(boxes, deltas, stds, 1.0)
    x1, y1 = px - 0.5 * pw, py - 0.5 * ph
    x2, y2 = px + 0.5 * pw - 1, py + 0.5 * ph - 1
    out = torch.stack([x1, y1, x2, y2], dim=1)
    out[:, 0::2].clamp_(min=0, max=max_shape[1] - 1)
    out[:, 1::2].clamp_(min=0, max=max_shape[0] - 1)
    return out


def nms(boxes: Tensor, scores: Tensor, iou: float) -> Tensor:
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


def paste_masks(probs: Tensor, boxes: Tensor, height: int, width: int, threshold: float) -> Tensor:
    """Detectron's segm_results: the M x M mask zero-padded to M + 2, its box widened by
    (M + 2) / M and cut to whole pixels, cv2.resize to the box (corners inclusive), > threshold."""
    # OpenCV (slow to import) only for Detectron's mask paste
    import cv2

    out = torch.zeros(len(probs), height, width, dtype=torch.bool)
    if not len(probs):
        return out.to(probs.device)
    m = probs.shape[-1]
    b = boxes.float().cpu()
    half_w = (b[:, 2] - b[:, 0]) * 0.5 * ((m + 2.0) / m)
    half_h = (b[:, 3] - b[:, 1]) * 0.5 * ((m + 2.0) / m)
    cx, cy = (b[:, 2] + b[:, 0]) * 0.5, (b[:, 3] + b[:, 1]) * 0.5
    ref = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], 1).double().numpy().astype(np.int32)
    padded = np.zeros((m + 2, m + 2), dtype=np.float32)
    for i, (prob, (x0, y0, x1, y1)) in enumerate(zip(probs.float().cpu().numpy(), ref.tolist())):
        padded[1:-1, 1:-1] = prob
        w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        mask = cv2.resize(padded, (w, h)) > threshold
        xa, xb, ya, yb = max(x0, 0), min(x1 + 1, width), max(y0, 0), min(y1 + 1, height)
        if xa < xb and ya < yb:
            out[i, ya:yb, xa:xb] = torch.from_numpy(mask[ya - y0 : yb - y0, xa - x0 : xb - x0])
    return out.to(probs.device)


def _scale(boxes: Tensor, factors) -> Tensor:
    """(w, h) scale factors as a divisor for xyxy boxes, in the boxes' dtype."""
    return boxes.new_tensor(factors).repeat(2)


class DetectronConvention(Convention):
    name = "detectron"
    width_offset = 1.0
    rescale = staticmethod(arrays.rescale)

    def untrainable(self, config):
        """gnhub's training is mmdetection's (and detectron2's), widths x2 - x1."""
        return ("gnhub trains with mmdetection's losses (a cascade's RoI stages with detectron2's); this model has "
                "Detectron's conventions (convention in config.json), whose training gnhub does not have: convert "
                "an mmdetection or detectron2 checkpoint")

    def base_anchors(self, stride, ratios, scales):
        return base_anchors(stride, ratios, scales)

    def clip_size(self, image_size, padded):
        """The padded batch (Detectron's im_info)."""
        return padded

    def proposals(self, base, objectness, deltas, image_size, b, scale, cfg):
        """Per level the pre_nms_top_n best (stable sort), decoded, clipped, boxes under one
        original pixel or centred outside the image dropped, NMS, post_nms_top_n kept; then the
        best post_nms_top_n of all levels."""
        boxes, scores = [], []
        for lvl, (obj, dlt, stride) in enumerate(zip(objectness, deltas, cfg.strides)):
            s = obj[b].permute(1, 2, 0).reshape(-1).float().sigmoid()  # box math in float32
            d = dlt[b].permute(1, 2, 0).reshape(-1, 4).float()
            a = grid_anchors(base[lvl].to(d), stride, obj.shape[-2], obj.shape[-1])
            top = cfg.pre_nms_top_n if 0 < cfg.pre_nms_top_n < s.numel() else None
            s, order = s.sort(descending=True, stable=True)  # every level sorted (ties: lower index first)
            s, order = s[:top], order[:top]
            box, s = self._level(a[order], d[order], s, image_size, scale, cfg)
            boxes.append(box)
            scores.append(s)
        boxes, scores = torch.cat(boxes), torch.cat(scores)
        keep = torch.sort(scores, descending=True, stable=True).indices[: cfg.post_nms_top_n]
        return boxes[keep], scores[keep]

    @staticmethod
    def _level(anchors, deltas, scores, image_size, scale, cfg):
        """GenerateProposals on one level."""
        boxes = decode_boxes(anchors, deltas, cfg.box_stds, image_size)
        s32 = torch.tensor(scale, dtype=torch.float32)
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        least = max(cfg.min_size, 1.0)
        cx, cy = boxes[:, 0] + (w + 1) / 2.0, boxes[:, 1] + (h + 1) / 2.0
        ok = (w / s32 + 1 >= least) & (h / s32 + 1 >= least) & (cx < image_size[1]) & (cy < image_size[0])
        boxes, scores = boxes[ok], scores[ok]
        keep = nms(boxes, scores, cfg.nms_iou)[: cfg.post_nms_top_n]
        return boxes[keep], scores[keep]

    def roi_levels(self, rois, finest_scale, num_levels):
        """floor(4 + log2(sqrt(area) / (4 * finest_scale) + 1e-6)) - 2, areas with + 1 (a negative
        area, where Detectron would assert, counts as 0), clamped."""
        scale = torch.sqrt(((rois[:, 3] - rois[:, 1] + 1) * (rois[:, 4] - rois[:, 2] + 1)).clamp(min=0))
        lvl = torch.floor(4 + torch.log2(scale / (4 * finest_scale) + 1e-6)) - 2
        return lvl.clamp(min=0, max=num_levels - 1).long()

    def detection_frame(self, proposals, image_size, original_size, factors):
        """Original pixels: the proposals divided by the image scale."""
        return proposals / _scale(proposals, factors), original_size

    def detect(self, proposals, deltas, scores, labels, n, k, image_size, cfg, factors=None):
        """box_results_with_nms_and_limit: per class score > thresh and NMS, then all detections
        scoring at least the detections_per_image-th best (ties may keep more)."""
        boxes = decode_boxes(proposals, deltas, cfg.box_stds, image_size)
        idx = (scores > cfg.score_thresh).nonzero().squeeze(1)
        boxes, scores, labels = boxes[idx], scores[idx], labels[idx]
        keep = [i[nms(boxes[i], scores[i], cfg.nms_iou)]
                for i in (torch.nonzero(labels == c).squeeze(1) for c in torch.unique(labels))]
        keep = torch.cat(keep) if keep else labels.new_zeros(0)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        limit = cfg.detections_per_image
        if 0 < limit < len(scores):
            ok = scores >= torch.sort(scores).values[-limit]
            boxes, scores, labels = boxes[ok], scores[ok], labels[ok]
        order = torch.sort(scores, descending=True, stable=True).indices
        return boxes[order], scores[order], labels[order]

    def mask_rois(self, boxes, factors):
        """Original-pixel boxes into the network's pixels, in float64 as Detectron's _get_rois_blob."""
        return (boxes.double() * boxes.new_tensor(factors, dtype=torch.float64).repeat(2)).to(boxes.dtype)

    def paste_masks(self, probs, boxes, height, width, threshold):
        return paste_masks(probs, boxes, height, width, threshold)


CONVENTION = DetectronConvention()
