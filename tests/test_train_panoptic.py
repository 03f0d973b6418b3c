"""Panoptic FPN training: the semantic head's loss, its targets (labels resized and padded as
detectron2's training input) and the cascade's losses held to a real detectron2 training step of
PanopticFPN (scripts/record_d2_cascade_train.py --case panoptic); `gnhub finetune` on COCO panoptic
annotations (detectron2's "panoptic_separated" labels)."""
import copy
import json

import numpy as np
import pytest
import references
import torch
from conftest import REAL_RUNS
from test_d2_panoptic import d2_names, panoptic_config
from test_train_cascade import LOSSES, assert_gradients_are_detectron2s

from gnhub import GNMaskRCNN, load
from gnhub.errors import GnhubError
from gnhub.files import sha256_file
from gnhub.modeling.bfloat16 import network_layout
from gnhub.modeling.panoptic import resize_labels
from gnhub.train import CocoInstances

CASE = REAL_RUNS / "d2_panoptic_train_r50_gn_dconv_seed80"


@pytest.fixture(scope="module")
def recorded():
    """gnhub's tiny panoptic model on the run's weights (its images are not resized), the run's
    images and targets, and the run."""
    import detweights

    meta = json.loads((CASE / "meta.json").read_text())
    ref = references.load(CASE.name)
    config = panoptic_config()
    config.classes, config.semantic.classes = ("a", "b", "c"), ("things", "s1", "s2", "s3")
    config.fpn.channels, config.roi_heads.fc_channels, config.semantic.channels = 32, 64, 32
    config.roi_heads.mask_pool_size, config.train.mask_size = 7, 14
    config.preprocess.max_size = (96, 64)
    model = GNMaskRCNN(config)
    names = d2_names(model)
    arrays = detweights.frozen_bn_arrays(detweights.read_key_list(CASE / "keys.txt"), meta["seed"])
    assert detweights.weights_digest(arrays) == str(ref["weights_sha256"])
    model.load_state_dict({k: torch.from_numpy(arrays.pop(names[k])) for k in model.state_dict()})
    assert not arrays  # every tensor of detectron2's model, none left over
    images, targets, proposals = [], [], []
    for i, (h, w, seed) in enumerate(meta["images"]):
        images.append(detweights.make_image(h, w, seed))
        masks = np.unpackbits(ref[f"masks_{i}_packed"], axis=-1, count=w).astype(bool)
        targets.append({"boxes": torch.from_numpy(ref[f"boxes_{i}"]), "labels": torch.from_numpy(ref[f"labels_{i}"]),
                        "masks": torch.from_numpy(masks), "sem_seg": torch.from_numpy(ref[f"sem_seg_{i}"]).long()})
        proposals.append(torch.from_numpy(ref[f"proposals_{i}"]))
    return model, images, targets, proposals, ref


def test_semantic_and_cascade_losses_and_gradients_are_detectron2s(recorded, reference_threads):
    """The semantic loss (labels padded with 255, cross-entropy at the input's size, times 0.5)
    and the cascade's losses on the run's proposals, the gradient norm of every semantic-head and
    RoI-head parameter, full gradients and the FPN features' gradients, as detectron2 gave them."""
    model, images, targets, proposals, ref = recorded
    model.train()
    batch, (boxes, labels, masks, semantic) = model._training_batch(images, targets)
    assert semantic.shape == (2, 64, 96) and (semantic[1, :, 80:] == 255).all()
    with torch.no_grad():
        feats = model.fpn(model.backbone(network_layout(batch.tensor)))[:4]
    feats = [f.detach().requires_grad_() for f in feats]
    losses = model.roi_heads.loss(feats, proposals, boxes, labels, masks, batch.image_sizes, model.config.train)
    losses["sem_seg"] = model.sem_seg_head.loss(feats, semantic, model.config.semantic.loss_weight)
    for ours, theirs in {**LOSSES, "sem_seg": "loss_sem_seg"}.items():
        assert losses[ours].item() == pytest.approx(float(ref[theirs]), rel=1e-5, abs=1e-7), ours
    sum(losses.values()).backward()
    names = d2_names(model)
    grads = {names[k]: p.grad for head in ("roi_heads", "sem_seg_head")
             for k, p in getattr(model, head).named_parameters(prefix=head)}
    assert_gradients_are_detectron2s(grads, feats, ref)


def test_the_model_gives_the_semantic_loss_beside_the_instance_losses(recorded):
    model, images, targets, _, ref = recorded
    losses = model(images, targets, generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"rpn_cls", "rpn_bbox", "sem_seg", *LOSSES}
    assert losses["sem_seg"].item() == pytest.approx(float(ref["loss_sem_seg"]), rel=1e-5)
    with pytest.raises(GnhubError, match="target 1: a Panoptic FPN trains its semantic head too"):
        model(images, [targets[0], {k: v for k, v in targets[1].items() if k != "sem_seg"}])
    bad = dict(targets[1], sem_seg=torch.full((64, 80), 4))
    with pytest.raises(GnhubError, match=r"target 1: sem_seg labels must index config.semantic.classes \(0..3\)"):
        model(images, [targets[0], bad])


# The drawn panoptic set: categories by id as the JSON declares them, its stuff not in the model's order.
CATEGORIES = [{"id": 1, "name": "a", "isthing": 1}, {"id": 2, "name": "b", "isthing": 1},
              {"id": 3, "name": "c", "isthing": 1}, {"id": 10, "name": "s3", "isthing": 0},
              {"id": 11, "name": "s1", "isthing": 0}, {"id": 12, "name": "s2", "isthing": 0}]


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """Two 48x64 images with COCO instances and panoptic annotations (panoptic.json, PNGs in
    panoptic/), and image 1's semantic labels by hand: thing a 0, stuff s1 1, s3 3, VOID and the
    unlisted segment 300 255."""
    from PIL import Image

    from gnhub.panoptic_format import id_png

    folder = tmp_path_factory.mktemp("drawn")
    (folder / "panoptic").mkdir()
    rng = np.random.default_rng(29)
    seg = np.zeros((2, 48, 64), np.int64)
    seg[0, 8:24, 4:20], seg[0, 30:, :], seg[0, :30, 40:], seg[0, :4, :4] = 5, 7, 9, 300
    seg[1, 10:30, 20:44], seg[1, 36:, :] = 4, 6
    infos = [[(5, 1), (7, 11), (9, 10)], [(4, 2), (6, 12)]]
    images, instances, annotations = [], [], []
    for i in range(2):
        name = f"{i + 1}.png"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), np.uint8)).save(folder / name)
        (folder / "panoptic" / name).write_bytes(id_png(seg[i]))
        images.append({"id": i + 1, "file_name": name, "width": 64, "height": 48})
        x0, y0, x1, y1 = (4, 8, 20, 24) if i == 0 else (20, 10, 44, 30)
        instances.append({"id": i + 1, "image_id": i + 1, "category_id": infos[i][0][1], "iscrowd": 0,
                          "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                          "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]})
        annotations.append({"image_id": i + 1, "file_name": name, "segments_info": [
            {"id": sid, "category_id": cat, "iscrowd": 0} for sid, cat in infos[i]]})
    (folder / "train.json").write_text(json.dumps({"images": images, "annotations": instances,
                                                   "categories": CATEGORIES[:3]}))
    (folder / "panoptic.json").write_text(json.dumps({"annotations": annotations, "categories": CATEGORIES}))
    labels = np.full((48, 64), 255)
    labels[8:24, 4:20], labels[30:, :], labels[:30, 40:] = 0, 1, 3
    return folder, labels


def test_panoptic_annotations_give_detectron2s_separated_semantic_labels(recorded, drawn):
    """As detectron2's prepare_panoptic_fpn.py: things 0, stuff 1.. in config.semantic.classes'
    order (found by name), VOID and unlisted segments 255; flipped with the image."""
    folder, labels = drawn
    stuff = recorded[0].config.semantic.classes
    data = CocoInstances(folder / "train.json", folder, panoptic=(folder / "panoptic.json", None, stuff))
    assert labels[10, 10] == 0 and labels[40, 5] == 1 and labels[5, 50] == 3 and labels[1, 1] == labels[26, 30] == 255
    _, target = data.load(0)
    assert target["sem_seg"].dtype == np.int64 and np.array_equal(target["sem_seg"], labels)
    rgb, flipped = data.load(0, flip=True)
    assert np.array_equal(flipped["sem_seg"], labels[:, ::-1]) and flipped["sem_seg"][5, 63 - 50] == 3
    assert np.array_equal(flipped["masks"][0], target["masks"][0][:, ::-1])
    assert np.unique(data.load(1)[1]["sem_seg"]).tolist() == [0, 2, 255]


def test_panoptic_training_data_errors_name_the_file(recorded, drawn, tmp_path):
    folder, _ = drawn
    stuff = recorded[0].config.semantic.classes
    raw = json.loads((folder / "panoptic.json").read_text())
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({**raw, "annotations": raw["annotations"][:1]}))
    with pytest.raises(GnhubError, match=f"{bad}: has no panoptic annotation of 1 of the images to train on "
                       r"\(2.png\)"):
        CocoInstances(folder / "train.json", folder, panoptic=(bad, folder / "panoptic", stuff))
    bad.write_text(json.dumps({**raw, "categories": [*CATEGORIES, {"id": 13, "name": "s4", "isthing": 0}]}))
    with pytest.raises(GnhubError, match=f"{bad}: its stuff categories s4 are not among the model's 3"):
        CocoInstances(folder / "train.json", folder, panoptic=(bad, folder / "panoptic", stuff))
    with pytest.raises(GnhubError, match=f"{tmp_path / 'p'}: no such folder of panoptic PNGs; give it with "
                       "--train-panoptic-images"):
        CocoInstances(folder / "train.json", folder, panoptic=(bad, None, stuff))


def test_finetune_trains_a_panoptic_fpn_on_panoptic_annotations(recorded, drawn, tmp_path):
    """`gnhub finetune --train-panoptic`: one step with the semantic loss logged, a model that
    loads with its semantic head; without the panoptic annotations one error before anything."""
    from test_cli import run

    folder, _ = drawn
    config = copy.deepcopy(recorded[0].config)  # few proposals, RoIs and detections: fast steps and golden outputs
    config.rpn.pre_nms_top_n, config.rpn.post_nms_top_n, config.roi_heads.detections_per_image = 100, 20, 5
    config.train.rpn_pre_nms_top_n, config.train.rpn_post_nms_top_n = 200, 50
    config.train.box_batch_size_per_image = 32
    model = GNMaskRCNN(config)
    model.load_state_dict(recorded[0].state_dict())
    base = model.save_pretrained(tmp_path / "base")
    proc = run("finetune", base, "--train", folder / "train.json", "--images", folder, "-o", tmp_path / "m")
    assert proc.returncode == 1 and "a Panoptic FPN trains on semantic labels too: give the training images' COCO " \
        "panoptic annotations with --train-panoptic" in proc.stderr and not (tmp_path / "m").exists()
    proc = run("finetune", base, "--train", folder / "train.json", "--images", folder, "--train-panoptic",
               folder / "panoptic.json", "-o", tmp_path / "m", "--iterations", "1", "--warmup", "1")
    assert proc.returncode == 0, proc.stderr
    row = json.loads((tmp_path / "m.train" / "log.jsonl").read_text().splitlines()[0])
    assert row["sem_seg"] > 0 and {"rpn_cls", "mask", "cls_stage2"} <= set(row)
    tuned = load(tmp_path / "m")
    assert tuned.config.semantic.classes == ("things", "s1", "s2", "s3")
    assert tuned.config.provenance["finetune"]["panoptic_sha256"] == sha256_file(folder / "panoptic.json")
    head = "sem_seg_head.predictor.weight"
    assert not torch.equal(tuned.state_dict()[head], recorded[0].state_dict()[head])


def test_labels_resize_as_detectron2s_training_input():
    ref = references.load(CASE.name)
    for i in range(2):
        got = resize_labels(ref[f"resize_from_{i}"], ref[f"resize_to_{i}"].shape)
        assert np.array_equal(got, ref[f"resize_to_{i}"])
