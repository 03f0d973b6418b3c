"""GNMaskRCNN: the whole detector, from a preprocessed batch to boxes, labels and masks."""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from .. import stages as S
from ..config import ModelConfig
from ..errors import GnhubError
from ..frameworks import convention as convention_of
from ..frameworks import info
from .base import GNModel, with_weights
from .bfloat16 import network_layout, roi_align_features
from .boxes import to_rois
from .fpn import FPN
from .panoptic import SemanticHead, combine, semantic_labels, semantic_targets
from .resnet import STAGE_CHANNELS, GNResNet
from .roi_heads import RoIHeads
from .rpn import RPN
from .transform import ImageBatch, Preprocessor, load_image

__all__ = ["GNMaskRCNN"]


class GNMaskRCNN(GNModel):
    """GN Mask R-CNN (ResNet/ResNeXt-FPN) with its preprocessing and mmdetection's training
    losses; a GN Faster R-CNN (no mask head) where config.task is "object-detection". Its
    convention (config.convention, gnhub/frameworks/) is given to every stage.

    `predict(images)` gives per image `boxes` (N, 4) xyxy in original pixels, `scores` (N,),
    `labels` (N,) indexing `config.classes`, and (Mask R-CNN) `masks` (N, H, W) bool, best
    first; a panoptic model (config.semantic) adds `sem_seg` (H, W) semantic labels,
    `panoptic_seg` (H, W) int32 segment ids (0: none) and `segments` (N, 5) int64, one row per
    segment (gnhub.panoptic_merge.SEGMENT_FIELDS); `inspect(image)` gives every intermediate
    stage of one image under stable names;
    `model(images, targets)` the training losses (see `forward`).
    """

    tasks = ("instance-segmentation", "object-detection")

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.convention = convention_of(config.convention)
        if config.roi_heads.stages > 1 and not self.convention.cascades:
            raise GnhubError(f"{config.name}: roi_heads.box_stds gives {config.roi_heads.stages} cascade stages, which "
                             f"{info(config.convention).TITLE}'s conventions do not have (convention in config.json)")
        self.preprocessor = Preprocessor(config.preprocess, self.convention.rescale)
        self.backbone = GNResNet(config.backbone)
        self.fpn = FPN(STAGE_CHANNELS, config.fpn)
        self.rpn = RPN(config.fpn.channels, config.rpn, self.convention)
        self.roi_heads = RoIHeads(config.fpn.channels, config.num_classes, config.rpn.strides[:4], config.roi_heads,
                                  self.convention, masks=config.task == "instance-segmentation")
        self.sem_seg_head = SemanticHead(config.fpn.channels, config.rpn.strides[:4],
                                         config.semantic) if config.panoptic else None
        self.eval()

    def with_classes(self, classes, generator: torch.Generator | None = None) -> GNMaskRCNN:
        """This model for new `classes`: every stage's box classifier, the per-class box regressor
        and the mask logits new (a class-agnostic regressor stays), initialised as the losses that
        train them initialise them (drawn from `generator`; zero biases): mmdetection's for one
        stage (normal std 0.01, normal std 0.001, Kaiming normal fan-out), detectron2's for a
        cascade (mask logits normal std 0.001); every other tensor the same (shared, not copied)."""
        classes = tuple(str(c) for c in classes)
        config = dataclasses.replace(self.config, classes=classes)
        config.check()
        state = dict(self.state_dict())
        roi, k = self.config.roi_heads, len(classes)
        like = dict(device=self.device, dtype=self.dtype)
        new = []
        for i, head in enumerate([self.roi_heads.box_head, *self.roi_heads.cascade_heads]):
            name = f"roi_heads.{'cascade_heads.' + str(i - 1) if i else 'box_head'}"
            fc = head.cls_score.in_features
            state[f"{name}.cls_score.weight"] = torch.empty(k + 1, fc, **like).normal_(0, 0.01, generator=generator)
            new.append((f"{name}.cls_score", k + 1))
            if not roi.class_agnostic:
                state[f"{name}.bbox_pred.weight"] = torch.empty(4 * k, fc, **like).normal_(0, 0.001,
                                                                                          generator=generator)
                new.append((f"{name}.bbox_pred", 4 * k))
        if self.roi_heads.mask_head is not None:
            logits = torch.empty(k, self.roi_heads.mask_head.logits.in_channels, 1, 1, **like)
            if roi.stages > 1:
                logits.normal_(0, 0.001, generator=generator)
            else:
                torch.nn.init.kaiming_normal_(logits, mode="fan_out", nonlinearity="relu", generator=generator)
            state["roi_heads.mask_head.logits.weight"] = logits
            new.append(("roi_heads.mask_head.logits", k))
        for name, n in new:
            state[f"{name}.bias"] = torch.zeros(n, **like)
        return with_weights(config, state, config.name)

    def forward(self, images, targets: list[dict] | None = None, *, generator: torch.Generator | None = None,
                record: dict | None = None, finish: bool = True):
        """The detector, from images to detections or, given `targets`, to its training losses (as
        torchvision's GeneralizedRCNN): one chain, backbone -> FPN -> RPN -> RoI heads, for
        predict, training and export.

        Detections: `images` is an ImageBatch (see `predict`, which batches images of one padded
        size) or paths, PIL images or HxWx3 uint8 RGB arrays; per image a dict (see the class).
        `record` (if given) receives image 0's stages. `finish=False` stops where the exported
        graph does: `boxes` (original pixels, before the convention's postprocess), `scores`,
        `labels`, `mask_probs` and `mask_logits` (28x28, not pasted), `proposals`,
        `proposal_scores`, and a panoptic model's `sem_seg.logits` (1, C, Hpad, Wpad).

        Losses (mmdetection 3.3's TwoStageDetector.loss for one batch; a cascade's RoI stages as
        detectron2's CascadeROIHeads): {"rpn_cls", "rpn_bbox", "cls", "bbox", "mask"} scalars
        ("cls_stageK", "bbox_stageK" for each cascade stage K instead of "cls", "bbox"; "mask" for a
        Mask R-CNN; a panoptic model adds "sem_seg", PanopticFPN's semantic loss) whose sum is the
        loss to backpropagate. `images`: paths, PIL images or RGB arrays, prepared by the model's
        own preprocessing (mmdetection's or detectron2's); `targets`: per image `boxes` (N, 4) xyxy
        in original pixels, `labels` (N,) indexing config.classes, `masks` (N, H, W) bool and, for
        a panoptic model, `sem_seg` (H, W) labels indexing config.semantic.classes (255: none).
        Settings come from config.train at each call; the samplers draw from `generator`; `record`
        (if given) receives the training proposals of each image ("proposals").
        """
        training = targets is not None
        if training:
            batch, gt = self._training_batch(images, targets)
        else:
            items = images if isinstance(images, (list, tuple, ImageBatch)) else [images]
            batch = items if isinstance(items, ImageBatch) else self.preprocessor(
                [load_image(im) for im in items], self.device, self.dtype)
        with torch.inference_mode(not training and not torch.jit.is_tracing()):
            c = self.backbone(network_layout(batch.tensor))
            p = self.fpn(c)
            objectness, deltas = self.rpn.head(p)
            if training:
                return self._losses(batch, gt, p, objectness, deltas, generator, record)
            return self._detections(batch, c, p, objectness, deltas, record, finish)

    # -- training ---------------------------------------------------------------------------

    def _training_batch(self, images, targets: list[dict]):
        """The images and targets as training sees them: (batch, (boxes, labels, masks) per image and
        a panoptic model's semantic targets, None for others)."""
        self.check_trainable()
        items = images if isinstance(images, (list, tuple)) else [images]
        if len(items) != len(targets) or not items:
            raise GnhubError(f"training needs one target per image ({len(items)} images, {len(targets)} targets)")
        self.freeze_stages()
        batch, boxes, labels, masks = self.preprocessor.training_batch(
            [load_image(im) for im in items], targets, self.device, self.dtype, self.roi_heads.mask_head is not None)
        for lab in labels:
            if len(lab) and (lab.min() < 0 or lab.max() >= self.config.num_classes):
                raise GnhubError(f"target labels must index config.classes (0..{self.config.num_classes - 1})")
        semantic = semantic_targets(targets, batch, len(self.config.semantic.classes)) if self.config.panoptic \
            else None
        return batch, (boxes, labels, masks, semantic)

    def _losses(self, batch, gt, p, objectness, deltas, generator, record) -> dict[str, Tensor]:
        boxes, labels, masks, semantic = gt
        train = self.config.train
        div = self.config.preprocess.size_divisor
        padded = [(math.ceil(h / div) * div, math.ceil(w / div) * div) for h, w in batch.image_sizes]
        if self.convention.detectron2_losses:
            rpn_cls, rpn_bbox = self.rpn.detectron2_loss(objectness, deltas, boxes, train, generator)
        else:
            rpn_cls, rpn_bbox = self.rpn.loss(objectness, deltas, boxes, padded, train, generator)
        proposal_cfg = dataclasses.replace(self.rpn.cfg, pre_nms_top_n=train.rpn_pre_nms_top_n,
                                           post_nms_top_n=train.rpn_post_nms_top_n, nms_iou=train.rpn_nms_iou)
        with torch.no_grad():
            obj, dlt = [o.detach() for o in objectness], [d.detach() for d in deltas]
            proposals = [self.rpn.proposals(obj, dlt, size, b, cfg=proposal_cfg)[0]
                         for b, size in enumerate(batch.image_sizes)]
        roi = self.roi_heads.loss(p[:4], proposals, boxes, labels, masks, batch.image_sizes, train, generator)
        if record is not None:
            record["proposals"] = proposals
        losses = {"rpn_cls": rpn_cls, "rpn_bbox": rpn_bbox, **roi}
        if semantic is not None:
            losses["sem_seg"] = self.sem_seg_head.loss(p[:4], semantic, self.config.semantic.loss_weight)
        return losses

    def check_trainable(self) -> None:
        """One clear error where the model's convention does not train (gnhub's losses are
        mmdetection's and, for a cascade's RoI stages and PaddleDetection's Faster R-CNN,
        detectron2's: Detectron's widths x2 - x1 + 1 and PaddleDetection's mask targets are not
        built)."""
        reason = self.convention.untrainable(self.config)
        if reason:
            raise GnhubError(f"{self.config.name}: {reason}")

    def freeze_stages(self) -> None:
        """mmdetection's frozen_stages (config.train): the stem and the first stages get no gradient."""
        stages = self.config.train.frozen_stages
        frozen = ["conv1.", "gn1."] + [f"layer{i}." for i in range(1, stages + 1)] if stages > 0 else []
        for name, param in self.backbone.named_parameters():
            param.requires_grad_(not any(name.startswith(f) for f in frozen))

    # -- inference --------------------------------------------------------------------------

    def _detections(self, batch: ImageBatch, c, p, objectness, deltas, record, finish) -> list[dict[str, Tensor]]:
        """Proposals, detections and masks of every image of the batch, as the convention makes them."""
        cfg, conv = self.config.roi_heads, self.convention
        padded = tuple(batch.tensor.shape[-2:])
        props = [self.rpn.proposals(objectness, deltas, conv.clip_size(size, padded), b, sf[0])
                 for b, (size, sf) in enumerate(zip(batch.image_sizes, batch.scale_factors))]
        feats = roi_align_features(p[:4])  # once for both heads
        cls_logits, box_deltas, probs, last_deltas, last_boxes = self.roi_heads.classify(
            feats, [b for b, _ in props], batch.image_sizes, p[0].dtype)
        counts = [len(boxes) for boxes, _ in props]
        masks = self.roi_heads.mask_head is not None
        rescaled = not masks and conv.rescales_box_only  # boxes in original pixels from detect on
        dets = []
        for prob, delta, boxes, size, orig, sf in zip(
            *_per_image([probs, last_deltas, last_boxes], counts), batch.image_sizes,
            batch.original_sizes, batch.scale_factors,
        ):
            dets.append(self.roi_heads.detect(prob, delta, *conv.detection_frame(boxes, size, orig, sf),
                                              factors=sf if rescaled else None))
        if masks:
            mask_boxes = [conv.mask_rois(b, sf) for (b, _, _), sf in zip(dets, batch.scale_factors)]
            labels = torch.cat([lab for _, _, lab in dets])
            if torch.jit.is_tracing():  # one extra RoI: onnxruntime cannot reshape an empty batch into
                # GroupNorm's groups; GroupNorm is per RoI, so the others are unchanged
                mask_boxes[-1] = torch.cat([mask_boxes[-1], mask_boxes[-1].new_tensor([[0.0, 0.0, 1.0, 1.0]])])
                labels = torch.cat([labels, labels.new_zeros(1)])
            logits = self.roi_heads.mask_logits(feats, to_rois(mask_boxes), labels, p[0].dtype)
            (mask_logits,) = _per_image([logits[:-1] if torch.jit.is_tracing() else logits], [len(d[0]) for d in dets])
        semantic = self.sem_seg_head(p[:4]) if self.sem_seg_head is not None else None
        results = []
        for i, ((boxes, scores, labels), sf, size, orig) in enumerate(
            zip(dets, batch.scale_factors, batch.image_sizes, batch.original_sizes)
        ):
            boxes = boxes if rescaled else conv.to_original(boxes, sf)
            if not finish:  # the exported graph's outputs
                results.append({"boxes": boxes, "scores": scores, "labels": labels, "proposals": props[i][0],
                                "proposal_scores": props[i][1]})
                if masks:
                    results[-1].update(mask_probs=mask_logits[i].sigmoid(), mask_logits=mask_logits[i])
                if semantic is not None:
                    results[-1][S.SEM_SEG_LOGITS] = semantic[i : i + 1]
                continue
            boxes, keep = conv.postprocess(boxes, size, orig)
            if keep is not None:
                scores, labels = scores[keep], labels[keep]
            result = {"boxes": boxes.float(), "scores": scores.float(), "labels": labels}
            if masks:
                logits = mask_logits[i] if keep is None else mask_logits[i][keep]
                result["masks"] = conv.paste_masks(logits.sigmoid(), boxes, *orig, cfg.mask_threshold)
                if i == 0:
                    first_logits = logits
            if semantic is not None:
                result[S.SEM_SEG] = semantic_labels(semantic[i], size, orig)
                result[S.PANOPTIC], result[S.SEGMENTS] = combine(result["masks"], result["scores"], labels,
                                                                 result[S.SEM_SEG], self.config.semantic)
            results.append(result)

        if record is not None and finish:
            record[S.INPUT] = batch.tensor[:1]
            record.update(S.pyramid(*([x[:1] for x in t] for t in (c, p, objectness, deltas))))
            record[S.PROPOSALS], record[S.PROPOSAL_SCORES] = props[0]
            record[S.ROI_CLS_LOGITS] = cls_logits[: counts[0]]
            record[S.ROI_BOX_DELTAS] = box_deltas[: counts[0]]
            if masks:
                record[S.MASK_LOGITS] = first_logits
            if semantic is not None:
                record[S.SEM_SEG_LOGITS] = semantic[:1]
            record.update(results[0])
        return results


def _per_image(tensors: list[Tensor], counts: list[int]) -> list[list[Tensor]]:
    """Each tensor's rows split by image; one image's as they are (a traced graph keeps any count)."""
    return [[t] if len(counts) == 1 else list(t.split(counts)) for t in tensors]
