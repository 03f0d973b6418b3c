"""Training data as mmdetection 3.3 reads it for these models: a COCO-format instance dataset
(CocoDataset), the random horizontal flip (RandomFlip 0.5) and aspect-ratio grouped batches
(DefaultSampler + AspectRatioBatchSampler), each a function of (seed, epoch) so that a resumed run
sees the data a straight run would."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import GnhubError
from ..modeling.transform import load_image

MIN_SIZE = 32  # mmdetection's filter_cfg min_size: images with a shorter side are skipped
BORDER = 1.0  # pixels a box may extend past the image (rounding in real annotations)


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
    """The trainable images of a COCO-format instances file, checked before any training.

    Classes are the file's categories in id order. As mmdetection: crowd annotations and boxes
    under one pixel wide or high are not trained on, degenerate polygons are dropped, images
    without annotations or with a side under 32 pixels are skipped. A file that is not COCO, a
    box outside its image, an undeclared category or a missing image is one error.
    """

    def __init__(self, annotations: str | Path, images: str | Path):
        self.path, self.images = Path(annotations), Path(images)
        data = _read_json(self.path)
        cats = _records(data, "categories", self.path, ("id", "name"))
        ids = [c["id"] for c in cats]
        if len(set(ids)) != len(ids) or not all(isinstance(i, int) and isinstance(c["name"], str)
                                                 for i, c in zip(ids, cats)):
            raise GnhubError(f"{self.path}: categories need unique integer ids and text names")
        cats = sorted(cats, key=lambda c: c["id"])
        self.classes = tuple(c["name"] for c in cats)
        self.category_ids = [c["id"] for c in cats]
        label_of = {c: i for i, c in enumerate(self.category_ids)}
        imgs = {}
        for im in _records(data, "images", self.path, ("id", "file_name", "width", "height")):
            if not (isinstance(im["width"], int) and isinstance(im["height"], int) and im["width"] > 0
                    and im["height"] > 0 and isinstance(im["file_name"], str)):
                raise GnhubError(f"{self.path}: image {im['id']!r} needs a file_name and positive integer "
                                 "width and height")
            imgs[im["id"]] = im
        per_image: dict = {i: [] for i in imgs}
        for ann in _records(data, "annotations", self.path, ("image_id", "category_id", "bbox")):
            per_image.setdefault(ann["image_id"], [])
            if ann["image_id"] not in imgs:
                raise GnhubError(f"{self.path}: annotation {ann.get('id')!r} is for image {ann['image_id']!r}, "
                                 "which the file does not declare")
            if ann["category_id"] not in label_of:
                raise GnhubError(f"{self.path}: annotation {ann.get('id')!r} has category_id {ann['category_id']!r}, "
                                 f"which is not declared in categories (ids {self.category_ids[:10]})")
            per_image[ann["image_id"]].append(ann)
        self.samples: list[Sample] = []
        for image_id in sorted(imgs):
            im, anns = imgs[image_id], per_image[image_id]
            if not anns or min(im["width"], im["height"]) < MIN_SIZE:
                continue
            self.samples.append(self._sample(im, anns, label_of))
        if not self.samples:
            raise GnhubError(f"{self.path}: no trainable image (each needs annotations and sides of at least "
                             f"{MIN_SIZE} pixels)")
        missing = [s.path for s in self.samples if not s.path.is_file()]
        if missing:
            raise GnhubError(f"{missing[0]}: no such image ({len(missing)} of the images in {self.path} are missing "
                             f"from {self.images}); check --images")

    def _sample(self, im: dict, anns: list[dict], label_of: dict) -> Sample:
        w, h = im["width"], im["height"]
        boxes, labels, segs = [], [], []
        for ann in anns:
            where = f"{self.path}: annotation {ann.get('id')!r} of {im['file_name']}"
            box = ann["bbox"]
            if (not isinstance(box, list) or len(box) != 4 or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)):
                raise GnhubError(f"{where}: bbox {box!r} is not [x, y, width, height]")
            x, y, bw, bh = box
            if bw < 0 or bh < 0 or x < -BORDER or y < -BORDER or x + bw > w + BORDER or y + bh > h + BORDER:
                raise GnhubError(f"{where}: box {box} lies outside the {w}x{h} image")
            seg = ann.get("segmentation")
            if ann.get("iscrowd") or ann.get("ignore") or bw < 1 or bh < 1 or ann.get("area", 1) <= 0:
                continue
            if isinstance(seg, list):
                seg = [p for p in seg if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
                if not seg:
                    continue  # mmdetection ignores an instance whose polygons are all degenerate
            elif not (isinstance(seg, dict) and isinstance(seg.get("counts"), (list, str))
                      and list(seg.get("size", ())) == [h, w]):
                raise GnhubError(f"{where}: segmentation is neither polygons nor an RLE of the {h}x{w} image")
            boxes.append([x, y, x + bw, y + bh])
            labels.append(label_of[ann["category_id"]])
            segs.append(seg)
        return Sample(im["id"], self.images / im["file_name"], w, h, np.asarray(boxes, np.float32).reshape(-1, 4),
                      np.asarray(labels, np.int64), segs)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int, flip: bool = False) -> tuple[np.ndarray, dict]:
        """Image i as RGB uint8 and its target (boxes, labels, masks), flipped horizontally if asked."""
        s = self.samples[i]
        rgb = load_image(s.path)
        if rgb.shape[:2] != (s.height, s.width):
            raise GnhubError(f"{s.path}: is {rgb.shape[1]}x{rgb.shape[0]}, but {self.path} says {s.width}x{s.height}")
        masks = _decode(s.segmentations, s.height, s.width)
        boxes = s.boxes.copy()
        if flip:
            rgb, masks = rgb[:, ::-1], masks[:, :, ::-1]
            boxes[:, 0], boxes[:, 2] = s.width - s.boxes[:, 2], s.width - s.boxes[:, 0]
        return np.ascontiguousarray(rgb), {"boxes": boxes, "labels": s.labels, "masks": np.ascontiguousarray(masks)}


def _read_json(path: Path):
    if not path.is_file():
        raise GnhubError(f"{path}: no such annotation file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GnhubError(f"{path}: not a COCO-format annotation file ({e})") from None


def _records(data, key: str, path: Path, fields: tuple[str, ...]) -> list[dict]:
    records = data.get(key) if isinstance(data, dict) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) and set(fields) <= set(r) for r in records):
        raise GnhubError(f"{path}: not a COCO-format instances file: '{key}' must be a list of objects with "
                         f"{', '.join(fields)}")
    return records


def _decode(segmentations: list, h: int, w: int) -> np.ndarray:
    """(N, h, w) bool masks, as mmdetection's LoadAnnotations(poly2mask=True) rasterises them."""
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
