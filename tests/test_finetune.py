"""`gnhub finetune`: COCO-format data as mmdetection reads it, the recipe, exact resume, DDP, the output."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import small_config
from safetensors.torch import load_file
from test_cli import run

from gnhub import GNMaskRCNN, ModelConfig, files, load
from gnhub.config import D2_CASCADE
from gnhub.demo import deterministic_weights
from gnhub.errors import GnhubError
from gnhub.files import sha256_file
from gnhub.modeling import with_weights
from gnhub.train import CocoInstances, Recipe, finetune
from gnhub.train.data import epoch_batches, flips
from gnhub.train.loop import Schedule
from gnhub.train.shapes import CLASSES, write_shapes


@pytest.fixture(scope="module")
def shapes(session_dir):
    folder = session_dir("shapes")
    return write_shapes(folder, 8, size=(96, 128)), folder


@pytest.fixture(scope="module")
def base_dir(session_dir):
    """A small untrained model directory: images fit 128x96, 100 training proposals and 64 RoIs per image."""
    config = small_config()
    config.preprocess.max_size = (128, 96)
    config.train.box_batch_size_per_image = 64
    config.train.rpn_pre_nms_top_n, config.train.rpn_post_nms_top_n = 300, 100  # few proposals: fast steps
    model = GNMaskRCNN(config)
    model.load_state_dict(deterministic_weights(model))
    return model.save_pretrained(session_dir("base") / "base")


def test_coco_instances_read_as_mmdetection_reads_them(shapes):
    ann, folder = shapes
    ds = CocoInstances(ann, folder)
    raw = json.loads(ann.read_text())
    assert ds.classes == CLASSES
    trainable = {a["image_id"] for a in raw["annotations"]}
    assert [s.image_id for s in ds.samples] == sorted(trainable)  # images without annotations skipped
    crowd = sum(a["iscrowd"] for a in raw["annotations"])
    assert crowd and sum(len(s.labels) for s in ds.samples) == len(raw["annotations"]) - crowd
    for i in range(len(ds)):
        rgb, t = ds.load(i)
        rgb_f, t_f = ds.load(i, flip=True)
        assert np.array_equal(rgb_f, rgb[:, ::-1]) and np.array_equal(t_f["masks"], t["masks"][:, :, ::-1])
        w = rgb.shape[1]
        assert np.array_equal(t_f["boxes"], np.stack([w - t["boxes"][:, 2], t["boxes"][:, 1], w - t["boxes"][:, 0],
                                                      t["boxes"][:, 3]], axis=1))
        for box, mask in zip(t_f["boxes"], t_f["masks"]):  # each box encloses its mask, flipped too
            ys, xs = np.nonzero(mask)
            assert np.allclose(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1)


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def _first(d, key, **change):
    return {**d, key: [{**d[key][0], **change}, *d[key][1:]]}


def _polygons(d, seg):
    """The first polygon-annotated instance's segmentation replaced."""
    k = next(i for i, a in enumerate(d["annotations"]) if isinstance(a["segmentation"], list) and not a["iscrowd"])
    return {**d, "annotations": [*d["annotations"][:k], {**d["annotations"][k], "segmentation": seg},
                                 *d["annotations"][k + 1:]]}


def _rle(d, counts):
    k = next(i for i, a in enumerate(d["annotations"]) if isinstance(a["segmentation"], dict))
    a = d["annotations"][k]
    return {**d, "annotations": [*d["annotations"][:k], {**a, "segmentation": {**a["segmentation"], "counts": counts}},
                                 *d["annotations"][k + 1:]]}


@pytest.mark.parametrize("change, message", [
    (lambda d: [], "not a COCO-format instances file: expected an object"),
    (lambda d: _first(d, "annotations", bbox=[100, 50, 40, 40]), "lies outside the"),
    (lambda d: _first(d, "annotations", category_id=9), "category_id 9 is not declared"),
    (lambda d: _first(d, "images", file_name="gone.png"), "gone.png: no such image"),
    (lambda d: _first(d, "annotations", segmentation=3), "expected polygons or an RLE"),
    (lambda d: _first(d, "images", id=[1]), "image \\[1\\]: id is \\[1\\]; expected a whole number"),
    (lambda d: _first(d, "annotations", area="12"), "area is '12'; expected a finite number"),
    (lambda d: _polygons(d, [[10, 10, "x", 20, 30, 30]]), "polygon coordinate is 'x'"),
    (lambda d: _polygons(d, [[10, 10, float("nan"), 20, 30, 30]]), "polygon coordinate is nan"),
    (lambda d: _polygons(d, [[10, 10, 1e30, 20, 30, 30]]), "far outside the"),
    (lambda d: _rle(d, [2**40, 5]), "RLE runs cover"),
    (lambda d: _rle(d, [-3, 3]), "RLE count -3 is negative"),
    (lambda d: _rle(d, "12" * 30), "RLE runs cover"),
    (lambda d: _rle(d, "P" * 40), "RLE text ends in the middle of a run"),
    (lambda d: {**d, "annotations": [{**a, "segmentation": [[1, 2, 3, 4]]} if isinstance(a["segmentation"], list)
                                     else {**a, "iscrowd": 1} for a in d["annotations"]]}, "nothing to train on"),
])
def test_bad_datasets_are_one_error_before_training(shapes, tmp_path, change, message):
    ann, folder = shapes
    bad = _write(tmp_path / "bad.json", change(json.loads(ann.read_text())))
    with pytest.raises(GnhubError, match=message):
        CocoInstances(bad, folder)


def test_a_truncated_image_stops_the_run_before_training(shapes, tmp_path, base_dir):
    ann, folder = shapes
    images = tmp_path / "images"
    images.mkdir()
    for p in folder.glob("*.png"):
        (images / p.name).write_bytes(p.read_bytes())
    first = sorted(images.glob("*.png"))[0]
    first.write_bytes(first.read_bytes()[:300])
    proc = run("finetune", base_dir, "--train", ann, "--images", images, "-o", tmp_path / "out")
    code, err = proc.returncode, proc.stderr
    assert code == 1 and err.count("error:") == 1 and f"{first}: not a readable image" in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists() and not (tmp_path / "out.train").exists()


def test_every_input_and_output_is_checked_before_training(shapes, base_dir, tmp_path):
    ann, folder = shapes
    base = load(base_dir)
    raw = json.loads(ann.read_text())
    with pytest.raises(GnhubError, match="one holds the other"):
        finetune(base, train_annotations=ann, train_images=folder,
                 out=tmp_path / "w", recipe=Recipe(iterations=1), work_dir=tmp_path / "w" / "train")
    with pytest.raises(GnhubError, match="no such image folder \\(--val-images\\)"):
        finetune(base, train_annotations=ann, train_images=folder,
                 out=tmp_path / "o", recipe=Recipe(iterations=1), val=(ann, tmp_path / "nowhere"))
    renamed = _write(tmp_path / "val.json", {**raw, "categories": [{**c, "name": c["name"] + "s"}
                                                                    for c in raw["categories"]]})
    with pytest.raises(GnhubError, match="has no category 'square'"):
        finetune(base, train_annotations=ann, train_images=folder,
                 out=tmp_path / "o", recipe=Recipe(iterations=1), val=(renamed, folder))
    assert not any(tmp_path.glob("o*")) and not (tmp_path / "w").exists()


def test_batches_flips_and_schedule_follow_mmdetection():
    landscape = [True, False, True, True, False, True, False, True, True]
    batches = epoch_batches(landscape, 2, seed=0, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(9))
    full = [b for b in batches if len(b) == 2]
    assert len(full) >= 3 and all(len({landscape[i] for i in b}) == 1 for b in full[:-1])
    assert batches == epoch_batches(landscape, 2, seed=0, epoch=0) != epoch_batches(landscape, 2, seed=0, epoch=1)
    ranks = [epoch_batches(landscape[:8], 2, 0, 0, rank=r, world=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) and not {i for b in ranks[0] for i in b} & {i for b in ranks[1] for i in b}
    assert flips(0, 3, [1, 2, 3], 0.5) == flips(0, 3, [1, 2, 3], 0.5) and not any(flips(0, 0, range(50), 0.0))
    s = Schedule(Recipe(epochs=24, batch_size=2), iters_per_epoch=100, world=4)
    assert s.base == pytest.approx(0.02 * 8 / 16) and s.total == 2400 and s.steps == (1600, 2200)
    assert s.lr(0) == pytest.approx(s.base * 0.001) and s.lr(250) == pytest.approx(s.base * (0.001 + 0.999 / 2))
    assert s.lr(500) == s.lr(1599) == pytest.approx(s.base)
    assert s.lr(1600) == pytest.approx(s.base * 0.1) and s.lr(2399) == pytest.approx(s.base * 0.01)


def _weights(out):
    return load_file(out / "model.safetensors")


def test_resume_after_a_crash_and_a_ctrl_c_is_exact(shapes, base_dir, tmp_path, monkeypatch):
    ann, folder = shapes
    base = load(base_dir)
    recipe = dict(iterations=4, warmup_iters=2, checkpoint_every=2, batch_size=1)
    straight = finetune(base, train_annotations=ann, train_images=folder,
                        out=tmp_path / "straight", recipe=Recipe(**recipe))
    assert straight["iterations"] == 4

    real_forward, calls = GNMaskRCNN.forward, {"n": 0}

    def failing(after, error):
        def loss(self, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] > after:
                raise error
            return real_forward(self, *args, **kwargs)
        return loss

    out = tmp_path / "resumed"
    monkeypatch.setattr(GNMaskRCNN, "forward", failing(2, RuntimeError("power cut")))
    with pytest.raises(RuntimeError):  # a crash during step 3: the periodic checkpoint holds step 2
        finetune(base, train_annotations=ann, train_images=folder, out=out, recipe=Recipe(**recipe))
    calls["n"] = 0
    monkeypatch.setattr(GNMaskRCNN, "forward", failing(1, KeyboardInterrupt()))
    with pytest.raises(GnhubError, match="interrupted at iteration 3 of 4.*holds iteration 3.*--resume"):
        finetune(base, train_annotations=ann, train_images=folder,
                 out=out, recipe=Recipe(**recipe), resume=True)  # Ctrl-C in step 4: saved at step 3
    with pytest.raises(GnhubError, match="holds a checkpoint: continue with --resume"):
        finetune(base, train_annotations=ann, train_images=folder, out=out, recipe=Recipe(**recipe))
    with pytest.raises(GnhubError, match="another recipe"):
        finetune(base, train_annotations=ann, train_images=folder,
                 out=out, recipe=Recipe(**{**recipe, "seed": 1}), resume=True)
    monkeypatch.setattr(GNMaskRCNN, "forward", real_forward)
    finetune(base, train_annotations=ann, train_images=folder, out=out, recipe=Recipe(**recipe), resume=True)
    a, b = _weights(tmp_path / "straight"), _weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = (tmp_path / "resumed.train" / "log.jsonl").read_text()
    assert [json.loads(line)["iteration"] for line in log.splitlines()] == [1, 2, 3, 4]


def test_a_run_killed_before_its_first_checkpoint_starts_over(shapes, base_dir, tmp_path):
    ann, folder = shapes
    base = load(base_dir)
    work = tmp_path / "out.train"
    work.mkdir()
    files.append_line(work / "log.jsonl", '{"iteration": 1, "loss": 9}\n', "--work-dir")  # gnhub's log (ledger)
    with open(work / "log.jsonl", "a") as f:
        f.write('{"iter')  # what a SIGKILL in step 2 leaves
    recipe = Recipe(iterations=1, warmup_iters=1, batch_size=1)
    finetune(base, train_annotations=ann, train_images=folder,
             out=tmp_path / "out", recipe=recipe, resume=True)  # no checkpoint yet: from the start
    rows = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1] and rows[0]["loss"] != 9
    changed = load(base_dir)
    changed.config.train.rpn_batch_size_per_image = 128  # the same weights, other settings
    with pytest.raises(GnhubError, match="another base model \\(settings\\)"):
        finetune(changed, train_annotations=ann, train_images=folder,
                 out=tmp_path / "out2", recipe=recipe, work_dir=work, resume=True)
    (work / "notes.txt").write_text("mine")
    with pytest.raises(GnhubError, match="holds files gnhub did not write"):
        finetune(base, train_annotations=ann, train_images=folder,
                 out=tmp_path / "out3", recipe=recipe, work_dir=work, resume=True)
    assert (work / "notes.txt").read_text() == "mine"


def test_a_detectron2_cascade_finetunes_and_detectron_and_paddle_models_are_one_error(shapes, base_dir, tmp_path):
    """A detectron2 cascade (three class-agnostic stages, a deformable last stage) on new classes:
    one step, each stage's losses logged, the deformable convolution's offsets trained; a
    Detectron or PaddleDetection Mask R-CNN is refused before anything is written (finetune once
    refused every detectron2 model: "this model has Detectron's"; a PaddleDetection Faster R-CNN
    trains: tests/test_train_paddle.py)."""
    ann, folder = shapes
    base = load(base_dir)
    config = ModelConfig.from_dict({**base.config.to_dict(), "convention": "detectron2"})
    D2_CASCADE.apply(config)
    config.backbone.deform_stages = (False, False, False, True)
    cascade = GNMaskRCNN(config)
    cascade.load_state_dict(deterministic_weights(cascade))
    recipe = Recipe(iterations=1, warmup_iters=1, batch_size=1)
    done = finetune(cascade, train_annotations=ann, train_images=folder, out=tmp_path / "c", recipe=recipe,
                    work_dir=tmp_path / "w")
    row = json.loads((tmp_path / "w" / "log.jsonl").read_text().splitlines()[0])
    assert {"cls_stage0", "bbox_stage2", "mask", "rpn_cls"} <= set(row) and "cls" not in row
    tuned = load(tmp_path / "c")
    assert done["classes"] == len(CLASSES) and tuned.config.roi_heads.stages == 3
    assert tuned.config.convention == "detectron2"
    offsets = "backbone.layer4.0.conv2_offset.weight"
    assert not torch.equal(tuned.state_dict()[offsets], cascade.state_dict()[offsets])
    detectron = with_weights(dataclasses.replace(base.config, convention="detectron"), base.state_dict(), "d")
    with pytest.raises(GnhubError, match="this model has Detectron's .* convert an mmdetection or detectron2"):
        finetune(detectron, train_annotations=ann, train_images=folder, out=tmp_path / "d", recipe=recipe)
    assert not (tmp_path / "d").exists()
    paddle = with_weights(dataclasses.replace(base.config, convention="paddle"), base.state_dict(), "p")
    with pytest.raises(GnhubError, match="not its mask head .* PaddleDetection's conventions .* does not have"):
        finetune(paddle, train_annotations=ann, train_images=folder, out=tmp_path / "p", recipe=recipe)
    assert not (tmp_path / "p").exists()


def test_finetune_cli_writes_a_model_that_loads_verifies_and_publishes(shapes, base_dir, tmp_path):
    ann, folder = shapes
    out = tmp_path / "shapes-model"
    raw = json.loads(ann.read_text())
    val = _write(tmp_path / "val.json", {**raw, "images": raw["images"][:3],
                                         "annotations": [a for a in raw["annotations"] if a["image_id"] <= 3]})
    proc = run("finetune", base_dir, "--train", ann, "--images", folder, "--val", val, "--val-images", folder,
               "-o", out, "--iterations", "3", "--warmup", "1")
    assert proc.returncode == 0, proc.stderr
    assert "3 iterations" in proc.stdout and "validation: box AP" in proc.stdout
    model = load(out)
    assert model.config.classes == CLASSES and model.config.name == "shapes-model"
    ft = model.config.provenance["finetune"]
    assert ft["base_sha256"] == load(base_dir).config.weights_sha256 and ft["dataset_sha256"] == sha256_file(ann)
    assert ft["iterations"] == 3 and ft["total_batch"] == 2 and ft["lr"] == pytest.approx(0.0025)
    assert set(ft["val"]) == {"box", "mask"} and 0 <= ft["val"]["mask"]["AP"] <= 1
    rows = [json.loads(line) for line in (tmp_path / "shapes-model.train" / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3, 3] and "val" in rows[-1]
    assert {"rpn_cls", "rpn_bbox", "cls", "bbox", "mask", "loss", "lr"} <= set(rows[0])
    card = (out / "README.md").read_text()
    assert "Fine-tuned by gnhub from" in card and ft["dataset_sha256"] in card
    proc = run("verify", out)
    assert proc.returncode == 0, proc.stderr
    hub = tmp_path / "hub"
    proc = run("publish", out, "--repo-id", "me/shapes", "--hub-dir", hub)
    assert proc.returncode == 0, proc.stderr
    again = load("me/shapes", hub_dir=str(hub))
    assert again.config.classes == CLASSES and again.config.weights_sha256 == model.config.weights_sha256


def test_finetune_under_torchrun_averages_like_accumulation(shapes, base_dir, tmp_path):
    """Two CPU processes (gloo DDP) of one image each take the same steps as one process that
    accumulates two one-image batches, the samplers taking every candidate."""
    ann, folder = shapes
    model = load(base_dir)
    train = model.config.train
    train.rpn_batch_size_per_image = train.box_batch_size_per_image = 10**9
    train.rpn_post_nms_top_n = 32  # few RoIs: fast steps
    greedy = model.save_pretrained(tmp_path / "greedy")
    common = ["gnhub", "finetune", str(greedy), "--train", str(ann), "--images", str(folder), "--iterations", "2",
              "--warmup", "1", "--batch-size", "1", "--flip", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", *common, "--accumulate", "2", "-o", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          "29519", "-m", *common, "-o", str(tmp_path / "two")], capture_output=True, text=True,
                         env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    moved = [k for k in a if not torch.equal(a[k], load_file(greedy / "model.safetensors")[k])]
    assert moved and all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)
