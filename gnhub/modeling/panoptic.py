"""Panoptic FPN's parts beside the detector (detectron2's modeling/meta_arch/semantic_seg.py and
panoptic_fpn.py): the semantic FPN head and its loss, its training targets, its logits as labels of
the original image, and the merge of those labels with the instances into one panoptic segment map
(gnhub.panoptic_merge's, in numpy).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import SemanticConfig
from ..errors import GnhubError
from ..panoptic_merge import combine as merge
from .conv import conv2d
from .fpn import ConvGN
from .transform import ImageBatch

__all__ = ["IGNORE", "SemanticHead", "combine", "resize_labels", "semantic_labels", "semantic_targets"]

IGNORE = 255  # SEM_SEG_HEAD.IGNORE_VALUE: unlabelled pixels, and the padding of the targets


class SemanticHead(nn.Module):
    """SemSegFPNHead: per level (P2-P5) a branch of 3x3 conv + GN + ReLU, each followed by 2x
    bilinear upsampling until the branch reaches `common_stride` (P2: one conv), the branches
    summed, a 1x1 conv to the semantic logits, upsampled `common_stride` times (bilinear) to the
    padded input's size."""

    def __init__(self, in_channels: int, strides: tuple[int, ...], cfg: SemanticConfig):
        super().__init__()
        c, g, eps, gn = cfg.channels, cfg.num_groups, cfg.norm_eps, cfg.norm == "GN"
        self.strides, self.common_stride = strides, cfg.common_stride
        self.branches = nn.ModuleList(
            nn.ModuleList(ConvGN(in_channels if k == 0 else c, c, 3, g, eps, True, False, gn)
                          for k in range(max(1, int(math.log2(s) - math.log2(cfg.common_stride)))))
            for s in strides)
        self.predictor = conv2d(c, len(cfg.classes), 1)

    def forward(self, feats: list[Tensor]) -> Tensor:
        x = None
        for branch, f, stride in zip(self.branches, feats, self.strides):
            for conv in branch:
                f = conv(f)
                if stride != self.common_stride:
                    f = F.interpolate(f, scale_factor=2, mode="bilinear", align_corners=False)
            x = f if x is None else x + f
        return F.interpolate(self.predictor(x), scale_factor=self.common_stride, mode="bilinear", align_corners=False)

    def loss(self, feats: list[Tensor], targets: Tensor, weight: float) -> Tensor:
        """SemSegFPNHead.losses: the logits at the padded input's size against `targets` (B, Hpad,
        Wpad) int64 (semantic_targets), cross-entropy averaged over the labelled pixels, times `weight`."""
        return F.cross_entropy(self(feats).float(), targets, ignore_index=IGNORE) * weight


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 labels resized to `size` (h, w) as detectron2's ResizeTransform.apply_segmentation
    resizes them (PIL's nearest)."""
    # PIL only for training's label resize
    from PIL import Image

    return np.asarray(Image.fromarray(labels).resize((size[1], size[0]), Image.NEAREST))


def semantic_targets(targets: list[dict], batch: ImageBatch, num_classes: int) -> Tensor:
    """(B, Hpad, Wpad) int64 semantic labels of a training batch as PanopticFPN trains on them: each
    target's `sem_seg` ((H, W) labels of its original image, 255 where none) resized to its resized
    image (resize_labels), padded with 255 to the batch's size (ImageList.from_tensors)."""
    out = torch.full((len(targets), *batch.tensor.shape[-2:]), IGNORE, dtype=torch.int64)
    for i, (t, orig, (h, w)) in enumerate(zip(targets, batch.original_sizes, batch.image_sizes)):
        s = t.get("sem_seg") if isinstance(t, dict) else None
        s = None if s is None else np.asarray(s.cpu() if hasattr(s, "cpu") else s)
        if s is None or s.shape != tuple(orig) or not np.issubdtype(s.dtype, np.integer):
            raise GnhubError(f"target {i}: a Panoptic FPN trains its semantic head too: give `sem_seg`, the "
                             f"{orig[0]}x{orig[1]} image's semantic labels ((H, W) integers, 255 where none)")
        if ((s < 0) | ((s >= num_classes) & (s != IGNORE))).any():
            raise GnhubError(f"target {i}: sem_seg labels must index config.semantic.classes (0..{num_classes - 1}) "
                             "or be 255 (none)")
        out[i, :h, :w] = torch.from_numpy(resize_labels(s.astype(np.uint8), (h, w)).astype(np.int64))
    return out.to(batch.tensor.device)


def semantic_labels(logits: Tensor, image_size: tuple[int, int], original: tuple[int, int]) -> Tensor:
    """(H, W) int64 labels of one image's (C, Hpad, Wpad) logits: cropped to the resized image,
    resized (bilinear) to the original one, argmax (sem_seg_postprocess, then argmax)."""
    h, w = image_size
    x = F.interpolate(logits[None, :, :h, :w].float(), size=tuple(original), mode="bilinear", align_corners=False)
    return x[0].argmax(dim=0)


def combine(masks: Tensor, scores: Tensor, labels: Tensor, semantic: Tensor,
            cfg: SemanticConfig) -> tuple[Tensor, Tensor]:
    """gnhub.panoptic_merge.combine (detectron2's combine_semantic_and_instance_outputs, in numpy
    on the CPU, the merge gnhub.runtime runs too) on one image's tensors: ((H, W) int32 segment
    ids on the semantic labels' device, (N, 5) int64 segments)."""
    seg, segments = merge(*(t.cpu().numpy() for t in (masks, scores, labels, semantic)), cfg)
    return torch.from_numpy(seg).to(semantic.device), torch.from_numpy(segments)
