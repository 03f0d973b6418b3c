"""Training data as mmdetection 3.3 reads it for these models: a COCO-format instance dataset
(CocoDataset), the random horizontal flip (RandomFlip 0.5) and aspect-ratio grouped batches
(DefaultSampler + AspectRatioBatchSampler), each a function of (seed, epoch) so that a resumed run
sees the data a straight run would. A Panoptic FPN's semantic labels come from COCO panoptic
annotations as detectron2's "panoptic_separated" data has them (datasets/prepare_panoptic_fpn.py)."""
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
from ..panoptic_format import categories
from ..pq import category_map, read_ids, read_panoptic

__all__ = ["CocoInstances", "MIN_SIZE", "Sample", "epoch_batches", "flips"]

MIN_SIZE = 32  # mmdetection's filter_cfg min_size: images with a shorter side are skipped
UNLABELLED = 255  # a semantic label: VOID and unlisted segments, not trained on


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
    nor decoded. `panoptic` (a Panoptic FPN's: the panoptic JSON, its PNG folder or None, and
    config.semantic.classes) adds each image's `sem_seg`, read and checked by gnhub.pq.
    """

    def __init__(self, annotations: str | Path, images: str | Path, masks: bool = True,
                 panoptic: tuple | None = None):
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
        self.panoptic = self.semantic_label = None
        if panoptic is not None:
            self._read_panoptic(instances.images, *panoptic)
        self._check_images()

    def _read_panoptic(self, images: dict, path, folder, stuff: tuple[str, ...]) -> None:
        """The panoptic annotations (gnhub.pq's reader and checks) and the semantic label of each
        of their categories (detectron2's separate_coco_semantic_from_panoptic): every thing 0,
        the stuff categories 1.. in the order of `stuff` (config.semantic.classes, found as
        pq.category_map finds a model's categories)."""
        self.panoptic = read_panoptic(path, folder, images, ("--train", "--train-panoptic-images"))
        model = categories(self.classes, stuff)
        theirs = category_map(self.panoptic, model)
        self.semantic_label = {c["id"]: 0 for c in self.panoptic.categories.values() if c["isthing"]}
        self.semantic_label.update({theirs[c["id"]]: j for j, c in enumerate(model[len(self.classes):], 1)})
        extra = [c["name"] for c in self.panoptic.categories.values() if c["id"] not in self.semantic_label]
        if extra:
            raise GnhubError(f"{self.panoptic.path}: its stuff categories {', '.join(extra[:4])} are not among the "
                             f"model's {len(stuff) - 1} (config.semantic.classes); are they for this model?")
        missing = [s.path.name for s in self.samples if s.image_id not in self.panoptic.annotations]
        if missing:
            raise GnhubError(f"{self.panoptic.path}: has no panoptic annotation of {len(missing)} of the images to "
                             f"train on ({', '.join(missing[:3])}); a Panoptic FPN trains on each one's labels")

    def semantic(self, i: int) -> np.ndarray:
        """Image i's (H, W) int64 semantic labels: its PNG's segments by their category (things 0,
        stuff 1..), 255 where VOID or a segment segments_info does not list."""
        s = self.samples[i]
        ann = self.panoptic.annotations[s.image_id]
        ids = read_ids(self.panoptic.folder / ann["file_name"], (s.height, s.width))
        out = np.full(ids.shape, UNLABELLED, np.int64)
        for seg in ann["segments_info"]:
            out[ids == seg["id"]] = self.semantic_label[seg["category_id"]]
        return out

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
        """Image i as RGB uint8 and its target (boxes, labels and, with masks, masks; with panoptic
        annotations sem_seg), flipped horizontally if asked."""
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
        if self.panoptic is not None:
            sem = self.semantic(i)
            target["sem_seg"] = np.ascontiguousarray(sem[:, ::-1] if flip else sem)
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
