"""A panoptic result in COCO panoptic format (no torch): the segment map as a PNG whose colour
encodes the segment id (id = R + 256 G + 256^2 B, as panopticapi's id2rgb), and the image's
annotation record with its segments_info."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from .config import COCO_CLASSES, COCO_PANOPTIC_STUFF

__all__ = ["COCO_STUFF_IDS", "COCO_THING_IDS", "categories", "id_png", "segments_json"]

# COCO's category ids of its 80 thing classes (in COCO_CLASSES order) and of the 53 stuff classes of
# COCO panoptic (in COCO_PANOPTIC_STUFF order after "things"; detectron2's builtin_meta.py).
COCO_THING_IDS = (*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83),
                  *range(84, 91))
COCO_STUFF_IDS = (92, 93, 95, 100, 107, 109, 112, 118, 119, 122, 125, 128, 130, 133, 138, 141, 144, 145, 147, 148, 149,
                  151, 154, 155, 156, 159, 161, 166, 168, 171, 175, 176, 177, 178, 180, 181, *range(184, 201))


def categories(classes: tuple[str, ...], stuff: tuple[str, ...]) -> list[dict]:
    """A panoptic model's categories as its segments_info names them, things then stuff (in label
    order, stuff's label 0 "things" left out): id (COCO's where the model's classes are COCO's, else
    the label: things 0.., stuff after them), name and isthing."""
    coco = classes == COCO_CLASSES and stuff == COCO_PANOPTIC_STUFF
    things = [{"id": COCO_THING_IDS[i] if coco else i, "name": name, "isthing": 1} for i, name in enumerate(classes)]
    return things + [{"id": COCO_STUFF_IDS[j - 1] if coco else len(classes) + j - 1, "name": stuff[j], "isthing": 0}
                     for j in range(1, len(stuff))]


def id_png(seg: np.ndarray) -> bytes:
    """The (H, W) segment ids as panopticapi's RGB PNG (0: no segment)."""
    seg = np.asarray(seg, dtype=np.uint32)
    rgb = np.stack([seg % 256, seg // 256 % 256, seg // 65536 % 256], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def segments_json(seg: np.ndarray, segments: np.ndarray, classes: tuple[str, ...], stuff: tuple[str, ...],
                  image_id, file_name: str, scores=None) -> dict:
    """COCO panoptic annotation record of one image: per segment its id, category_id and the
    category's name (as `categories` says them), isthing, iscrowd 0, area and bbox [x, y, w, h]
    of its pixels, and a thing's detection score where `scores` (by detection) are given."""
    cats = categories(classes, stuff)
    seg = np.asarray(seg)
    info = []
    for sid, isthing, category, instance, _ in np.asarray(segments).tolist():
        ys, xs = np.nonzero(seg == sid)
        cat = cats[category if isthing else len(classes) + category - 1]
        row = {"id": sid, "category_id": cat["id"], "category": cat["name"], "isthing": int(isthing), "iscrowd": 0,
               "area": int(len(xs)),
               "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
               if len(xs) else [0, 0, 0, 0]}
        if isthing and scores is not None:
            row["score"] = round(float(scores[instance]), 5)
        info.append(row)
    return {"image_id": image_id, "file_name": file_name, "segments_info": info}
