"""Detectron (Caffe2) GN checkpoints: the blob table, Detectron's test conventions, conversion and
verification of e2e Mask R-CNN models and ImageNet backbones."""
import json
import math
import pickle

import numpy as np
import pytest
import torch
from conftest import Py2Pickler, detectron_blobs, detectron_pickle
from gnhub.converters import RenameTable, detectron
from test_cli import assert_one_line_error, run
from torchvision.ops import roi_align

from gnhub import GNMaskRCNN, GNResNetClassifier, load
from gnhub.config import COCO_CLASSES, IMAGENET_CLASSES, ModelConfig
from gnhub.convert import convert
from gnhub.errors import GnhubError
from gnhub.frameworks import convention
from gnhub.frameworks.detectron.convention import base_anchors as detectron_base_anchors
from gnhub.frameworks.detectron.convention import decode_boxes as decode_boxes_detectron
from gnhub.frameworks.detectron.convention import nms as nms_detectron
from gnhub.layout import VERIFICATION_FILE, read_config
from gnhub.modeling.roi_heads import MultiLevelRoIAlign

# -- the blob table ------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [50, 101])
@pytest.mark.parametrize("detector", [True, False])
def test_every_blob_maps_to_a_model_tensor_and_back(depth, detector):
    table = RenameTable(detectron)
    config = ModelConfig()
    config.backbone.depth = depth
    if not detector:
        config.task, config.classes = "image-classification", IMAGENET_CLASSES
    with torch.device("meta"):
        own = (GNMaskRCNN if detector else GNResNetClassifier)(config).state_dict()
    blobs = dict(detectron_blobs(depth, detector))
    mapped = {table.to_gnhub(name): name for name in blobs}
    assert None not in mapped and set(mapped) == set(own)
    background = {"roi_heads.box_head.cls_score": 0, "roi_heads.box_head.bbox_pred": 4, "roi_heads.mask_head.logits": 1}
    for key, name in mapped.items():
        extra = next((n for prefix, n in background.items() if key.startswith(prefix)), 0)
        assert blobs[name] == (own[key].shape[0] + extra, *own[key].shape[1:]), key
        assert table.to_source(key, last=str({50: 5, 101: 22}[depth])) == name


def test_momentum_and_preserved_classifier_blobs_are_dropped():
    table = RenameTable(detectron, "e2e")
    assert table.is_dropped("res2_0_branch2a_w_momentum") and table.is_dropped("pred_w")
    assert not table.is_dropped("res2_0_branch2a_w")
    assert not RenameTable(detectron, "imagenet").is_dropped("pred_w")  # a backbone's own classifier


def test_both_spellings_of_the_mask_head_map():
    table = RenameTable(detectron)
    for name in ("_mask_fcn3_gn_s", "_[mask]_fcn3_gn_s"):
        assert table.to_gnhub(name) == "roi_heads.mask_head.convs.2.norm.weight"
    assert table.to_source("roi_heads.mask_head.convs.2.norm.weight") == "_mask_fcn3_gn_s"


# -- Detectron's conventions ---------------------------------------------------------------


def test_anchors_equal_detectrons_tables():
    assert detectron_base_anchors(4, (0.5, 1.0, 2.0), (8.0,)).tolist() == [
        [-22, -10, 25, 13], [-14, -14, 17, 17], [-10, -22, 13, 25]]
    # generate_anchors(16, (128, 256, 512)): Faster R-CNN's matlab table, shifted to 0-based pixels
    matlab = [[-83, -39, 100, 56], [-175, -87, 192, 104], [-359, -183, 376, 200], [-55, -55, 72, 72],
              [-119, -119, 136, 136], [-247, -247, 264, 264], [-35, -79, 52, 96], [-79, -167, 96, 184],
              [-167, -343, 184, 360]]
    got = detectron_base_anchors(16, (0.5, 1.0, 2.0), (8.0, 16.0, 32.0))
    assert (got + 1).tolist() == matlab


def test_legacy_box_decoding_on_known_boxes():
    box = torch.tensor([[10.0, 20.0, 19.0, 39.0]])  # 10 x 20 pixels, corners inclusive
    stds = (0.1, 0.1, 0.2, 0.2)
    assert decode_boxes_detectron(box, torch.zeros(1, 4), stds, (100, 100)).tolist() == box.tolist()
    # dx = 1 -> the centre moves by 1/10 of the width; dw = log(2) * 5 -> twice as wide
    moved = decode_boxes_detectron(box, torch.tensor([[1.0, 0.0, 5 * math.log(2), 0.0]]), stds, (100, 100))
    assert torch.allclose(moved, torch.tensor([[6.0, 20.0, 25.0, 39.0]]), atol=1e-4)
    # clipped to [0, size - 1]; dw clamped at log(1000 / 16) from above only
    huge = decode_boxes_detectron(box, torch.tensor([[0.0, 0.0, 100.0, -100.0]]), stds, (50, 60))
    assert huge[0, 0] == 0 and huge[0, 2] == 59 and huge[0, 3] - huge[0, 1] < 1


def test_nms_uses_plus_one_areas_and_suppresses_at_equal_iou():
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0], [5.0, 0.0, 14.0, 9.0], [30.0, 30.0, 39.0, 39.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    # +1 areas: intersection 5 x 10 = 50, union 150, IoU exactly 1/3: suppressed at 1/3
    assert nms_detectron(boxes, scores, 1 / 3).tolist() == [0, 2]
    assert nms_detectron(boxes, scores, 0.34).tolist() == [0, 1, 2]
    assert nms_detectron(boxes, torch.tensor([0.5, 0.9, 0.7]), 0.3).tolist() == [1, 2]


def test_roi_align_is_unaligned_and_levels_use_plus_one_areas():
    config = ModelConfig()
    config.roi_heads.sampling_ratio, config.roi_heads.aligned = 2, False
    pool = MultiLevelRoIAlign(2, (1, 2, 4, 8), config.roi_heads, convention("detectron"))
    ramp = torch.arange(16.0).repeat(16, 1)[None, None]  # value = x
    feats = [ramp, ramp[..., ::2, ::2], ramp[..., ::4, ::4], ramp[..., ::8, ::8]]
    rois = torch.tensor([[0.0, 0.0, 0.0, 8.0, 8.0]])
    # no half-pixel shift: bin 0 samples x = 1 and 3 -> 2 (aligned=True would give 1.5)
    assert pool(feats, rois)[0, 0, 0].tolist() == [2.0, 6.0]
    assert torch.equal(pool(feats, rois), roi_align(ramp, rois, 2, 1.0, 2, aligned=False))
    sizes = torch.tensor([[0, 0, 0, 223, 223], [0, 0, 0, 222, 222], [0, 0, 0, 111, 111], [0, 0, 0, 447, 447.0]])
    assert pool.levels(sizes).tolist() == [2, 1, 1, 3]  # P4, P3, P3, P5 (224 at level 4)


def test_detectron_yaml_settings_are_read_without_running_anything():
    text = "!!python/object/new:detectron.utils.collections.AttrDict\ndictitems:\n  TEST: !!python/object/" \
           "new:detectron.utils.collections.AttrDict\n    dictitems: {SCALES: !!python/tuple [600], MAX_SIZE: 1000, " \
           "NMS: 0.6}\n  MODEL: {BBOX_REG_WEIGHTS: !!python/tuple [20.0, 20.0, 10.0, 10.0]}\n" \
           "  PIXEL_MEANS: [[[1.0, 2.0, 3.0]]]\n  EVIL: !!python/object/apply:os.system [touch pwned]\n"
    settings = detectron.read_settings({"blobs": {"fpn_x": 0}, "cfg": text}).values
    assert settings["preprocess.max_size"] == (1000, 600) and settings["roi_heads.nms_iou"] == 0.6
    assert settings["preprocess.mean"] == (1.0, 2.0, 3.0) and "convention" not in settings  # a default
    assert settings["roi_heads.box_stds"] == (0.05, 0.05, 0.1, 0.1)
    assert detectron.read_settings({"blobs": {"fpn_x": 0}, "cfg": "{not yaml"}).values == {}


# -- conversion and verification -----------------------------------------------------------


@pytest.fixture(scope="module")
def e2e_dir(detectron_e2e, session_dir):
    out = session_dir("det") / "e2e"
    summary = convert(detectron_e2e, out)
    assert summary["verified"] is True and summary["format"] == "detectron"
    return out


def test_e2e_converts_with_detectron_conventions_and_verifies(e2e_dir, detectron_e2e):
    config = read_config(e2e_dir / "config.json")
    assert config.name == "e2e_mask_rcnn_R-50-FPN_2x_gn"  # the zoo entry, found by file name
    assert config.convention == "detectron"
    roi = config.roi_heads
    assert (roi.aligned, roi.sampling_ratio) == (False, 2)
    assert config.preprocess.max_size == (320, 192)  # from the cfg
    assert config.classes == COCO_CLASSES
    assert sorted(config.provenance["dropped_tensors"]) == [
        "cls_score_w_momentum", "conv1_w_momentum", "fc6_b_momentum", "pred_b", "pred_w", "res_conv1_bn_s"]
    report = json.loads((e2e_dir / VERIFICATION_FILE).read_text())
    assert report["passed"]
    by_stage = {}
    for c in report["checks"]:
        by_stage.setdefault(c["stage"], []).append(c)
    stages = {"backbone.c5", "fpn.p6", "proposals", "roi.cls_logits", "detections", "mask_logits", "masks"}
    assert stages <= set(by_stage)
    assert all(c["max_abs"] == 0 for s in ("input", "backbone.c5", "fpn.p2", "rpn.deltas.p2") for c in by_stage[s])


def test_class_order_is_converted(e2e_dir, detectron_e2e):
    from gnhub.checkpoint import read_pickle
    from gnhub.weights import read_model_dir

    blobs = read_pickle(detectron_e2e)["blobs"]
    _, state = read_model_dir(e2e_dir)
    cls = state["roi_heads.box_head.cls_score.bias"].numpy()
    assert np.array_equal(cls[:-1], blobs["cls_score_b"][1:]) and cls[-1] == blobs["cls_score_b"][0]
    assert np.array_equal(state["roi_heads.box_head.bbox_pred.weight"].numpy(), blobs["bbox_pred_w"][4:])
    assert np.array_equal(state["roi_heads.mask_head.logits.bias"].numpy(), blobs["mask_fcn_logits_b"][1:])


def test_detector_is_deterministic_and_detects(e2e_dir, detweights):
    model = load(e2e_dir)
    rgb = detweights.make_image(427, 640, 0)
    a, b = model.predict(rgb), model.predict(rgb)
    assert len(a["boxes"]) > 0 and all(torch.equal(a[k], b[k]) for k in a)
    assert (a["scores"][:-1] >= a["scores"][1:]).all()  # best first
    h, w = rgb.shape[:2]
    assert a["boxes"][:, 2].max() <= w - 1 and a["boxes"][:, 3].max() <= h - 1  # clipped to size - 1
    with pytest.raises(GnhubError, match=r"^[\w.-]+: gnhub trains with mmdetection's losses .* Detectron's "
                                         "conventions .* whose training gnhub does not have"):
        model.check_trainable()


def test_missed_background_reorder_fails_at_the_class_logits(detectron_e2e, tmp_path, monkeypatch):
    reorder = detectron.reorder_classes

    def forgetful(tensors, version):  # drops the background boxes and masks, leaves its score first
        reorder(tensors, version)
        for key in ("roi_heads.box_head.cls_score.weight", "roi_heads.box_head.cls_score.bias"):
            tensors[key] = torch.cat([tensors[key][-1:], tensors[key][:-1]])

    monkeypatch.setattr(detectron, "reorder_classes", forgetful)
    with pytest.raises(GnhubError, match=r"roi\.cls_logits differs"):
        convert(detectron_e2e, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_swapped_gn_scale_and_bias_fail_at_the_backbone(detectron_e2e, tmp_path, monkeypatch):
    swapped = [(src, dst.replace(".weight", ".tmp").replace(".bias", ".weight").replace(".tmp", ".bias"))
               if src.startswith("res3_{i}_branch2b_gn_") else (src, dst) for src, dst in detectron.RENAMES]
    monkeypatch.setattr(detectron, "RENAMES", swapped)
    with pytest.raises(GnhubError, match=r"backbone\.c3 differs .*backbone\.layer2"):
        convert(detectron_e2e, tmp_path / "out")


def test_r101_e2e_converts_and_verifies(detweights, tmp_path):
    arrays = detweights.make_arrays(detectron_blobs(101, True), seed=3)
    src = detectron_pickle(tmp_path / "model_final.pkl", arrays)
    summary = convert(src, tmp_path / "out", name="r101")
    assert summary["verified"] is True and summary["depth"] == 101


def test_forced_format_and_wrong_format(detectron_backbone, reference_checkpoint, tmp_path):
    assert convert(detectron_backbone, tmp_path / "a", fmt="detectron", verify=False)["format"] == "detectron"
    with pytest.raises(GnhubError, match="does not look like a Detectron"):
        convert(reference_checkpoint, tmp_path / "b", fmt="detectron")


def test_hostile_blob_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump({"blobs": {"conv1_w": Evil()}})
    assert_one_line_error(run("convert", path, "-o", tmp_path / "out"), "refused to unpickle")


# -- ImageNet backbones --------------------------------------------------------------------


@pytest.fixture(scope="module")
def backbone_dir(detectron_backbone, session_dir):
    out = session_dir("det") / "R-50-GN"
    assert convert(detectron_backbone, out)["verified"] is True
    return out


def test_backbone_converts_to_an_imagenet_classifier(backbone_dir):
    model = load(backbone_dir)
    assert isinstance(model, GNResNetClassifier) and model.config.name == "R-50-GN"
    assert model.config.classes == IMAGENET_CLASSES and model.config.preprocess.crop_size == 224
    report = json.loads((backbone_dir / VERIFICATION_FILE).read_text())
    # features identical to a straightforward forward over the blobs
    assert report["passed"] and all(c["max_abs"] == 0 for c in report["checks"] if c["stage"].startswith("backbone"))
    result = model.predict(np.zeros((300, 400, 3), np.uint8))
    assert result["labels"].shape == (5,) and torch.all(result["scores"][:-1] >= result["scores"][1:])


def test_backbone_starts_a_detector_with_the_same_layout(backbone_dir, reference_model_dir):
    classifier = load(backbone_dir)
    detector = load(reference_model_dir)  # an mmdetection "(d)" model, initialised from R-50-GN.pkl upstream
    assert set(classifier.backbone.state_dict()) == set(detector.backbone.state_dict())
    detector.backbone.load_state_dict(classifier.backbone.state_dict())
    assert torch.equal(detector.backbone.conv1.weight, classifier.backbone.conv1.weight)


def test_backbone_predict_cli_lists_top_classes(backbone_dir, tmp_path):
    from gnhub.samples import sample_images

    proc = run("predict", sample_images()[0], "-m", backbone_dir, "-o", tmp_path / "p")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "p" / "street.json").read_text())
    assert len(result["detections"]) == 5 and result["detections"][0]["category"] in IMAGENET_CLASSES
    assert not (tmp_path / "p" / "street.png").exists()


def test_pickle_fixture_is_python2_style(detectron_backbone):
    raw = detectron_backbone.read_bytes()
    assert b"_codecs" not in raw[:100000] and pickle.BINSTRING in raw[:100000]
