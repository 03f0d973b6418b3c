"""A drawn COCO-format dataset (squares, discs, triangles on noise) to try fine-tuning end to
end without downloading data: polygons for squares and triangles, RLE for discs, one crowd
region per few images, and a few images without annotations, as real datasets have."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from ..files import Folder

__all__ = ["CLASSES", "write_shapes"]

CLASSES = ("square", "disc", "triangle")


def write_shapes(folder: str | Path, images: int, seed: int = 0, size: tuple[int, int] = (160, 224)) -> Path:
    """Writes `images` PNGs of about `size` (h, w; some portrait) and FOLDER/annotations.json
    (files.py: never over a file gnhub did not write)."""
    # pycocotools is optional: only polygon masks need it
    from pycocotools import mask as coco_mask

    with Folder(folder, "folder") as out:
        return _write_shapes(out, images, seed, size, coco_mask)


def _write_shapes(out, images: int, seed: int, size: tuple[int, int], coco_mask) -> Path:
    rng = np.random.default_rng(seed)
    records, anns = [], []
    for k in range(images):
        h, w = size if k % 3 else size[::-1]
        image = rng.integers(0, 70, (h, w, 3), dtype=np.uint8)
        name = f"{k:05d}.png"
        records.append({"id": k + 1, "file_name": name, "width": w, "height": h})
        shapes = 0 if k % 10 == 9 else int(rng.integers(1, 4))
        for _ in range(shapes):
            label = int(rng.integers(len(CLASSES)))
            r = int(rng.integers(10, min(h, w) // 4))
            cx, cy = int(rng.integers(r + 2, w - r - 2)), int(rng.integers(r + 2, h - r - 2))
            mask = np.zeros((h, w), np.uint8)
            colour = tuple(int(c) for c in rng.integers(120, 256, 3))
            if CLASSES[label] == "disc":
                cv2.circle(mask, (cx, cy), r, 1, -1)
                seg = {"size": [h, w], "counts": coco_mask.encode(np.asfortranarray(mask))["counts"].decode()}
            else:
                pts = [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)] \
                    if CLASSES[label] == "square" else [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
                cv2.fillPoly(mask, [np.array(pts, np.int32)], 1)
                seg = [[float(v) for p in pts for v in p]]
            image[mask.astype(bool)] = colour
            rle = seg if isinstance(seg, dict) else coco_mask.merge(coco_mask.frPyObjects(seg, h, w))
            box = [float(v) for v in coco_mask.toBbox(rle)]  # as COCO derives it, from the segmentation
            anns.append({"id": len(anns) + 1, "image_id": k + 1, "category_id": label + 1, "bbox": box,
                         "area": float(mask.sum()), "segmentation": seg, "iscrowd": 0})
        if k % 7 == 3:  # a crowd region, as COCO marks groups: not trained on
            anns.append({"id": len(anns) + 1, "image_id": k + 1, "category_id": 1, "bbox": [0.0, 0.0, 8.0, 8.0],
                         "area": 64.0, "segmentation": [[0, 0, 8, 0, 8, 8, 0, 8]], "iscrowd": 1})
        out.write(name, cv2.imencode(".png", image[:, :, ::-1])[1].tobytes())
    cats = [{"id": i + 1, "name": c, "supercategory": "shape"} for i, c in enumerate(CLASSES)]
    return out.write("annotations.json", json.dumps({"images": records, "annotations": anns,
                                                     "categories": cats}).encode("utf-8"))
