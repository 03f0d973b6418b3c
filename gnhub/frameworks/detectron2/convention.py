"""detectron2's convention (modeling/anchor_generator.py, box_regression.py, proposal_utils.py,
poolers.py, roi_heads/fast_rcnn.py, postprocessing.py): widths x2 - x1, deltas divided by weights,
proposals ranked by their logits, torchvision's batched NMS, detector_postprocess."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ...modeling.anchors import grid_anchors
from ...modeling.boxes import apply_weighted_deltas, clip_boxes
from ...modeling.ops import nms
from ..base import Convention
from ..mmdet.convention import paste_masks
from . import arrays

__all__ = ["base_anchors", "batched_nms", "CONVENTION", "decode_boxes", "Detectron2Convention"]


def base_anchors(stride: int, ratios: tuple[float, ...], scales: tuple[float, ...]) -> Tensor:
    """DefaultAnchorGenerator: side `scale * stride` (its SIZES), for each ratio w = sqrt(side^2 / ratio),
    h = ratio * w in float64, centred on (0, 0), then float32; size-major."""
    rows = []
    for scale in scales:
        area = float(scale * stride) ** 2.0
        for ratio in ratios:
            w = math.sqrt(area / ratio)
            h = ratio * w
            rows.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(rows, dtype=torch.float32, device="cpu")


def decode_boxes(boxes: Tensor, deltas: Tensor, stds: tuple[float, ...]) -> Tensor:
    """Box2BoxTransform.apply_deltas: widths x2 - x1, centres x1 + w / 2, deltas divided by the
    weights 1 / stds, dw and dh clamped from above only; no clipping."""
    px, py, pw, ph = apply_weighted_deltas(boxes.to(deltas.dtype), deltas, stds, 0.0)
    return torch.stack([px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw, py + 0.5 * ph], dim=1)


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou: float) -> Tensor:
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


class Detectron2Convention(Convention):
    name = "detectron2"
    cascades = True
    rescale = staticmethod(arrays.rescale)

    def base_anchors(self, stride, ratios, scales):
        return base_anchors(stride, ratios, scales)

    def proposals(self, base, objectness, deltas, image_size, b, scale, cfg):
        """find_top_rpn_proposals: per level the pre_nms_top_n best logits (topk), all levels
        together clipped to the image, boxes under min_size dropped, NMS per level (torchvision's
        batched NMS), the post_nms_top_n best kept; the scores stay logits, as detectron2's."""
        boxes, scores, levels = [], [], []
        for lvl, (obj, dlt, stride) in enumerate(zip(objectness, deltas, cfg.strides)):
            s = obj[b].permute(1, 2, 0).reshape(1, -1).float()
            d = dlt[b].permute(1, 2, 0).reshape(-1, 4).float()
            a = grid_anchors(base[lvl].to(d), stride, obj.shape[-2], obj.shape[-1])
            top = cfg.pre_nms_top_n if cfg.pre_nms_top_n > 0 else s.shape[1]
            if torch.jit.is_tracing():  # an exported graph: any number of anchors
                s, order = s.sort(dim=1, descending=True)
                s, order = s[:, :top], order[:, :top]
            else:
                s, order = s.topk(min(s.shape[1], top), dim=1)
            boxes.append(decode_boxes(a[order[0]], d[order[0]], cfg.box_stds))
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
        keep = batched_nms(boxes, scores, levels, cfg.nms_iou)[: cfg.post_nms_top_n]
        return boxes[keep], scores[keep]

    def roi_levels(self, rois, finest_scale, num_levels):
        """assign_boxes_to_levels: floor(4 + log2(sqrt(area) / (4 * finest_scale) + 1e-8)) clamped
        to levels 2 to 1 + num_levels, minus 2."""
        scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        lvl = torch.floor(4 + torch.log2(scale / (4 * finest_scale) + 1e-8))
        return lvl.clamp(min=2, max=1 + num_levels).long() - 2

    def detect(self, proposals, deltas, scores, labels, n, k, image_size, cfg, factors=None):
        """fast_rcnn_inference_single_image: RoIs with a non-finite box or score left out, boxes
        clipped to the image, score > thresh, NMS per class (torchvision's batched NMS), the best
        detections_per_image."""
        boxes = decode_boxes(proposals, deltas, cfg.box_stds)
        finite = (torch.isfinite(boxes).view(n, 4 * k).all(dim=1) & torch.isfinite(scores).view(n, k).all(dim=1))
        boxes = clip_boxes(boxes, image_size)
        ok = scores > cfg.score_thresh
        if torch.jit.is_tracing() or not finite.all():
            ok = ok & finite.repeat_interleave(k)
        idx = ok.nonzero().squeeze(1)
        boxes, scores, labels = boxes[idx], scores[idx], labels[idx]
        keep = batched_nms(boxes, scores, labels, cfg.nms_iou)[: cfg.detections_per_image]
        return boxes[keep], scores[keep], labels[keep]

    def refine(self, boxes, deltas, stds, image_size):
        """CascadeROIHeads between stages: predict_boxes (Box2BoxTransform with the stage's
        weights), then _create_proposals_from_boxes (Boxes.clip; at test time no box is dropped)."""
        return clip_boxes(decode_boxes(boxes, deltas, stds), image_size)

    def postprocess(self, boxes, image_size, original_size):
        """detector_postprocess: boxes times original / resized size (Python floats, as it
        computes them), clipped to the original image; which of them are not empty."""
        out = boxes.float().clone()
        out[:, 0::2] *= original_size[1] / image_size[1]
        out[:, 1::2] *= original_size[0] / image_size[0]
        out = clip_boxes(out, original_size)
        return out, (out[:, 2] - out[:, 0] > 0) & (out[:, 3] - out[:, 1] > 0)

    def paste_masks(self, probs, boxes, height, width, threshold):
        """paste_masks_in_image samples as mmdetection's paste does."""
        return paste_masks(probs, boxes, height, width, threshold)


CONVENTION = Detectron2Convention()
