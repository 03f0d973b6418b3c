"""COCO-format instance annotations, read and checked completely before any model runs (shared by
evaluation and fine-tuning). A file that is not COCO, ids that are not whole numbers, numbers that
are not finite, boxes and polygons outside their image, an RLE that does not cover its image
exactly: one error naming the file and the record. No torch, no pycocotools."""
from __future__ import annotations

import contextlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import GnhubError

__all__ = ["BORDER", "Instances", "MAX_SIDE", "POLYGON_MARGIN", "check_file_name", "check_rle", "check_unique",
           "check_whole", "pycoco", "read_instances", "read_json_object", "short_repr"]

BORDER = 1.0  # pixels a box may extend past its image (rounding in real annotations)
MAX_SIDE = 100_000  # pixels: larger declared images are not real
# Polygon points may lie this many image sizes outside the image (drawn past the edge); beyond,
# rasterising them would cost work out of all proportion to the image.
POLYGON_MARGIN = 1.0


@dataclass
class Instances:
    """A checked instances file: its parsed JSON (for pycocotools), images by id, categories in
    id order."""

    path: Path
    data: dict
    images: dict[int, dict]
    categories: list[dict]

    @property
    def annotations(self) -> list[dict]:
        return self.data["annotations"]

    def require_masks(self) -> None:
        """Every annotation has a segmentation (checked when read): what mask AP and mask training need."""
        bare = next((a for a in self.annotations if a.get("segmentation") is None), None)
        if bare is not None:
            raise GnhubError(f"{self.path}: annotation {short_repr(bare['id'])} has no segmentation; masks need "
                             "polygons or an RLE for every instance")


def read_json_object(path: Path, what: str, keys: str) -> dict:
    """The JSON object in `path`, a `what` file holding `keys`, or one clear error naming it."""
    if not path.is_file():
        raise GnhubError(f"{path}: no such {what} file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise GnhubError(f"{path}: not a {what} file ({type(e).__name__}: {str(e)[:80]})") from None
    if not isinstance(data, dict):
        raise GnhubError(f"{path}: not a {what} file: expected an object with {keys}, not a {type(data).__name__}")
    return data


def read_instances(path: str | Path, masks: bool = True) -> Instances:
    """The instances file at `path`, every record checked (segmentations where present); with
    `masks`, every annotation needs one (polygons or RLE). At least one image is required."""
    path = Path(path)
    data = read_json_object(path, "COCO-format instances", "images, annotations and categories")
    cats = _records(data, "categories", path, ("id", "name"))
    for c in cats:
        check_whole(c["id"], f"{path}: category {c['id']!r}: id")
        if not isinstance(c["name"], str) or not c["name"]:
            raise GnhubError(f"{path}: category {c['id']!r}: name must be text")
    check_unique([c["id"] for c in cats], path, "category")
    images = {}
    records = _records(data, "images", path, ("id", "file_name", "width", "height"))
    for im in records:
        where = f"{path}: image {im['id']!r}"
        check_whole(im["id"], f"{where}: id")
        for side in ("width", "height"):
            if not (check_whole(im[side], f"{where}: {side}") and 0 < im[side] <= MAX_SIDE):
                raise GnhubError(f"{where}: {side} {im[side]!r} must be 1 to {MAX_SIDE} pixels")
        check_file_name(im["file_name"], where)
        images[im["id"]] = im
    check_unique([im["id"] for im in records], path, "image")
    if not images:
        raise GnhubError(f"{path}: holds no images; there is nothing to evaluate or train on")
    known = {c["id"] for c in cats}
    raw = data.get("annotations")
    if isinstance(raw, list) and any(isinstance(a, dict) and "segments_info" in a for a in raw):
        raise GnhubError(f"{path}: is a COCO panoptic annotation file (segments_info); box and mask AP and training "
                         "read an instances file (instances_val2017.json): give that, and this one to gnhub eval "
                         "--panoptic-annotations for PQ")
    anns = _records(data, "annotations", path, ("id", "image_id", "category_id", "bbox"))
    for ann in anns:
        _check_annotation(ann, images, known, path)
    check_unique([a["id"] for a in anns], path, "annotation")
    instances = Instances(path, data, images, sorted(cats, key=lambda c: c["id"]))
    if masks:
        instances.require_masks()
    return instances


def _records(data: dict, key: str, path: Path, fields: tuple[str, ...]) -> list[dict]:
    records = data.get(key)
    if not isinstance(records, list) or not all(isinstance(r, dict) and set(fields) <= set(r) for r in records):
        raise GnhubError(f"{path}: not a COCO-format instances file: '{key}' must be a list of objects with "
                         f"{', '.join(fields)}")
    return records


def check_whole(value, where: str) -> bool:
    if isinstance(value, bool) or not isinstance(value, int):
        raise GnhubError(f"{where} is {short_repr(value)}; expected a whole number")
    return True


def _number(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise GnhubError(f"{where} is {short_repr(value)}; expected a finite number")
    return float(value)


def check_unique(ids: list, path: Path, what: str) -> None:
    seen = set()
    for i in ids:
        if i in seen:
            raise GnhubError(f"{path}: {what} id {i!r} is used twice; ids must be unique")
        seen.add(i)


def short_repr(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _declared(value, ids) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value in ids


def check_file_name(name, where: str) -> None:
    """A path relative to the image folder that stays inside it."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        raise GnhubError(f"{where}: file_name {short_repr(name)} must be a relative path of the image")
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts:
        raise GnhubError(f"{where}: file_name {name!r} leads outside the image folder; it must be relative to it")


def _check_annotation(ann: dict, images: dict, categories: set, path: Path) -> None:
    where = f"{path}: annotation {short_repr(ann['id'])}"
    check_whole(ann["id"], f"{where}: id")
    if not _declared(ann["image_id"], images):
        raise GnhubError(f"{where}: image_id {short_repr(ann['image_id'])} is not an image the file declares")
    if not _declared(ann["category_id"], categories):
        raise GnhubError(f"{where}: category_id {short_repr(ann['category_id'])} is not declared in categories "
                         f"(ids {sorted(categories)[:10]})")
    im = images[ann["image_id"]]
    w, h = im["width"], im["height"]
    where = f"{where} of {im['file_name']}"
    box = ann["bbox"]
    if not isinstance(box, list) or len(box) != 4:
        raise GnhubError(f"{where}: bbox {short_repr(box)} is not [x, y, width, height]")
    x, y, bw, bh = (_number(v, f"{where}: bbox value") for v in box)
    if bw < 0 or bh < 0 or x < -BORDER or y < -BORDER or x + bw > w + BORDER or y + bh > h + BORDER:
        raise GnhubError(f"{where}: box {box} lies outside the {w}x{h} image")
    if ann.get("iscrowd", 0) not in (0, 1):  # False and True count as 0 and 1
        raise GnhubError(f"{where}: iscrowd is {short_repr(ann['iscrowd'])}; expected 0 or 1")
    if "area" in ann and _number(ann["area"], f"{where}: area") < 0:
        raise GnhubError(f"{where}: area {ann['area']} is negative")
    seg = ann.get("segmentation")
    if seg is None:
        return
    if isinstance(seg, list):
        for poly in seg:
            _check_polygon(poly, w, h, where)
    elif isinstance(seg, dict):
        check_rle(seg, h, w, where)
    else:
        raise GnhubError(f"{where}: segmentation is {short_repr(seg)}; expected polygons or an RLE of the "
                         f"{h}x{w} image")


def _check_polygon(poly, w: int, h: int, where: str) -> None:
    if not isinstance(poly, list) or len(poly) % 2:
        raise GnhubError(f"{where}: a polygon must be a list of x, y pairs, not {short_repr(poly)}")
    for i, v in enumerate(poly):
        size = w if i % 2 == 0 else h
        if not -POLYGON_MARGIN * size <= _number(v, f"{where}: polygon coordinate") <= (1 + POLYGON_MARGIN) * size:
            raise GnhubError(f"{where}: polygon coordinate {v} lies far outside the {w}x{h} image")


def check_rle(seg: dict, h: int, w: int, where: str) -> None:
    """An RLE of exactly the h x w image: its runs (a list, or COCO's compressed text) are whole,
    non-negative and add up to h * w."""
    if list(seg.get("size", ())) != [h, w]:
        raise GnhubError(f"{where}: RLE size {short_repr(seg.get('size'))} is not the image's [{h}, {w}]")
    counts = seg.get("counts")
    if isinstance(counts, str):
        runs = _decode_counts(counts, where)
    elif isinstance(counts, list):
        runs = counts
        for c in runs:
            if check_whole(c, f"{where}: RLE count") and c < 0:
                raise GnhubError(f"{where}: RLE count {c} is negative")
    else:
        raise GnhubError(f"{where}: RLE counts must be a list or COCO's compressed text, not {short_repr(counts)}")
    if sum(runs) != h * w:
        raise GnhubError(f"{where}: RLE runs cover {sum(runs)} pixels, not the {h}x{w} = {h * w} of the image; "
                         "the mask is corrupt")


def _decode_counts(text: str, where: str) -> list[int]:
    """COCO's compressed RLE text (pycocotools' rleFrString): 5-bit groups from '0', each run
    after the second stored as the difference to the run two before."""
    runs: list[int] = []
    value, shift = 0, 0
    for ch in text:
        c = ord(ch) - 48
        if not 0 <= c < 64:
            raise GnhubError(f"{where}: RLE text holds {ch!r}, which COCO's compressed RLE does not use")
        value |= (c & 0x1F) << shift
        shift += 5
        if c & 0x20:
            continue
        if c & 0x10:
            value -= 1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if not 0 <= value < 2**32:
            raise GnhubError(f"{where}: RLE text decodes to a run of {value} pixels; the mask is corrupt")
        runs.append(value)
        value, shift = 0, 0
    if shift:
        raise GnhubError(f"{where}: RLE text ends in the middle of a run; the mask is corrupt")
    return runs


def pycoco(instances: Instances):
    """A pycocotools COCO object of checked annotations (nothing is read from disk again)."""
    try:
        # pycocotools is optional: only evaluation needs it
        from pycocotools.coco import COCO
    except ImportError:
        raise GnhubError("COCO masks and AP need pycocotools: pip install 'gnhub[coco]'") from None
    coco = COCO()
    coco.dataset = instances.data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
