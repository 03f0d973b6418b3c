"""PaddleDetection's convention (ppdet/modeling/proposal_generator/anchor_generator.py, rpn_head.py,
heads/roi_extractor.py, layers.py RCNNBox and MultiClassNMS, post_process.py; paddle's CPU kernels
generate_proposals, distribute_fpn_proposals and multiclass_nms3): detectron2's anchors and box
decoding (widths x2 - x1, dw and dh clamped to log(1000 / 16)), proposals under one pixel dropped,
its FPN level mapping, boxes divided by the scale factor, mmdetection's grid_sample mask paste."""
from __future__ import annotations

import torch

from ...modeling.anchors import grid_anchors
from ...modeling.boxes import clip_boxes
from ...modeling.ops import nms
from ..detectron2.convention import Detectron2Convention, decode_boxes
from . import arrays

__all__ = ["CONVENTION", "PaddleConvention"]


class PaddleConvention(Detectron2Convention):
    """Where PaddleDetection computes as detectron2 does (anchors, decoding, detection: per-class NMS
    on clipped boxes with score > threshold, the best detections_per_image; mask paste), the
    detectron2 convention's code; the rest its own."""

    name = "paddle"
    detectron2_losses = True  # RPNHead.get_loss, BBoxAssigner and BBoxHead.get_loss (docs/training.md)
    stage_loss_weights = True  # CascadeHead: each stage's losses x 1 / 3
    rescale = staticmethod(arrays.rescale)

    def untrainable(self, config):
        """A mask head (generate_mask_target: each RoI's target rasterised from the ground truth's
        polygons inside it) trains in a way gnhub has not built; a Faster R-CNN and a cascade train."""
        if config.task != "object-detection":
            return ("gnhub trains PaddleDetection's Faster R-CNN and cascade as PaddleDetection does "
                    "(docs/training.md) but not its mask head (mask targets rasterised from polygons inside each "
                    "RoI): this model has PaddleDetection's conventions (convention in config.json), whose mask "
                    "training gnhub does not have; fine-tune faster_rcnn_r50_fpn_gn_2x_coco or "
                    "cascade_rcnn_r50_fpn_gn_2x_coco, or an mmdetection or detectron2 checkpoint")
        return None

    def proposals(self, base, objectness, deltas, image_size, b, scale, cfg):
        """generate_proposals (pixel_offset False) per level on the objectness logits: the
        pre_nms_top_n best, decoded, clipped to the image, boxes under max(min_size, 1) pixel wide
        or high dropped, NMS, at most post_nms_top_n kept; then over all levels the post_nms_top_n
        best logits (best first)."""
        boxes, scores = [], []
        for lvl, (obj, dlt, stride) in enumerate(zip(objectness, deltas, cfg.strides)):
            s = obj[b].permute(1, 2, 0).reshape(-1).float()
            d = dlt[b].permute(1, 2, 0).reshape(-1, 4).float()
            a = grid_anchors(base[lvl].to(d), stride, obj.shape[-2], obj.shape[-1])
            top = cfg.pre_nms_top_n if cfg.pre_nms_top_n > 0 else len(s)
            if torch.jit.is_tracing():  # an exported graph: any number of anchors
                s, order = s.sort(descending=True)
                s, order = s[:top], order[:top]
            else:
                s, order = s.topk(min(len(s), top))
            box = clip_boxes(decode_boxes(a[order], d[order], cfg.box_stds), image_size)
            side = max(cfg.min_size, 1.0)
            keep = ((box[:, 2] - box[:, 0]) >= side) & ((box[:, 3] - box[:, 1]) >= side)
            box, s = box[keep], s[keep]
            keep = nms(box, s, cfg.nms_iou)[: cfg.post_nms_top_n]
            boxes.append(box[keep])
            scores.append(s[keep])
        boxes, scores = torch.cat(boxes), torch.cat(scores)
        if torch.jit.is_tracing():  # ONNX TopK puts equal scores in index order, as stable=True does
            best = scores.sort(descending=True)[1][: cfg.post_nms_top_n]
        else:
            best = scores.argsort(descending=True, stable=True)[: cfg.post_nms_top_n]
        return boxes[best], scores[best]

    def roi_levels(self, rois, finest_scale, num_levels):
        """distribute_fpn_proposals (pixel_offset False): floor(log2(sqrt(w * h) / (4 * finest_scale)
        + 1e-6) + 4), w * h 0 for an inverted box, clamped to levels 2 to 1 + num_levels, minus 2."""
        w, h = rois[:, 3] - rois[:, 1], rois[:, 4] - rois[:, 2]
        area = torch.where((w < 0) | (h < 0), torch.zeros_like(w), w * h)
        lvl = torch.floor(torch.log2(torch.sqrt(area) / (4 * finest_scale) + 1e-6) + 4)
        return lvl.clamp(min=2, max=1 + num_levels).long() - 2

    def stage_scores(self, probs):
        """CascadeHead.get_prediction: paddle.add_n of the stages' softmax, divided by the number
        of stages."""
        return sum(probs) / len(probs)

    def postprocess(self, boxes, image_size, original_size):
        """BBoxPostProcess.get_pred: boxes divided by the (w, h) scale factor in float32, clipped to
        floor(resized / scale factor + 0.5) (the original size); which are not empty (ppdet labels
        the empty ones -1)."""
        factors = torch.tensor([image_size[1] / original_size[1], image_size[0] / original_size[0]],
                               dtype=torch.float32, device=boxes.device).repeat(2)
        out = clip_boxes(boxes.float() / factors, original_size)
        return out, (out[:, 2] - out[:, 0] > 0) & (out[:, 3] - out[:, 1] > 0)


CONVENTION = PaddleConvention()
