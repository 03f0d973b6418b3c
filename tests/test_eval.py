"""COCO evaluation on a tiny dataset with drawn objects and exact annotations."""
import json
import os
import subprocess
import sys

import numpy as np
import pycocotools.mask as coco_mask
import pytest
from PIL import Image
from test_cli import run

from gnhub import rle
from gnhub.coco import pycoco, read_instances
from gnhub.config import COCO_CLASSES
from gnhub.convert import convert
from gnhub.errors import GnhubError
from gnhub.evaluate import evaluate, score


def _tiny_coco(root, masks: bool = True):
    """Three images with a rectangle ('car') and an ellipse ('person'), annotated exactly (boxes
    only without `masks`)."""
    assert COCO_CLASSES[0] == "person" and COCO_CLASSES[2] == "car"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(3):
        h, w = 120 + 20 * i, 160
        img = np.full((h, w, 3), 90, np.uint8) + rng.integers(0, 20, (h, w, 3), dtype=np.uint8)
        yy, xx = np.mgrid[:h, :w]
        car = (yy >= 20 + 5 * i) & (yy < 60 + 5 * i) & (xx >= 10) & (xx < 90)
        person = ((yy - 80) / 25.0) ** 2 + ((xx - 120 + 4 * i) / 15.0) ** 2 < 1
        img[car], img[person] = (200, 40, 40), (40, 40, 200)
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": h, "width": w})
        for cat, m in ((3, car), (1, person)):
            ys, xs = np.nonzero(m)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "iscrowd": 0,
                         "area": int(m.sum()), **({"segmentation": rle.encode(m)} if masks else {}),
                         "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                                  float(ys.max() - ys.min() + 1)]})
    # like instances_val2017.json: every category listed (person = 1, car = 3), two annotated
    cats = [{"id": i + 1, "name": name} for i, name in enumerate(COCO_CLASSES)]
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


@pytest.fixture(scope="module")
def tiny_coco(session_dir):
    return _tiny_coco(session_dir("coco"))


def _as_results(anns, shift=0):
    out = []
    for a in anns:
        m = coco_mask.decode(a["segmentation"]).astype(bool)
        m = np.roll(m, shift, axis=1)
        x, y, w, h = a["bbox"]
        out.append({"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.9,
                    "bbox": [x + shift, y, w, h], "segmentation": rle.encode(m)})
    return out


def test_ground_truth_as_predictions_scores_one(tiny_coco):
    coco = pycoco(read_instances(tiny_coco / "instances.json"))
    metrics = score(coco, _as_results(coco.dataset["annotations"]))
    assert metrics["box"]["AP"] == 1.0 and metrics["mask"]["AP"] == 1.0
    assert metrics["box"]["AP50"] == 1.0 and metrics["mask"]["AP75"] == 1.0


def test_shifted_predictions_lower_ap_as_expected(tiny_coco):
    coco = pycoco(read_instances(tiny_coco / "instances.json"))
    small = score(coco, _as_results(coco.dataset["annotations"], shift=4))
    large = score(coco, _as_results(coco.dataset["annotations"], shift=40))
    for key in ("box", "mask"):
        assert small[key]["AP50"] == 1.0  # a 4 px shift keeps IoU above 0.5 ...
        assert 0 < small[key]["AP"] < 1.0  # ... but fails the strict thresholds
        assert large[key]["AP"] < small[key]["AP"]


def test_eval_cli_resumes_and_round_trips_rle(tiny_coco, small_source, tmp_path):
    model = tmp_path / "m"
    convert(small_source, model, verify=False)
    results = tmp_path / "r.json"
    args = [sys.executable, "-m", "gnhub", "eval", str(model), "--images", str(tiny_coco / "images"),
            "--annotations", str(tiny_coco / "instances.json"), "--results", str(results)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "3 images" in proc.stdout and "box" in proc.stdout and "mask" in proc.stdout
    first = json.loads(results.read_text())
    assert first and {r["category_id"] for r in first} <= set(range(1, 81))
    for r in first[:20]:  # our RLE is what pycocotools reads and writes
        m = coco_mask.decode(r["segmentation"])
        assert coco_mask.encode(np.asfortranarray(m))["counts"].decode() == r["segmentation"]["counts"]
    # interrupted after the first image: only the missing ones are predicted again
    part = results.with_name("r.json.parts") / "rank0.jsonl"
    lines = part.read_text().splitlines()
    part.write_text(lines[0] + "\n" + lines[1][:10])
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert len(part.read_text().splitlines()) == 3  # 1 kept, the cut line dropped, 2 redone
    assert json.loads(results.read_text()) == first


def test_eval_under_torchrun_matches_one_process(tiny_coco, small_source, tmp_path):
    model = tmp_path / "m"
    convert(small_source, model, verify=False)
    common = ["--images", str(tiny_coco / "images"), "--annotations", str(tiny_coco / "instances.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same arithmetic in every process
    single = subprocess.run([sys.executable, "-m", "gnhub", "eval", str(model), *common, "--results",
                             str(tmp_path / "one.json")], capture_output=True, text=True, env=env, timeout=600)
    assert single.returncode == 0, single.stderr
    dist = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29517", "-m", "gnhub", "eval", str(model), *common, "--results",
                           str(tmp_path / "two.json")], capture_output=True, text=True, env=env, timeout=600)
    assert dist.returncode == 0, dist.stderr[-2000:]
    assert sorted(map(json.dumps, json.loads((tmp_path / "two.json").read_text()))) == \
        sorted(map(json.dumps, json.loads((tmp_path / "one.json").read_text())))
    assert single.stdout.splitlines()[-2:] == dist.stdout.splitlines()[-2:]  # the same AP table


def _edit(tiny_coco, tmp_path, change):
    data = json.loads((tiny_coco / "instances.json").read_text())
    change(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("annotations"), "'annotations' must be a list"),
    (lambda d: d.pop("categories"), "'categories' must be a list"),
    (lambda d: d["annotations"][0].pop("bbox"), "'annotations' must be a list of objects with id, image_id"),
    (lambda d: d.update(images=[]), "holds no images"),
    (lambda d: d["annotations"][0].update(segmentation=[[10, 10, float("nan"), 20, 30, 30]]),
     "polygon coordinate is nan; expected a finite number"),
    (lambda d: d["annotations"][0].update(segmentation=[[10, 10, 1e30, 20, 30, 30]]), "far outside the 160x120"),
    (lambda d: d["annotations"][0].update(image_id=[1]), "image_id \\[1\\] is not an image"),
    (lambda d: d["annotations"][0].update(area="big"), "area is 'big'"),
    (lambda d: d["annotations"][0].update(id=2), "annotation id 2 is used twice"),
    (lambda d: d["images"][0].update(file_name="../../etc/passwd"), "leads outside the image folder"),
    (lambda d: d["annotations"][0]["segmentation"].update(counts="0" + d["annotations"][0]["segmentation"]["counts"]),
     "RLE runs cover"),
    (lambda d: d["annotations"][0]["segmentation"].update(counts="00~"), "RLE text holds '~'"),
    (lambda d: d["annotations"][0]["segmentation"].update(counts=[19200, -5, 5]), "RLE count -5 is negative"),
])
def test_annotations_are_checked_before_any_model_runs(tiny_coco, tmp_path, change, message):
    path = _edit(tiny_coco, tmp_path, change)
    with pytest.raises(GnhubError, match=message):
        read_instances(path)
    proc = run("eval", "no-such-model", "--images", tiny_coco, "--annotations", path)
    assert proc.returncode == 1 and str(path) in proc.stderr and "no-such-model" not in proc.stderr, proc.stderr


def test_a_resume_must_be_the_same_run_and_users_results_are_never_replaced(tiny_coco, small_dir, tmp_path):
    from gnhub import load

    images, annotations = tiny_coco / "images", tiny_coco / "instances.json"
    a = load(small_dir)
    results = tmp_path / "r.json"
    first = evaluate(a, images=images, annotations=annotations, results=results)
    assert first["images"] == 3 and results.is_file()
    # the same run, finished: nothing is computed again
    again = evaluate(a, images=images, annotations=annotations, results=results)
    assert again["box"] == first["box"] and again["images_per_second"] is None
    b = load(small_dir)
    b.config.roi_heads.score_thresh = 0.3  # another model: its own AP, never A's
    with pytest.raises(GnhubError, match=r"r.json: holds the results of another evaluation \(other model\)"):
        evaluate(b, images=images, annotations=annotations, results=results)
    other = _edit(tiny_coco, tmp_path, lambda d: d["annotations"].pop())
    with pytest.raises(GnhubError, match="other annotations"):
        evaluate(a, images=images, annotations=other, results=results)
    mine = tmp_path / "mine.json"  # a user's own COCO results list
    mine.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}]))
    before = mine.read_text()
    with pytest.raises(GnhubError, match="mine.json: exists, and gnhub did not write it"):
        evaluate(a, images=images, annotations=annotations, results=mine)
    assert mine.read_text() == before
    results.write_text(results.read_text().replace("]", ", {}]", 1))  # changed since gnhub wrote it
    with pytest.raises(GnhubError, match="gnhub did not write it \\(or it changed since\\)"):
        evaluate(a, images=images, annotations=annotations, results=results)
    part = tmp_path / "p.json.parts"  # a resume folder made by hand, even a copy of gnhub's run.json: not gnhub's
    part.mkdir()
    (part / "run.json").write_text((tmp_path / "r.json.parts" / "run.json").read_text())
    with pytest.raises(GnhubError, match="p.json.parts: exists and is not gnhub's resume folder"):
        evaluate(a, images=images, annotations=annotations, results=tmp_path / "p.json")
    (part / "run.json").unlink()
    part.rmdir()
    evaluate(a, images=images, annotations=annotations, results=tmp_path / "p.json")
    (tmp_path / "p.json").unlink()  # gnhub's own resume folder, with a line appended that is not this run's
    with open(part / "rank0.jsonl", "a") as f:
        f.write(json.dumps({"image_id": 99, "detections": []}) + "\n")
    with pytest.raises(GnhubError, match="holds image 99, which .* does not declare"):
        evaluate(a, images=images, annotations=annotations, results=tmp_path / "p.json")
