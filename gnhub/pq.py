"""Panoptic quality (PQ, SQ, RQ) as panopticapi's pq_compute scores it (panopticapi/evaluation.py),
without panopticapi: COCO panoptic annotations (a JSON and a folder of segment-id PNGs) are read and
checked before any model runs, each image's predicted segment map is matched against its PNG into
per-category counts, and the counts of all images are averaged over categories. numpy and PIL, no
torch.

panopticapi's semantics: id 0 in a PNG is VOID; a prediction and a ground-truth segment of the same
category match where their IoU > 0.5, VOID pixels left out of the prediction's part of the union;
crowd segments (iscrowd) are never matched, and an unmatched prediction counts as a false positive
unless more than half of it lies in VOID or in its category's crowd region; PQ, SQ and RQ are taken
per category and averaged over the categories with any TP, FP or FN (all, things, stuff: the
annotations' isthing)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .coco import check_file_name, check_unique, check_whole, read_json_object, short_repr
from .errors import GnhubError

__all__ = ["KINDS", "OFFSET", "VOID", "Panoptic", "add_counts", "category_map", "image_counts", "read_ids",
           "read_panoptic", "summarize"]

OFFSET = 256 * 256 * 256  # a (ground truth, prediction) pair of ids as one number: gt * OFFSET + prediction
VOID = 0
KINDS = (("All", None), ("Things", 1), ("Stuff", 0))  # the averages, by the categories' isthing


@dataclass
class Panoptic:
    """Checked COCO panoptic annotations: the JSON's path, the PNG folder, categories by id (in the
    file's order) and each image's record (file_name, segments_info) by image id."""

    path: Path
    folder: Path
    categories: dict[int, dict]
    annotations: dict[int, dict]


def read_panoptic(path: str | Path, folder: str | Path | None, images: dict[int, dict],
                  options: tuple[str, str] = ("`annotations`", "`panoptic_images`")) -> Panoptic:
    """The panoptic annotations at `path` with their PNGs in `folder` (default: `path` without
    .json, as panopticapi's), every record checked against `images` (the instances file's, by
    id): each annotated image is one of them, its PNG exists and has its size. `options` name
    the instances file and the PNG folder in the errors."""
    path = Path(path)
    folder = Path(folder) if folder is not None else path.with_suffix("")
    data = read_json_object(path, "COCO panoptic annotation", "annotations and categories")
    cats = _records(data.get("categories"), path, "'categories'", ("id", "name", "isthing"))
    for c in cats:
        check_whole(c["id"], f"{path}: category {short_repr(c['id'])}: id")
        if not isinstance(c["name"], str) or not c["name"] or c["isthing"] not in (0, 1):
            raise GnhubError(f"{path}: category {c['id']}: needs a name and isthing 0 or 1")
    check_unique([c["id"] for c in cats], path, "category")
    if not folder.is_dir():
        raise GnhubError(f"{folder}: no such folder of panoptic PNGs; give it with {options[1]}")
    anns, known = {}, {c["id"] for c in cats}
    for ann in _records(data.get("annotations"), path, "'annotations'", ("image_id", "file_name", "segments_info")):
        where = f"{path}: annotation of image {short_repr(ann['image_id'])}"
        check_whole(ann["image_id"], f"{where}: image_id")
        if ann["image_id"] not in images or ann["image_id"] in anns:
            raise GnhubError(f"{where}: " + ("is given twice" if ann["image_id"] in anns else
                             f"is not an image of the instances file ({options[0]}); annotate its images"))
        check_file_name(ann["file_name"], where)
        segments = _records(ann["segments_info"], path, f"image {ann['image_id']}'s segments_info",
                            ("id", "category_id"))
        for s in segments:
            check_whole(s["id"], f"{where}: segment id")
            if not 0 < s["id"] < OFFSET or not (isinstance(s["category_id"], int) and s["category_id"] in known):
                raise GnhubError(f"{where}: segment {short_repr(s['id'])} " + (
                    f"has category_id {short_repr(s['category_id'])}, which 'categories' does not declare"
                    if 0 < s["id"] < OFFSET else "must have an id of 1 to 256^3 - 1 (0 is VOID)"))
            if s.get("iscrowd", 0) not in (0, 1):
                raise GnhubError(f"{where}: segment {s['id']}: iscrowd is {short_repr(s['iscrowd'])}; expected 0 or 1")
        check_unique([s["id"] for s in segments], path, f"image {ann['image_id']}'s segment")
        _check_png(folder / ann["file_name"], images[ann["image_id"]], options[1])
        anns[ann["image_id"]] = ann
    if not anns:
        raise GnhubError(f"{path}: annotates no images; there is no panoptic quality to score")
    return Panoptic(path, folder, {c["id"]: c for c in cats}, anns)


def _records(records, path: Path, what: str, fields: tuple[str, ...]) -> list[dict]:
    if not isinstance(records, list) or not all(isinstance(r, dict) and set(fields) <= set(r) for r in records):
        raise GnhubError(f"{path}: not a COCO panoptic annotation file: {what} must be a list of objects with "
                         f"{', '.join(fields)}")
    return records


def _open_png(png: Path, option: str = "`panoptic_images`") -> Image.Image:
    if not png.is_file():
        raise GnhubError(f"{png}: no such panoptic PNG; check {option}")
    try:
        im = Image.open(png)
    except (OSError, UnidentifiedImageError) as e:
        raise GnhubError(f"{png}: not a readable image ({type(e).__name__}); a panoptic PNG is needed") from None
    if im.mode not in ("RGB", "RGBA"):
        raise GnhubError(f"{png}: is a {im.mode} image; panoptic PNGs hold segment ids as RGB (R + 256 G + 256^2 B)")
    return im


def _check_png(png: Path, image: dict, option: str) -> None:
    with _open_png(png, option) as im:  # reads the header only
        size = im.size
    if size != (image["width"], image["height"]):
        raise GnhubError(f"{png}: is {size[0]}x{size[1]}, but image {image['id']} ({image['file_name']}) is "
                         f"{image['width']}x{image['height']}; is it that image's?")


def read_ids(png: Path, shape: tuple[int, int]) -> np.ndarray:
    """The PNG's segment ids (panopticapi's rgb2id)."""
    try:
        with _open_png(png) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint32)
    except OSError as e:
        raise GnhubError(f"{png}: not a readable image ({e}); a panoptic PNG is needed") from None
    if rgb.shape[:2] != tuple(shape):
        raise GnhubError(f"{png}: is {rgb.shape[1]}x{rgb.shape[0]}, its image {shape[1]}x{shape[0]}; is it that "
                         "image's?")
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def category_map(panoptic: Panoptic, categories: list[dict]) -> dict[int, int]:
    """The annotations' category id of each of a model's categories (panoptic_format.categories):
    the same id where the model's are COCO's (not its labels 0..n-1; the name and isthing
    checked), else found by name (spaces and underscores alike). A category the annotations lack is refused: panopticapi
    refuses predictions of unknown categories."""
    def norm(name: str) -> str:
        return name.replace("_", " ").lower()

    by_name = {norm(c["name"]): c for c in panoptic.categories.values()}
    coco = [c["id"] for c in categories] != list(range(len(categories)))
    out, missing = {}, []
    for cat in categories:
        theirs = panoptic.categories.get(cat["id"]) if coco else by_name.get(norm(cat["name"]))
        if theirs is None or norm(theirs["name"]) != norm(cat["name"]) or theirs["isthing"] != cat["isthing"]:
            missing.append(cat["name"] if theirs is None else f"{cat['name']} (theirs: {theirs['name']}, isthing "
                           f"{theirs['isthing']})")
            continue
        out[cat["id"]] = theirs["id"]
    if missing:
        raise GnhubError(f"{panoptic.path}: its categories do not hold {len(missing)} of the model's "
                         f"{len(categories)} panoptic categories ({', '.join(missing[:4])}); are they for this model?")
    return out


def image_counts(panoptic: Panoptic, image_id: int, seg: np.ndarray, segments: list[dict],
                 categories: dict[int, int]) -> dict[str, list]:
    """panopticapi's counts of one image: its predicted segment map `seg` (ids, 0 for none) and
    `segments` (id and category_id, the model's) against the image's PNG, with `categories` (the
    model's id -> the annotations', category_map). -> {"category id": [IoU sum, TP, FP, FN]} of
    the categories with any (text keys: a JSON line of the resume folder)."""
    ann = panoptic.annotations[image_id]
    png = panoptic.folder / ann["file_name"]
    seg = np.asarray(seg)
    pairs = read_ids(png, seg.shape).astype(np.uint64) * OFFSET + seg.astype(np.uint64)
    keys, counts = np.unique(pairs, return_counts=True)
    inter = {(int(k) // OFFSET, int(k) % OFFSET): int(n) for k, n in zip(keys, counts)}
    gt_area, pred_area = {}, {}
    for (g, p), n in inter.items():
        gt_area[g], pred_area[p] = gt_area.get(g, 0) + n, pred_area.get(p, 0) + n
    gt = {s["id"]: s for s in ann["segments_info"]}
    stray = sorted(set(gt_area) - set(gt) - {VOID})
    if stray:
        raise GnhubError(f"{png}: holds segment ids {stray[:5]} that {panoptic.path} does not list for image "
                         f"{image_id}; is it that image's PNG?")
    for s in gt.values():
        if "area" in s and s["area"] != gt_area.get(s["id"], 0):
            raise GnhubError(f"{png}: segment {s['id']} has {gt_area.get(s['id'], 0)} pixels, {panoptic.path} says "
                             f"area {short_repr(s['area'])}; the PNG and the annotations disagree")
    pred = {s["id"]: categories[s["category_id"]] for s in segments if pred_area.get(s["id"])}
    stats: dict[int, list] = {}

    def add(category: int, field: int, value=1) -> None:
        stats.setdefault(category, [0.0, 0, 0, 0])[field] += value

    gt_matched, pred_matched = set(), set()
    for (g, p), n in inter.items():
        if g not in gt or p not in pred or gt[g].get("iscrowd", 0) == 1 or gt[g]["category_id"] != pred[p]:
            continue
        iou = n / (pred_area[p] + gt_area[g] - n - inter.get((VOID, p), 0))
        if iou > 0.5:
            add(pred[p], 0, iou)
            add(pred[p], 1)
            gt_matched.add(g)
            pred_matched.add(p)
    crowd = {}
    for g, s in gt.items():
        if g in gt_matched:
            continue
        if s.get("iscrowd", 0) == 1:  # crowd regions are not scored
            crowd[s["category_id"]] = g
            continue
        add(s["category_id"], 3)
    for p, category in pred.items():
        if p in pred_matched:
            continue
        ignored = inter.get((VOID, p), 0) + (inter.get((crowd[category], p), 0) if category in crowd else 0)
        if ignored / pred_area[p] <= 0.5:  # mostly in VOID or its category's crowd: not scored
            add(category, 2)
    return {str(c): v for c, v in stats.items()}


def add_counts(total: dict[str, list], counts: dict[str, list]) -> dict[str, list]:
    """`total` with an image's counts added (image_counts' form)."""
    for c, v in counts.items():
        total[c] = [a + b for a, b in zip(total.get(c, [0.0, 0, 0, 0]), v)]
    return total


def summarize(panoptic: Panoptic, counts: dict[str, list]) -> dict[str, dict]:
    """PQ, SQ and RQ (fractions, as panopticapi's pq_average) of the summed counts, averaged over
    the categories (all, things, stuff) with any TP, FP or FN, and how many those are; 0 where
    none has."""
    out = {}
    for kind, isthing in KINDS:
        pq = sq = rq = 0.0
        n = 0
        for c, cat in panoptic.categories.items():
            if isthing is not None and cat["isthing"] != isthing:
                continue
            iou, tp, fp, fn = counts.get(str(c), (0.0, 0, 0, 0))
            if tp + fp + fn == 0:
                continue
            n += 1
            pq += iou / (tp + 0.5 * fp + 0.5 * fn)
            sq += iou / tp if tp else 0.0
            rq += tp / (tp + 0.5 * fp + 0.5 * fn)
        out[kind] = {"PQ": pq / n if n else 0.0, "SQ": sq / n if n else 0.0, "RQ": rq / n if n else 0.0,
                     "categories": n}
    return out
