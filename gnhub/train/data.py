"""Training data as mmdetection 3.3 reads it for these models: a COCO-format instance dataset
(CocoDataset), the random horizontal flip (RandomFlip 0.5) and aspect-ratio grouped batches
(DefaultSampler + AspectRatioBatchSampler), each a function of (seed, epoch) so that a resumed run
sees the data a straight run would."""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..coco import read_instances
from ..errors import GnhubError
from ..images import load_image

__all__ = ["CocoInstances", "MIN_SIZE", "Sample", "epoch_batches", "flips"]

MIN_SIZE = 32  # mmdetection's filter_cfg min_size: images with a shorter side are skipped


@dataclass
class Sample:
    image_id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) float32 xyxy
    labels: np.ndarray  # (N,) int64, indexing CocoInstances.classes
    segmentations: list  # per instance: polygons (list of lists) or RLE (dict)


class CocoInstances:
    """The trainable images of a COCO-format instances file, checked completely before any
    training: every record (gnhub.coco), every image file decoded at its declared size.

    Classes are the file's categories in id order. As mmdetection: crowd annotations and boxes
    under one pixel wide or high are not trained on, degenerate polygons are dropped, images
    without annotations or with a side under 32 pixels are skipped. A file that is not COCO, a
    box outside its image, an undeclared category, a missing or unreadable image, or nothing to
    train on is one error. Without `masks` (a Faster R-CNN) segmentations are neither needed
    nor decoded.
    """

    def __init__(self, annotations: str | Path, images: str | Path, masks: bool = True):
        self.path, self.images, self.masks = Path(annotations), Path(images), masks
        instances = read_instances(self.path, masks)
        self.classes = tuple(c["name"] for c in instances.categories)
        self.category_ids = [c["id"] for c in instances.categories]
        label_of = {c: i for i, c in enumerate(self.category_ids)}
        per_image: dict = {i: [] for i in instances.images}
        for ann in instances.annotations:
            per_image[ann["image_id"]].append(ann)
        self.samples: list[Sample] = []
        for image_id in sorted(instances.images):
            im, anns = instances.images[image_id], per_image[image_id]
            if anns and min(im["width"], im["height"]) >= MIN_SIZE:  # as mmdetection, crowd-only images too
                self.samples.append(self._sample(im, anns, label_of))
        if not sum(len(s.labels) for s in self.samples):
            raise GnhubError(f"{self.path}: nothing to train on: no image of at least {MIN_SIZE} pixels a side has "
                             "an instance that is not crowd, at least a pixel wide and high, with a polygon of three "
                             "or more points or an RLE")
        missing = [s.path for s in self.samples if not s.path.is_file()]
        if missing:
            raise GnhubError(f"{missing[0]}: no such image ({len(missing)} of the images in {self.path} are missing "
                             f"from {self.images}); check --images")
        self._check_images()

    def _sample(self, im: dict, anns: list[dict], label_of: dict) -> Sample:
        boxes, labels, segs = [], [], []
        for ann in anns:
            x, y, bw, bh = ann["bbox"]
            seg = ann.get("segmentation")
            if ann.get("iscrowd") or ann.get("ignore") or bw < 1 or bh < 1 or ann.get("area", 1) <= 0:
                continue
            if not self.masks:
                seg = None
            elif isinstance(seg, list):
                seg = [p for p in seg if len(p) >= 6]
                if not seg:
                    continue  # mmdetection ignores an instance whose polygons are all degenerate
            boxes.append([x, y, x + bw, y + bh])
            labels.append(label_of[ann["category_id"]])
            segs.append(seg)
        return Sample(im["id"], self.images / im["file_name"], im["width"], im["height"],
                      np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64), segs)

    def _check_images(self) -> None:
        """Decodes every image once (in threads: decoders release the GIL): a truncated or
        unreadable file, or one of another size than declared, stops here, not mid-training."""

        def check(s: Sample) -> None:
            h, w = load_image(s.path).shape[:2]
            if (h, w) != (s.height, s.width):
                raise GnhubError(f"{s.path}: is {w}x{h}, but {self.path} says {s.width}x{s.height}")

        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            for _ in pool.map(check, self.samples):
                pass

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int, flip: bool = False) -> tuple[np.ndarray, dict]:
        """Image i as RGB uint8 and its target (boxes, labels and, with masks, masks), flipped
        horizontally if asked."""
        s = self.samples[i]
        rgb = load_image(s.path)
        boxes = s.boxes.copy()
        if flip:
            rgb = rgb[:, ::-1]
            boxes[:, 0], boxes[:, 2] = s.width - s.boxes[:, 2], s.width - s.boxes[:, 0]
        target = {"boxes": boxes, "labels": s.labels}
        if self.masks:
            masks = _decode(s.segmentations, s.height, s.width)
            target["masks"] = np.ascontiguousarray(masks[:, :, ::-1] if flip else masks)
        return np.ascontiguousarray(rgb), target


def _decode(segmentations: list, h: int, w: int) -> np.ndarray:
    """(N, h, w) bool masks, as mmdetection's LoadAnnotations(poly2mask=True) rasterises them."""
    # pycocotools is optional: only polygon masks need it
    from pycocotools import mask as coco_mask

    out = np.zeros((len(segmentations), h, w), bool)
    for j, seg in enumerate(segmentations):
        if isinstance(seg, list):
            rle = coco_mask.merge(coco_mask.frPyObjects(seg, h, w))
        elif isinstance(seg["counts"], list):
            rle = coco_mask.frPyObjects(seg, h, w)
        else:
            rle = seg
        out[j] = coco_mask.decode(rle).astype(bool)
    return out


def flips(seed: int, epoch: int, indices: list[int], prob: float) -> list[bool]:
    """RandomFlip(prob): the same decisions for (seed, epoch, image) in every run."""
    return [bool(np.random.default_rng([seed, epoch, i]).random() < prob) for i in indices]


def epoch_batches(landscape: list[bool], batch_size: int, seed: int, epoch: int, rank: int = 0,
                  world: int = 1) -> list[list[int]]:
    """Rank `rank`'s batches of one epoch: mmengine's DefaultSampler (shuffled with seed + epoch,
    padded to a multiple of the world size, every world-th index) grouped by mmdetection's
    AspectRatioBatchSampler (portrait and landscape images in separate batches, the rest mixed
    at the end). Every rank gets the same number of batches (the fewest any rank has)."""
    # torch only for the sampler: checking a data set needs none
    import torch

    n = len(landscape)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    total = math.ceil(n / world) * world
    order = (order * (total // n + 1))[:total]
    per_rank = [_group(order[r:total:world], landscape, batch_size) for r in range(world)]
    return per_rank[rank][: min(len(b) for b in per_rank)]


def _group(indices: list[int], landscape: list[bool], batch_size: int) -> list[list[int]]:
    buckets: tuple[list, list] = ([], [])
    batches = []
    for i in indices:
        bucket = buckets[landscape[i]]
        bucket.append(i)
        if len(bucket) == batch_size:
            batches.append(bucket[:])
            bucket.clear()
    rest = buckets[0] + buckets[1]
    batches += [rest[k:k + batch_size] for k in range(0, len(rest), batch_size)]
    return batches
