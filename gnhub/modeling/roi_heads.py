"""RoI stage: multi-level RoIAlign, the 4conv1fc box head (one, or one per cascade stage), the FCN
mask head, detection."""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import RoIHeadsConfig
from .bfloat16 import memory_format, relu_, roi_align_features
from .boxes import encode_boxes, to_rois
from .conv import conv2d
from .fpn import ConvGN
from .ops import roi_align
from .targets import assign, ce_loss, d2_deltas, d2_match, d2_sample, l1_loss, sample

__all__ = ["BoxHead", "MaskHead", "MultiLevelRoIAlign", "RoIHeads", "mask_targets_of"]


def mask_targets_of(masks: Tensor, boxes: Tensor, which: Tensor, size: int, clamp: bool = True) -> Tensor:
    """(P, size, size) targets: ground-truth mask `which[i]` RoIAligned (aligned, adaptive
    sampling) over box i, binarised at 0.5: mmdetection's BitmapMasks.crop_and_resize (boxes
    clamped to the mask), or detectron2's BitMasks.crop_and_resize (`clamp` False)."""
    if not len(boxes):
        return boxes.new_zeros(0, size, size)
    h, w = masks.shape[-2:]
    b = boxes.detach().clone()
    if clamp:
        b[:, 0::2] = b[:, 0::2].clamp(0, w)
        b[:, 1::2] = b[:, 1::2].clamp(0, h)
    rois = torch.cat([torch.arange(len(b), device=b.device, dtype=b.dtype)[:, None], b], dim=1)
    crops = roi_align(masks[which].to(b.dtype)[:, None], rois, size, 1.0, 0, True).squeeze(1)
    return (crops >= 0.5).float()


class _ScaleGradient(torch.autograd.Function):
    """The identity, its gradient times `scale` (detectron2's cascade_rcnn._ScaleGradient)."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.scale, None


class MultiLevelRoIAlign(nn.Module):
    """RoIAlign of each RoI on one pyramid level, chosen by its size as the convention maps it."""

    def __init__(self, output_size: int, strides: tuple[int, ...], cfg: RoIHeadsConfig, convention):
        super().__init__()
        self.convention = convention
        self.output_size = output_size
        self.strides = strides
        self.sampling_ratio = cfg.sampling_ratio
        self.aligned = cfg.aligned
        self.finest_scale = cfg.finest_scale

    def levels(self, rois: Tensor) -> Tensor:
        """Level index of (K, 5) RoIs, as the convention maps them."""
        return self.convention.roi_levels(rois, self.finest_scale, len(self.strides))

    def forward(self, feats: list[Tensor], rois: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """(K, C, size, size) features of (K, 5) RoIs in `dtype` (by default the maps') and its
        network memory format; `feats` may be the maps' roi_align_features, made once for both heads."""
        size = self.output_size
        dtype = dtype or feats[0].dtype
        levels = self.levels(rois)
        parts, order = [], []
        for i, (f, stride) in enumerate(zip(roi_align_features(feats), self.strides)):
            idx = (levels == i).nonzero().view(-1)
            parts.append(roi_align(f, rois[idx].to(f.dtype), size, 1.0 / stride, self.sampling_ratio,
                                   self.aligned).to(dtype))
            order.append(idx)
        if torch.jit.is_tracing():  # an exported graph: a level may hold no RoI of another image
            return torch.cat(parts)[torch.argsort(torch.cat(order))]
        out = torch.empty(len(rois), feats[0].shape[1], size, size, dtype=dtype, device=rois.device,
                          memory_format=memory_format(dtype, rois.device)).zero_()
        for idx, part in zip(order, parts):
            out[idx] = part
        return out


class BoxHead(nn.Module):
    """num_convs x (3x3 conv + GN + ReLU) -> fc + ReLU (and fc2 + ReLU where num_fcs is 2) -> class
    logits (K + 1, background last), deltas (4K, or 4 where class-agnostic)."""

    def __init__(self, channels: int, num_classes: int, cfg: RoIHeadsConfig):
        super().__init__()
        g, eps, ws = cfg.num_groups, cfg.norm_eps, cfg.box_weight_std
        self.convs = nn.Sequential(*(ConvGN(channels, channels, 3, g, eps, True, ws) for _ in range(cfg.num_convs)))
        self.fc = nn.Linear(channels * cfg.box_pool_size**2, cfg.fc_channels)
        self.fc2 = nn.Linear(cfg.fc_channels, cfg.fc_channels) if cfg.num_fcs == 2 else None
        self.cls_score = nn.Linear(cfg.fc_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(cfg.fc_channels, 4 if cfg.class_agnostic else num_classes * 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = F.relu(self.fc(self.convs(x).flatten(1)))
        if self.fc2 is not None:
            x = F.relu(self.fc2(x))
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Module):
    """mask_num_convs x (3x3 conv + GN + ReLU) -> 2x2 stride-2 transposed conv + ReLU -> 1x1 conv, K logits."""

    def __init__(self, channels: int, num_classes: int, cfg: RoIHeadsConfig):
        super().__init__()
        g, eps, ws = cfg.num_groups, cfg.norm_eps, cfg.mask_weight_std
        self.convs = nn.Sequential(*(ConvGN(channels, channels, 3, g, eps, True, ws)
                                     for _ in range(cfg.mask_num_convs)))
        self.upsample = nn.ConvTranspose2d(channels, channels, 2, stride=2)
        self.logits = conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(relu_(self.upsample(self.convs(x))))


class RoIHeads(nn.Module):
    """The box head (and one more per further cascade stage, `cascade_heads`), and the mask head
    unless `masks` is False (a Faster R-CNN)."""

    def __init__(self, channels: int, num_classes: int, strides: tuple[int, ...], cfg: RoIHeadsConfig,
                 convention, masks: bool = True):
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.convention = convention
        self.box_pool = MultiLevelRoIAlign(cfg.box_pool_size, strides, cfg, convention)
        self.box_head = BoxHead(channels, num_classes, cfg)
        self.cascade_heads = nn.ModuleList(BoxHead(channels, num_classes, cfg) for _ in range(cfg.stages - 1))
        self.mask_pool = MultiLevelRoIAlign(cfg.mask_pool_size, strides, cfg, convention) if masks else None
        self.mask_head = MaskHead(channels, num_classes, cfg) if masks else None

    def classify(self, feats: list[Tensor], proposals: list[Tensor], image_sizes,
                 dtype: torch.dtype | None = None) -> tuple[Tensor, ...]:
        """The box head(s) on every image's proposals (network pixels): (the first stage's class
        logits and deltas, the class probabilities (float32; averaged over a cascade's stages),
        the last stage's deltas, the boxes they apply to (all images' rows together)). Each
        further stage runs on the previous one's boxes, decoded with its box_stds and clipped to
        the image (detectron2's CascadeROIHeads at test time). `feats`, `dtype`: see
        MultiLevelRoIAlign."""
        logits, deltas = self.box_head(self.box_pool(feats, to_rois(proposals), dtype))
        first, probs = (logits, deltas), [F.softmax(logits.float(), dim=-1)]
        counts = [len(p) for p in proposals]
        for i, head in enumerate(self.cascade_heads):
            stds = self.cfg.box_stds[4 * i: 4 * i + 4]
            proposals = [self.convention.refine(p, d.float(), stds, size)
                         for p, d, size in zip(proposals, deltas.split(counts), image_sizes)]
            logits, deltas = head(self.box_pool(feats, to_rois(proposals), dtype))
            probs.append(F.softmax(logits.float(), dim=-1))
        scores = probs[0] if len(probs) == 1 else self.convention.stage_scores(probs)
        return *first, scores, deltas, torch.cat(proposals)

    def detect(
        self, probs: Tensor, box_deltas: Tensor, proposals: Tensor, image_size: tuple[int, int], factors=None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Decoding (per class, or once where class-agnostic), score threshold, per-class NMS as
        the convention does them -> boxes, scores, labels (best first); `probs` are `classify`'s.

        `proposals` and `image_size` are in the coordinates detection happens in (the
        convention's detection_frame); the result is in the same coordinates, or in original
        pixels where `factors` are given (Convention.detect).
        """
        cfg, k, n = self.cfg, self.num_classes, proposals.shape[0]
        if cfg.stages > 1:  # the last stage's decoding
            cfg = dataclasses.replace(cfg, box_stds=cfg.box_stds[-4:])
        scores = probs[:, :-1].reshape(-1)  # box math in float32
        labels = torch.arange(k, device=scores.device).repeat(n)
        deltas = box_deltas.float()
        deltas = deltas.repeat_interleave(k, dim=0) if self.cfg.class_agnostic else deltas.reshape(-1, 4)
        return self.convention.detect(proposals.repeat_interleave(k, dim=0), deltas, scores, labels, n, k, image_size,
                                      cfg, factors)

    def loss(self, feats: list[Tensor], proposals: list[Tensor], gt_boxes: list[Tensor], gt_labels: list[Tensor],
             gt_masks: list[Tensor], image_sizes, train, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The RoI heads' training losses on each image's `proposals` (network pixels; images of
        `image_sizes`, (h, w)): one stage as mmdetection's StandardRoIHead ("cls", "bbox"), a
        cascade as detectron2's CascadeROIHeads ("cls_stageK", "bbox_stageK"); with a mask head,
        "mask" (`gt_masks` may be None without one)."""
        if self.cfg.stages > 1:
            return self._cascade_loss(feats, proposals, gt_boxes, gt_labels, gt_masks, image_sizes, train, generator)
        if self.convention.detectron2_losses:
            return self._detectron2_loss(feats, proposals, gt_boxes, gt_labels, train, generator)
        return self._standard_loss(feats, proposals, gt_boxes, gt_labels, gt_masks, train, generator)

    def _standard_loss(self, feats, proposals, gt_boxes, gt_labels, gt_masks, train, generator) -> dict[str, Tensor]:
        """mmdetection's StandardRoIHead loss: ground-truth boxes added as RoIs, MaxIoUAssigner and
        RandomSampler per image, softmax cross-entropy over the sampled RoIs, L1 on the
        positives' own-class deltas (the class-agnostic deltas where reg_class_agnostic), divided
        by the number of samples, and (with a mask head) binary cross-entropy of the positives'
        own-class 28x28 masks against RoIAligned, binarised ground truth."""
        rois, labels, targets, pos_rois, pos_labels, mask_targets = [], [], [], [], [], []
        for b, (props, gt, gl, gm) in enumerate(zip(proposals, gt_boxes, gt_labels, gt_masks)):
            assigned = assign(props, gt, train.box_pos_iou, train.box_neg_iou, train.box_min_pos_iou)
            priors = torch.cat([gt, props])
            assigned = torch.cat([torch.arange(1, len(gt) + 1, device=gt.device), assigned])
            pos, neg = sample(assigned, train.box_batch_size_per_image, train.box_positive_fraction, generator)
            matched = assigned[pos] - 1
            chosen = torch.cat([priors[pos], priors[neg]])
            rois.append(torch.cat([chosen.new_full((len(chosen), 1), b), chosen], dim=1))
            lab = torch.full((len(chosen),), self.num_classes, dtype=torch.long, device=gt.device)
            lab[: len(pos)] = gl[matched]
            labels.append(lab)
            t = chosen.new_zeros(len(chosen), 4)
            t[: len(pos)] = encode_boxes(priors[pos], gt[matched], self.cfg.box_stds)
            targets.append(t)
            pos_rois.append(rois[-1][: len(pos)])
            pos_labels.append(gl[matched])
            if self.mask_head is not None:
                mask_targets.append(mask_targets_of(gm, priors[pos], matched, train.mask_size))
        rois, labels, targets = torch.cat(rois), torch.cat(labels), torch.cat(targets)
        cls_logits, box_deltas = self.box_head(self.box_pool(feats, rois))
        samples = float(max(len(labels), 1))
        out = {"cls": ce_loss(cls_logits.float(), labels, torch.ones_like(labels, dtype=torch.float32), samples)}
        pos = labels < self.num_classes
        if pos.any():
            which = 0 if self.cfg.class_agnostic else labels[pos]
            own = box_deltas.float().view(len(labels), -1, 4)[pos, which]
            out["bbox"] = l1_loss(own, targets[pos], torch.ones_like(own), float(len(labels)))
        else:
            out["bbox"] = box_deltas[pos].sum()
        if self.mask_head is not None:
            out["mask"] = self._mask_loss(feats, torch.cat(pos_rois), torch.cat(pos_labels), mask_targets)
        return out

    def _cascade_loss(self, feats, proposals, gt_boxes, gt_labels, gt_masks, image_sizes, train,
                      generator) -> dict[str, Tensor]:
        """detectron2's CascadeROIHeads in training. Stage 0 (label_and_sample_proposals): the
        ground-truth boxes added after the proposals, matched at train.cascade_ious[0] (Matcher,
        no low-quality matches), subsample_labels. Stage k > 0 (_create_proposals_from_boxes,
        _match_and_label_boxes): the previous stage's boxes, detached, decoded with its weights,
        clipped to the image, empty ones dropped, matched again at cascade_ious[k], not sampled.
        Each stage: its pooled features' gradient times 1 / stages (_ScaleGradient; or its losses
        times 1 / stages, PaddleDetection's CascadeHead, convention.stage_loss_weights), softmax
        cross-entropy (mean), L1 (smooth L1, beta 0) of the class-agnostic deltas against
        get_deltas with the stage's weights over the foreground, divided by all its RoIs. The mask
        loss (mask_rcnn_loss) on stage 0's foreground RoIs."""
        k = self.num_classes
        first = boxes, labels, matched = self._label_and_sample(proposals, gt_boxes, gt_labels, train.cascade_ious[0],
                                                                train, generator)
        out, heads = {}, [self.box_head, *self.cascade_heads]
        by_loss = self.convention.stage_loss_weights
        weight = 1.0 / len(heads) if by_loss else 1.0
        for stage, head in enumerate(heads):
            stds = self.cfg.box_stds[4 * stage: 4 * stage + 4]
            x = self.box_pool(feats, to_rois(boxes))
            x = x if by_loss else _ScaleGradient.apply(x, 1.0 / len(heads))
            logits, deltas = head(x)
            lab = torch.cat(labels)
            cls = F.cross_entropy(logits.float(), lab) if len(lab) else logits.sum() * 0.0
            out[f"cls_stage{stage}"] = cls * weight
            fg = lab < k
            targets = torch.cat([gt[idx] if len(gt) else b for b, gt, idx in zip(boxes, gt_boxes, matched)])
            t = d2_deltas(torch.cat(boxes)[fg], targets[fg], stds)
            out[f"bbox_stage{stage}"] = (deltas.float()[fg] - t).abs().sum() / max(len(lab), 1) * weight
            if stage + 1 == len(heads):
                break
            boxes = [self.convention.refine(b, d.detach().float(), stds, size)
                     for b, d, size in zip(boxes, deltas.split([len(b) for b in boxes]), image_sizes)]
            boxes = [b[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])] for b in boxes]
            labels, matched = [], []
            for b, gt, gl in zip(boxes, gt_boxes, gt_labels):
                idx, fg = d2_match(b, gt, train.cascade_ious[stage + 1])
                labels.append(torch.where(fg, gl[idx], k) if len(gt) else torch.full_like(idx, k))
                matched.append(idx)
        if self.mask_head is not None:
            boxes, labels, matched = first
            fg = [lab < k for lab in labels]
            rois = to_rois([b[f] for b, f in zip(boxes, fg)])
            targets = [mask_targets_of(gm, b[f], idx[f], train.mask_size, clamp=False)
                       for gm, b, idx, f in zip(gt_masks, boxes, matched, fg)]
            out["mask"] = self._mask_loss(feats, rois, torch.cat([lab[f] for lab, f in zip(labels, fg)]), targets)
        return out

    def _label_and_sample(self, proposals, gt_boxes, gt_labels, iou: float, train, generator):
        """detectron2's label_and_sample_proposals (PaddleDetection's BBoxAssigner alike): the
        ground-truth boxes added after each image's proposals, matched at `iou` (Matcher, no
        low-quality matches), subsample_labels. Per image: (boxes, labels (background
        num_classes), index of the matched ground truth)."""
        k = self.num_classes
        boxes, labels, matched = [], [], []
        for props, gt, gl in zip(proposals, gt_boxes, gt_labels):
            candidates = torch.cat([props, gt])
            idx, fg = d2_match(candidates, gt, iou)
            lab = torch.where(fg, gl[idx], k) if len(gt) else torch.full_like(idx, k)
            pos, neg = d2_sample(lab, train.box_batch_size_per_image, train.box_positive_fraction, k, generator)
            keep = torch.cat([pos, neg])
            boxes.append(candidates[keep])
            labels.append(lab[keep])
            matched.append(idx[keep])
        return boxes, labels, matched

    def _detectron2_loss(self, feats, proposals, gt_boxes, gt_labels, train, generator) -> dict[str, Tensor]:
        """One box stage as detectron2's StandardROIHeads and PaddleDetection's BBoxHead.get_loss
        compute it: _label_and_sample at train.box_pos_iou, softmax cross-entropy averaged over the
        sampled RoIs, L1 of the foreground's own-class deltas (the 4 shared ones where
        class-agnostic) against get_deltas with box_stds, summed and divided by all sampled RoIs."""
        boxes, labels, matched = self._label_and_sample(proposals, gt_boxes, gt_labels, train.box_pos_iou, train,
                                                        generator)
        logits, deltas = self.box_head(self.box_pool(feats, to_rois(boxes)))
        lab = torch.cat(labels)
        fg = lab < self.num_classes
        targets = torch.cat([gt[idx] if len(gt) else b for b, gt, idx in zip(boxes, gt_boxes, matched)])
        own = deltas.float().view(len(lab), -1, 4)[fg, 0 if self.cfg.class_agnostic else lab[fg]]
        t = d2_deltas(torch.cat(boxes)[fg], targets[fg], self.cfg.box_stds)
        return {"cls": F.cross_entropy(logits.float(), lab) if len(lab) else logits.sum() * 0.0,
                "bbox": (own - t).abs().sum() / max(len(lab), 1)}

    def _mask_loss(self, feats, rois: Tensor, labels: Tensor, targets: list[Tensor]) -> Tensor:
        """Mean binary cross-entropy of each (K, 5) RoI's own-class mask logits against its target
        (mmdetection's and detectron2's alike); 0 (with a gradient) without RoIs."""
        logits = self.mask_head(self.mask_pool(feats, rois))
        if not len(rois):
            return logits.sum() * 0.0
        own = logits.float()[torch.arange(len(rois), device=logits.device), labels]
        return F.binary_cross_entropy_with_logits(own, torch.cat(targets), reduction="mean")

    def mask_logits(self, feats: list[Tensor], rois: Tensor, labels: Tensor,
                    dtype: torch.dtype | None = None) -> Tensor:
        """(D, M, M) mask logits of each RoI's own class (`feats`, `dtype`: see MultiLevelRoIAlign)."""
        logits = self.mask_head(self.mask_pool(feats, rois, dtype))
        return logits[torch.arange(rois.shape[0], device=logits.device), labels]
