"""GNMaskRCNN: the whole detector, from a preprocessed batch to boxes, labels and masks."""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from .. import stages as S
from ..config import ModelConfig
from ..errors import GnhubError
from .allocator import keep_freed_memory
from .base import GNModel, with_weights
from .bfloat16 import network_layout
from .boxes import clip_boxes, to_rois
from .fpn import FPN
from .masks import paste_masks, paste_masks_detectron
from .resnet import STAGE_CHANNELS, GNResNet
from .roi_heads import RoIHeads
from .rpn import RPN
from .transform import ImageBatch, Preprocessor, load_image


class GNMaskRCNN(GNModel):
    """GN Mask R-CNN (ResNet/ResNeXt-FPN) with its preprocessing and mmdetection's training
    losses; a GN Faster R-CNN (no mask head) where config.task is "object-detection".

    `predict(images)` gives per image `boxes` (N, 4) xyxy in original pixels, `scores` (N,),
    `labels` (N,) indexing `config.classes`, and (Mask R-CNN) `masks` (N, H, W) bool, best
    first; `inspect(image)` gives every intermediate stage of one image under stable names.
    """

    tasks = ("instance-segmentation", "object-detection")

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.preprocessor = Preprocessor(config.preprocess)
        self.backbone = GNResNet(config.backbone)
        self.fpn = FPN(STAGE_CHANNELS, config.fpn)
        self.rpn = RPN(config.fpn.channels, config.rpn, config.box_convention)
        self.roi_heads = RoIHeads(config.fpn.channels, config.num_classes, config.rpn.strides[:4], config.roi_heads,
                                  config.box_convention, masks=config.task == "instance-segmentation")
        self.eval()

    def with_classes(self, classes, generator: torch.Generator | None = None) -> GNMaskRCNN:
        """This model for new `classes`: the box classifier, box regressor and mask logits new and
        initialised as mmdetection initialises them (normal std 0.01, normal std 0.001, Kaiming
        normal fan-out; zero biases; drawn from `generator`), every other tensor the same (shared,
        not copied)."""
        classes = tuple(str(c) for c in classes)
        config = dataclasses.replace(self.config, classes=classes)
        config.check()
        state = dict(self.state_dict())
        k, fc = len(classes), self.roi_heads.box_head.fc.out_features
        like = dict(device=self.device, dtype=self.dtype)
        state["roi_heads.box_head.cls_score.weight"] = torch.empty(k + 1, fc, **like).normal_(0, 0.01,
                                                                                            generator=generator)
        state["roi_heads.box_head.bbox_pred.weight"] = torch.empty(4 * k, fc, **like).normal_(0, 0.001,
                                                                                            generator=generator)
        new = [("box_head.cls_score", k + 1), ("box_head.bbox_pred", 4 * k)]
        if self.roi_heads.mask_head is not None:
            logits = torch.empty(k, self.roi_heads.mask_head.logits.in_channels, 1, 1, **like)
            torch.nn.init.kaiming_normal_(logits, mode="fan_out", nonlinearity="relu", generator=generator)
            state["roi_heads.mask_head.logits.weight"] = logits
            new.append(("mask_head.logits", k))
        for name, n in new:
            state[f"roi_heads.{name}.bias"] = torch.zeros(n, **like)
        return with_weights(config, state, config.name)

    # -- training ---------------------------------------------------------------------------

    def loss(self, images, targets: list[dict], generator: torch.Generator | None = None,
             record: dict | None = None) -> dict[str, Tensor]:
        """mmdetection 3.3's TwoStageDetector.loss for one batch: {"rpn_cls", "rpn_bbox", "cls",
        "bbox", "mask"} scalars ("mask" for a Mask R-CNN) whose sum is the loss to backpropagate.
        The model's own preprocessing (mmdetection's or detectron2's) prepares the images.

        `images`: paths, PIL images or HxWx3 uint8 RGB arrays; `targets`: per image `boxes`
        (N, 4) xyxy in original pixels, `labels` (N,) indexing config.classes, `masks` (N, H, W)
        bool. Settings come from config.train at each call; the samplers draw from `generator`.
        `record` (if given) receives the training proposals of each image ("proposals").
        """
        if self.config.box_convention == "detectron":
            raise GnhubError(f"{self.config.name}: training follows mmdetection's box conventions; this model has "
                             "Detectron's (widths x2 - x1 + 1): convert an mmdetection or detectron2 checkpoint")
        items = images if isinstance(images, (list, tuple)) else [images]
        if len(items) != len(targets) or not items:
            raise GnhubError(f"loss needs one target per image ({len(items)} images, {len(targets)} targets)")
        train = self.config.train
        keep_freed_memory(self.device)
        self.freeze_stages()
        batch, boxes, labels, masks = self.preprocessor.training_batch(
            [load_image(im) for im in items], targets, self.device, self.dtype, self.roi_heads.mask_head is not None)
        for lab in labels:
            if len(lab) and (lab.min() < 0 or lab.max() >= self.config.num_classes):
                raise GnhubError(f"target labels must index config.classes (0..{self.config.num_classes - 1})")
        p = self.fpn(self.backbone(batch.tensor))
        objectness, deltas = self.rpn.head(p)
        div = self.config.preprocess.size_divisor
        padded = [(math.ceil(h / div) * div, math.ceil(w / div) * div) for h, w in batch.image_sizes]
        rpn_cls, rpn_bbox = self.rpn.loss(objectness, deltas, boxes, padded, train, generator)
        proposal_cfg = dataclasses.replace(self.rpn.cfg, pre_nms_top_n=train.rpn_pre_nms_top_n,
                                           post_nms_top_n=train.rpn_post_nms_top_n, nms_iou=train.rpn_nms_iou)
        with torch.no_grad():
            obj, dlt = [o.detach() for o in objectness], [d.detach() for d in deltas]
            proposals = [self.rpn.proposals(obj, dlt, size, b, cfg=proposal_cfg)[0]
                         for b, size in enumerate(batch.image_sizes)]
        roi = self.roi_heads.loss(p[:4], proposals, boxes, labels, masks, train, generator)
        if record is not None:
            record["proposals"] = proposals
        return {"rpn_cls": rpn_cls, "rpn_bbox": rpn_bbox, **roi}

    def freeze_stages(self) -> None:
        """mmdetection's frozen_stages (config.train): the stem and the first stages get no gradient."""
        stages = self.config.train.frozen_stages
        frozen = ["conv1.", "gn1."] + [f"layer{i}." for i in range(1, stages + 1)] if stages > 0 else []
        for name, param in self.backbone.named_parameters():
            param.requires_grad_(not any(name.startswith(f) for f in frozen))

    # -- inference --------------------------------------------------------------------------

    @torch.inference_mode()
    def run(self, batch: ImageBatch, record: dict | None = None) -> list[dict[str, Tensor]]:
        """Detections for a preprocessed batch; `record` (if given) receives image 0's stages."""
        cfg = self.config.roi_heads
        c = self.backbone(network_layout(batch.tensor))
        p = self.fpn(c)
        objectness, deltas = self.rpn.head(p)
        padded = tuple(batch.tensor.shape[-2:])
        props = [
            self.rpn.proposals(objectness, deltas, padded if self.config.rpn.clip_to == "padded" else size, b, sf[0])
            for b, (size, sf) in enumerate(zip(batch.image_sizes, batch.scale_factors))
        ]
        cls_logits, box_deltas = self.roi_heads.box_head(self.roi_heads.box_pool(p[:4], to_rois([b for b, _ in props])))
        counts = [len(boxes) for boxes, _ in props]
        original = cfg.detect_in == "original"  # else in the network's (resized) pixels
        dets = []
        for logit, delta, (boxes, _), size, orig, sf in zip(
            cls_logits.split(counts), box_deltas.split(counts), props, batch.image_sizes, batch.original_sizes,
            batch.scale_factors,
        ):
            if original:
                boxes, size = boxes / _scale(boxes, sf), orig
            dets.append(self.roi_heads.detect(logit, delta, boxes, size))
        masks = self.roi_heads.mask_head is not None
        if masks:
            mask_boxes = [_to_network(b, sf) if original else b for (b, _, _), sf in zip(dets, batch.scale_factors)]
            labels = torch.cat([lab for _, _, lab in dets])
            mask_logits = self.roi_heads.mask_logits(p[:4], to_rois(mask_boxes), labels).split(
                [len(d[0]) for d in dets])
        paste = paste_masks_detectron if cfg.paste == "detectron" else paste_masks
        results = []
        for i, ((boxes, scores, labels), sf, size, (h, w)) in enumerate(
            zip(dets, batch.scale_factors, batch.image_sizes, batch.original_sizes)
        ):
            keep = None
            if self.config.box_convention == "detectron2":
                boxes, keep = _to_original_detectron2(boxes, size, (h, w))
                scores, labels = scores[keep], labels[keep]
            elif not original:
                boxes = boxes / _scale(boxes, sf)
            result = {"boxes": boxes.float(), "scores": scores.float(), "labels": labels}
            if masks:
                logits = mask_logits[i] if keep is None else mask_logits[i][keep]
                result["masks"] = paste(logits.sigmoid(), boxes, h, w, cfg.mask_threshold)
                if i == 0:
                    first_logits = logits
            results.append(result)

        if record is not None:
            record[S.INPUT] = batch.tensor[:1]
            record.update(S.levels(S.BACKBONE, [x[:1] for x in c]))
            record.update(S.levels(S.FPN, [x[:1] for x in p]))
            record.update(S.levels(S.RPN_OBJECTNESS, [x[:1] for x in objectness]))
            record.update(S.levels(S.RPN_DELTAS, [x[:1] for x in deltas]))
            record[S.PROPOSALS], record[S.PROPOSAL_SCORES] = props[0]
            record[S.ROI_CLS_LOGITS] = cls_logits[: counts[0]]
            record[S.ROI_BOX_DELTAS] = box_deltas[: counts[0]]
            if masks:
                record[S.MASK_LOGITS] = first_logits
            record.update(results[0])
        return results


def _scale(boxes: Tensor, factors: tuple[float, float]) -> Tensor:
    """(w, h) scale factors as a divisor for xyxy boxes, in the boxes' dtype."""
    return boxes.new_tensor(factors).repeat(2)


def _to_network(boxes: Tensor, factors: tuple[float, float]) -> Tensor:
    """Original-pixel boxes into the network's pixels, in float64 as Detectron's _get_rois_blob."""
    return (boxes.double() * boxes.new_tensor(factors, dtype=torch.float64).repeat(2)).to(boxes.dtype)


def _to_original_detectron2(boxes: Tensor, size: tuple[int, int], original: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """detectron2's detector_postprocess: boxes times original / resized size (Python floats, as
    it computes them), clipped to the original image; which of them are not empty."""
    out = boxes.float().clone()
    out[:, 0::2] *= original[1] / size[1]
    out[:, 1::2] *= original[0] / size[0]
    out = clip_boxes(out, original)
    return out, (out[:, 2] - out[:, 0] > 0) & (out[:, 3] - out[:, 1] > 0)
