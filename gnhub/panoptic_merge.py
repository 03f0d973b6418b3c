"""Panoptic FPN's merge in numpy (no torch), the one implementation the PyTorch model and
gnhub.runtime share: detectron2's combine_semantic_and_instance_outputs; and the numpy twin of
its sem_seg_postprocess and argmax that gnhub.runtime runs on an export's semantic logits."""
from __future__ import annotations

import numpy as np

__all__ = ["SEGMENT_FIELDS", "combine", "semantic_labels"]

# the columns of a panoptic result's `segments` (one row per segment, in id order)
SEGMENT_FIELDS = ("id", "isthing", "category", "instance", "area")


def combine(masks: np.ndarray, scores: np.ndarray, labels: np.ndarray, semantic: np.ndarray,
            cfg) -> tuple[np.ndarray, np.ndarray]:
    """combine_semantic_and_instance_outputs: the instances, best first, scoring at least
    cfg.instance_score_thresh, each taking its mask's free pixels unless more than
    cfg.overlap_thresh of it is taken; then each semantic label but 0 ("things") its free pixels
    where they are at least cfg.stuff_area. -> ((H, W) int32 segment ids, 0 where none; (N, 5)
    int64 segments, columns SEGMENT_FIELDS: category is the detection's label for a thing, the
    semantic label for stuff; instance the detection's index (-1 for stuff); area the stuff's
    pixels (-1 for a thing))."""
    seg = np.zeros(semantic.shape, np.int32)
    segments = []
    for i in np.argsort(-np.asarray(scores, np.float32), kind="stable").tolist():
        if scores[i] < cfg.instance_score_thresh:
            break
        mask = masks[i].astype(bool)
        area = int(mask.sum())
        if area == 0:
            continue
        taken = int((mask & (seg > 0)).sum())
        if taken * 1.0 / area > cfg.overlap_thresh:
            continue
        if taken > 0:
            mask = mask & (seg == 0)
        seg[mask] = len(segments) + 1
        segments.append((len(segments) + 1, 1, int(labels[i]), i, -1))
    for label in np.unique(semantic).tolist():
        if label == 0:  # the thing classes together
            continue
        mask = (semantic == label) & (seg == 0)
        area = int(mask.sum())
        if area < cfg.stuff_area:
            continue
        seg[mask] = len(segments) + 1
        segments.append((len(segments) + 1, 0, label, -1, area))
    return seg, np.array(segments, np.int64).reshape(-1, len(SEGMENT_FIELDS))


def _linear(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """torch's bilinear (align_corners=False) source indices and weights along one axis, in float32."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.maximum((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), 0)
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    w1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    return i0, np.minimum(i0 + 1, n_in - 1), np.float32(1) - w1, w1


def semantic_labels(logits: np.ndarray, image_size, original) -> np.ndarray:
    """(H, W) int64 labels of one image's (C, Hpad, Wpad) logits as the model's
    gnhub.modeling.panoptic.semantic_labels gives them: cropped to the resized image, resized
    (torch's bilinear, width first) to the original one, argmax."""
    h, w = image_size
    x = logits[:, :h, :w].astype(np.float32)
    a, b, wa, wb = _linear(w, original[1])
    x = x[:, :, a] * wa + x[:, :, b] * wb
    a, b, wa, wb = _linear(h, original[0])
    x = x[:, a] * wa[:, None] + x[:, b] * wb[:, None]
    return x.argmax(axis=0).astype(np.int64)
