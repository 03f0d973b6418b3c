"""gnhub.pq: panoptic quality as panopticapi's pq_compute scores it. A hand-built image whose PQ is
worked out below (a TP, an FP, an FN, a crowd region, VOID pixels, stuff), a randomized set held to
numbers panopticapi itself gave (tests/data/real_runs/panopticapi_pq_random.json), and the errors of
bad annotations. gnhub eval's PQ of a real panoptic model: tests/test_d2_panoptic.py."""
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REAL_RUNS
from PIL import Image

from gnhub.errors import GnhubError
from gnhub.panoptic_format import id_png
from gnhub.pq import add_counts, category_map, image_counts, read_panoptic, summarize

RECORDING = REAL_RUNS / "panopticapi_pq_random.json"
CATEGORIES = [{"id": 1, "name": "person", "isthing": 1}, {"id": 3, "name": "car", "isthing": 1},
              {"id": 7, "name": "train", "isthing": 1}, {"id": 92, "name": "banner", "isthing": 0},
              {"id": 100, "name": "cardboard", "isthing": 0}, {"id": 149, "name": "road", "isthing": 0},
              {"id": 200, "name": "rug-merged", "isthing": 0}]


def write_set(root: Path, name: str, maps: dict[int, np.ndarray], info: dict[int, list[dict]]) -> Path:
    """<root>/<name>.json (COCO panoptic: images, annotations, CATEGORIES) and the PNGs in <root>/<name>/."""
    (root / name).mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for image_id, seg in maps.items():
        (root / name / f"{image_id}.png").write_bytes(id_png(seg))
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": seg.shape[0], "width": seg.shape[1]})
        anns.append({"image_id": image_id, "file_name": f"{image_id}.png", "segments_info": info[image_id]})
    (root / f"{name}.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES}))
    return root / f"{name}.json"


def segments(seg: np.ndarray, categories: dict[int, int], crowd=()) -> list[dict]:
    return [{"id": int(i), "category_id": categories[int(i)], "iscrowd": int(i in crowd), "area": int(n)}
            for i, n in zip(*np.unique(seg, return_counts=True)) if i]


def score(gt_json: Path, pred_json: Path) -> dict:
    """gnhub.pq over a prediction set written as panopticapi reads one (PNGs beside its JSON)."""
    gt = json.loads(gt_json.read_text())
    panoptic = read_panoptic(gt_json, None, {im["id"]: im for im in gt["images"]})
    counts = {}
    for ann in json.loads(pred_json.read_text())["annotations"]:
        rgb = np.asarray(Image.open(pred_json.with_suffix("") / ann["file_name"]), dtype=np.int64)
        seg = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        add_counts(counts, image_counts(panoptic, ann["image_id"], seg, ann["segments_info"],
                                        {c["id"]: c["id"] for c in CATEGORIES}))
    return summarize(panoptic, counts)


def hand_case(root: Path) -> tuple[Path, Path]:
    """One 10x10 image. Ground truth: person 1 (rows 0-3, cols 0-4), car 2 (rows 0-3, cols 5-9),
    a person crowd 3 (rows 4-9, cols 0-1), road 4 (stuff, rows 6-9, cols 2-9), VOID rows 4-5 of
    cols 2-9. Prediction: person 11 (rows 0-3, cols 0-3), person 12 (rows 0-3, cols 4-9), person
    13 (the crowd's pixels), road 14 (rows 5-9, cols 2-9), banner 15 (row 4 of cols 2-9: VOID).
      person 11 ~ 1: IoU 16 / (16 + 20 - 16) = 0.8, a TP; person 12 matches nothing (car 2 is
        another category; IoU 4 / 40 with person 1), none of it VOID or crowd: an FP;
      car 2 unmatched: an FN; crowd 3 is not scored, and person 13, all in it, neither;
      road 14 ~ 4: 32 in common, 8 of its 40 pixels VOID: IoU 32 / (40 + 32 - 32 - 8) = 1, a TP;
      banner 15, all VOID: not scored; train, cardboard and rug-merged: nothing to score.
    person: PQ 0.8 / 1.5 = 8/15, SQ 0.8, RQ 2/3; car: 0, 0, 0; road: 1, 1, 1.
    Things (2): PQ 4/15, SQ 0.4, RQ 1/3; Stuff (1): 1, 1, 1; All (3): 23/45, 0.6, 5/9 (panopticapi's
    pq_compute, run once on this case as on random_case, gave these too)."""
    gt, pred = np.zeros((10, 10), np.int64), np.zeros((10, 10), np.int64)
    gt[0:4, 0:5], gt[0:4, 5:], gt[4:, 0:2], gt[6:, 2:] = 1, 2, 3, 4
    pred[0:4, 0:4], pred[0:4, 4:], pred[4:, 0:2], pred[5:, 2:], pred[4, 2:] = 11, 12, 13, 14, 15
    gt_json = write_set(root, "gt", {5: gt}, {5: segments(gt, {1: 1, 2: 3, 3: 1, 4: 149}, crowd={3})})
    return gt_json, write_set(root, "pred", {5: pred}, {5: segments(pred, {11: 1, 12: 1, 13: 1, 14: 149, 15: 92})})


def test_a_hand_built_image_scores_what_panopticapi_semantics_give(tmp_path):
    result = score(*hand_case(tmp_path))
    expect = {"All": (23 / 45, 0.6, 5 / 9, 3), "Things": (4 / 15, 0.4, 1 / 3, 2), "Stuff": (1.0, 1.0, 1.0, 1)}
    for kind, (pq, sq, rq, n) in expect.items():
        assert result[kind] == pytest.approx({"PQ": pq, "SQ": sq, "RQ": rq, "categories": n}, abs=1e-12), kind


def random_case(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """Three images of overlapping random rectangles (ids anywhere in 1..256^3 - 1, things
    sometimes crowds), VOID patches; the prediction: most ground-truth segments shifted by a few
    pixels, some in another category, plus random segments."""
    rng = np.random.default_rng(seed)
    ids = [c["id"] for c in CATEGORIES]
    gt_maps, gt_info, pred_maps, pred_info = {}, {}, {}, {}
    for image_id in (1, 2, 3):
        h, w = 20 + 4 * image_id, 30
        gt, cats, crowd = np.zeros((h, w), np.int64), {}, set()
        for _ in range(9):
            sid, y, x = int(rng.integers(1, 2**24)), int(rng.integers(0, h - 3)), int(rng.integers(0, w - 3))
            gt[y:y + int(rng.integers(3, 12)), x:x + int(rng.integers(3, 14))] = sid
            cats[sid] = int(rng.choice(ids))
            if cats[sid] < 92 and rng.random() < 0.2:
                crowd.add(sid)
        for _ in range(2):
            y, x = int(rng.integers(0, h - 2)), int(rng.integers(0, w - 2))
            gt[y:y + int(rng.integers(2, 6)), x:x + int(rng.integers(2, 6))] = 0
        pred, pcats = np.zeros_like(gt), {}
        sources = [i for i in np.unique(gt).tolist() if i] + [None, None]
        for k in rng.permutation(len(sources)):
            sid = int(rng.integers(1, 2**24))
            if sources[k] is None:
                y, x = int(rng.integers(0, h - 3)), int(rng.integers(0, w - 3))
                pred[y:y + int(rng.integers(3, 10)), x:x + int(rng.integers(3, 10))] = sid
                pcats[sid] = int(rng.choice(ids))
            elif rng.random() < 0.8:
                mask = np.roll(gt == sources[k], (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1))
                pred[mask] = sid
                pcats[sid] = cats[sources[k]] if rng.random() < 0.85 else int(rng.choice(ids))
        gt_maps[image_id], gt_info[image_id] = gt, segments(gt, cats, crowd)
        pred_maps[image_id], pred_info[image_id] = pred, segments(pred, pcats)
    return write_set(root, "gt", gt_maps, gt_info), write_set(root, "pred", pred_maps, pred_info)


def test_a_random_set_scores_what_panopticapi_gave(tmp_path):
    recorded = json.loads(RECORDING.read_text())
    result = score(*random_case(tmp_path, recorded["seed"]))
    for kind in ("All", "Things", "Stuff"):
        theirs = recorded["results"][kind]
        assert result[kind] == pytest.approx({"PQ": theirs["pq"], "SQ": theirs["sq"], "RQ": theirs["rq"],
                                              "categories": theirs["n"]}, rel=1e-12, abs=1e-15), kind
    assert 0 < result["All"]["PQ"] < 1 and result["Things"]["categories"] and result["Stuff"]["categories"]


def _break(tmp_path, change) -> tuple[Path, dict]:
    gt_json, _ = hand_case(tmp_path)
    data = json.loads(gt_json.read_text())
    change(data, gt_json.with_suffix(""))
    gt_json.write_text(json.dumps(data))
    return gt_json, {im["id"]: im for im in data["images"]}


def _drop_png(data, folder):
    (folder / "5.png").unlink()


def _shrink_png(data, folder):
    Image.new("RGB", (9, 10)).save(folder / "5.png")


@pytest.mark.parametrize("change, message", [
    (lambda d, f: Image.new("L", (10, 10)).save(f / "5.png"), "5.png: is a L image; panoptic PNGs hold segment ids"),
    (lambda d, f: (f / "5.png").write_bytes(b"not a png"), "5.png: not a readable image"),
    (_drop_png, r"5.png: no such panoptic PNG; check --panoptic-images"),
    (_shrink_png, r"5.png: is 9x10, but image 5 \(5.jpg\) is 10x10"),
    (lambda d, f: d["annotations"][0]["segments_info"][0].update(category_id=2), "category_id 2, which 'categories'"),
    (lambda d, f: d["annotations"][0]["segments_info"][0].update(category_id=[1]), r"category_id \[1\], which"),
    (lambda d, f: d["annotations"][0].update(image_id=6), "image 6: is not an image of the instances file"),
    (lambda d, f: d["annotations"][0].update(image_id=[5]), r"image \[5\]: image_id is \[5\]; expected a whole"),
    (lambda d, f: d["annotations"][0].update(file_name="../5.png"), "leads outside the image folder"),
    (lambda d, f: d["annotations"][0]["segments_info"][1].update(id=1), "segment id 1 is used twice"),
    (lambda d, f: d["categories"][0].pop("isthing"), "'categories' must be a list of objects with id, name, isthing"),
    (lambda d, f: d.update(annotations=[]), "annotates no images"),
])
def test_bad_annotations_are_one_clear_error_before_any_scoring(tmp_path, change, message):
    from gnhub.cli import flags

    path, images = _break(tmp_path, change)
    with pytest.raises(GnhubError) as e:
        read_panoptic(path, None, images)
    assert re.search(message, flags(str(e.value), "eval")), str(e.value)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["annotations"][0]["segments_info"].pop(1), r"5.png: holds segment ids \[2\] that .*gt.json does not "
     "list for image 5"),
    (lambda d: d["annotations"][0]["segments_info"][0].update(area=19), "segment 1 has 20 pixels, .* says area 19"),
])
def test_a_png_that_disagrees_with_its_annotations_is_refused_as_it_is_scored(tmp_path, change, message):
    path, images = _break(tmp_path, lambda d, f: change(d))
    panoptic = read_panoptic(path, None, images)
    with pytest.raises(GnhubError, match=message):
        image_counts(panoptic, 5, np.zeros((10, 10), np.int64), [], {})
    with pytest.raises(GnhubError, match=r"5.png: is 10x10, its image 8x10"):
        image_counts(panoptic, 5, np.zeros((10, 8), np.int64), [], {})


def test_model_categories_map_by_coco_id_or_by_name_and_are_checked(tmp_path):
    gt_json, _ = hand_case(tmp_path)
    panoptic = read_panoptic(gt_json, None, {5: {"id": 5, "file_name": "5.jpg", "width": 10, "height": 10}})
    coco = [{"id": 1, "name": "person", "isthing": 1}, {"id": 149, "name": "road", "isthing": 0}]
    assert category_map(panoptic, coco) == {1: 1, 149: 149}
    labels = [{"id": 0, "name": "Car", "isthing": 1}, {"id": 1, "name": "Rug-Merged", "isthing": 0}]
    assert category_map(panoptic, labels) == {0: 3, 1: 200}
    with pytest.raises(GnhubError, match=r"do not hold 1 of the model's 2 panoptic categories \(road \(theirs: car"):
        category_map(panoptic, [coco[0], {"id": 3, "name": "road", "isthing": 0}])
    with pytest.raises(GnhubError, match=r"do not hold 1 of the model's 2 .*\(sky\)"):
        category_map(panoptic, [labels[0], {"id": 1, "name": "sky", "isthing": 0}])


if __name__ == "__main__":
    # The recording: PYTHONPATH=<panopticapi checkout> python tests/test_pq.py (panopticapi's
    # pq_compute on random_case(seed 0); its evaluation.py needs numpy and PIL only).
    import contextlib
    import io
    import tempfile

    from panopticapi.evaluation import pq_compute

    seed = 0
    with tempfile.TemporaryDirectory() as tmp:
        gt_json, pred_json = random_case(Path(tmp), seed)
        with contextlib.redirect_stdout(io.StringIO()):
            results = pq_compute(str(gt_json), str(pred_json))
    results.pop("per_class")
    RECORDING.write_text(json.dumps({
        "source": "cocodataset/panopticapi 7bb4655548f98f3fedc07bf37e9040a992b054b0, panopticapi/evaluation.py "
                  "pq_compute on tests/test_pq.py's random_case(seed)",
        "command": "PYTHONPATH=<panopticapi checkout> python tests/test_pq.py", "seed": seed, "results": results},
        indent=1) + "\n")
    print(RECORDING, file=sys.stderr)
