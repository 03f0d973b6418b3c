"""The new families end to end: detectron2's model-zoo pickles (its conventions, names, protocols,
its reference forward) and mmdetection's GN+WS / scratch models (a weight-standardised box-only
Faster R-CNN built here: convert, verify, predict, eval, export, train)."""
import json
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch
from conftest import REAL_RUNS, mmdet_checkpoint, small_config
from gnhub.converters import RenameTable, detectron2, mmdet
from test_cli import run

import gnhub.runtime
from gnhub import GNMaskRCNN, load
from gnhub.config import ConfigPatch
from gnhub.convert import convert
from gnhub.demo import deterministic_weights
from gnhub.errors import GnhubError
from gnhub.samples import sample_images

D2_CASE = REAL_RUNS / "d2_mask_rcnn_R_50_FPN_3x_gn_seed20"


@pytest.fixture(scope="module")
def d2_weights(detweights):
    """The real detectron2 run's parameters, by detectron2's names (numpy, float32)."""
    return detweights.case_weights(D2_CASE)[0]


def _d2_pickle(path, arrays, protocol=2, **extra):
    with open(path, "wb") as f:
        pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo", **extra}, f, protocol=protocol)
    return path


@pytest.fixture(scope="module")
def small_d2(d2_weights, session_dir):
    """The case's weights as a detectron2 zoo pickle, converted, with fast test settings."""
    folder = session_dir("d2")
    out = folder / "m"
    convert(_d2_pickle(folder / "model_final_dc5d9e.pkl", d2_weights), out, verify=False)
    model = load(out)
    model.config.preprocess.max_size = (320, 192)
    model.config.rpn.pre_nms_top_n, model.config.rpn.post_nms_top_n = 300, 200
    return model


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_detectron2_pickle_is_recognised_by_name_or_given_one(d2_weights, tmp_path, protocol):
    arrays = {**d2_weights, "pixel_mean": np.zeros((3, 1, 1), np.float32),
              "proposal_generator.anchor_generator.cell_anchors.0": np.zeros((3, 4), np.float32)}
    src = _d2_pickle(tmp_path / "model_final_da7b4c.pkl", arrays, protocol)
    summary = convert(src, tmp_path / "zoo", verify=False)
    assert summary["name"] == "scratch_mask_rcnn_R_50_FPN_9x_gn" and summary["format"] == "detectron2"
    assert sorted(summary["dropped"]) == ["pixel_mean", "proposal_generator.anchor_generator.cell_anchors.0"]
    config = load(tmp_path / "zoo").config
    assert config.preprocess.std == (57.375, 57.12, 58.395) and config.train.frozen_stages == 0
    assert config.convention == "detectron2"
    other = _d2_pickle(tmp_path / "my_finetune.pkl", d2_weights, protocol)
    messages = []
    summary = convert(other, tmp_path / "other", verify=False, log=messages.append)
    assert summary["preprocess_from"] == ("detectron2 defaults of mask_rcnn_R_50_FPN_3x_gn, with cascade_mask_rcnn_*'s "
                                          "for cascade heads (not a zoo file)")
    assert any("converted with the detectron2 defaults" in m for m in messages), messages
    summary = convert(other, tmp_path / "named", verify=False, name="scratch_mask_rcnn_R_50_FPN_9x_gn")
    assert load(tmp_path / "named").config.preprocess.std == (57.375, 57.12, 58.395)


def test_detectron2_tensors_are_carried_over_or_refused_by_name(d2_weights, tmp_path):
    arrays = dict(d2_weights)
    arrays["roi_heads.box_head.attn.weight"] = np.zeros((4, 4), np.float32)  # no such layer (fc2 is a 2fc head's)
    with pytest.raises(GnhubError, match=r"1 tensors detectron2 conversion does not know: \['roi_heads.box_head.attn"):
        convert(_d2_pickle(tmp_path / "model_final_dc5d9e.pkl", arrays), tmp_path / "out", verify=False)
    table = RenameTable(detectron2)
    assert table.to_source("backbone.layer3.5.gn2.weight") == "backbone.bottom_up.res4.5.conv2.norm.weight"
    assert table.to_source("fpn.output.0.conv.weight") == "backbone.fpn_output2.weight"


def test_the_detectron2_reference_verifies_the_conversion(small_d2, d2_weights, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from gnhub.compare import images_for
    from gnhub.source import open_source
    from gnhub.verify import verify_against

    src = _d2_pickle(tmp_path / "model_final_dc5d9e.pkl", d2_weights)
    with ThreadPoolExecutor(1) as pool:
        source = open_source(src, "auto", True, pool)
    source.settings |= ConfigPatch({"preprocess.max_size": (320, 192), "rpn.pre_nms_top_n": 300,
                                    "rpn.post_nms_top_n": 200})
    report, _ = verify_against(source, small_d2, images_for(None))
    assert report.passed and {c.stage for c in report.checks} >= {"proposals", "detections", "masks", "fpn.p6"}
    assert max(c.max_abs or 0 for c in report.checks) == 0  # the same arithmetic, to the last bit
    source.settings |= ConfigPatch({"roi_heads.box_stds": (0.1, 0.1, 0.1, 0.1)})  # a convention gnhub got wrong: found
    report, _ = verify_against(source, small_d2, images_for(None), first_failure=True)
    assert not report.passed and report.first_failure().stage == "detections"


def test_a_detectron2_model_trains_and_exports(small_d2, tmp_path):
    image = sample_images()[2]
    h, w = 288, 288
    mask = np.zeros((h, w), bool)
    mask[40:120, 60:200] = True
    small_d2.config.train.rpn_pre_nms_top_n, small_d2.config.train.rpn_post_nms_top_n = 300, 100
    small_d2.config.train.box_batch_size_per_image = 64
    losses = small_d2([image], [{"boxes": np.array([[60.0, 40, 200, 120]]), "labels": np.array([3]),
                                      "masks": mask[None]}], generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"rpn_cls", "rpn_bbox", "cls", "bbox", "mask"} and all(map(torch.isfinite, losses.values()))
    small_d2.zero_grad()
    from gnhub.export import export

    summary = export(small_d2.eval(), tmp_path / "onnx")
    assert summary["verified"]
    got, want = gnhub.runtime.load(tmp_path / "onnx").predict(image), small_d2.predict(image)
    assert len(got["boxes"]) == len(want["boxes"]) and np.allclose(got["boxes"], want["boxes"].numpy(), atol=0.05)


# -- mmdetection GN+WS and scratch ---------------------------------------------------------------

WS_CONFIG = """
model = dict(
    type='FasterRCNN',
    backbone=dict(type='ResNet', depth=50, frozen_stages=-1, conv_cfg=dict(type='ConvWS'),
                  norm_cfg=dict(type='GN', num_groups=32, requires_grad=True)),
    neck=dict(type='FPN', in_channels=[256, 512, 1024, 2048], out_channels=256, num_outs=5,
              conv_cfg=dict(type='ConvWS'), norm_cfg=dict(type='GN', num_groups=32, requires_grad=True)),
    roi_head=dict(bbox_head=dict(type='Shared4Conv1FCBBoxHead', conv_cfg=dict(type='ConvWS'),
                                 norm_cfg=dict(type='GN', num_groups=32, requires_grad=True))),
    test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=50, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
                  rcnn=dict(score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5), max_per_img=20)))
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='MultiScaleFlipAug', img_scale=(320, 192), flip=False)]
optimizer = dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=0.0001, paramwise_cfg=dict(norm_decay_mult=0))
"""


@pytest.fixture(scope="module")
def faster_ws(session_dir):
    """A weight-standardised GN Faster R-CNN R-50 as mmdetection 2.x saves one, and its conversion."""
    config = small_config()
    config.task = "object-detection"
    model = GNMaskRCNN(config)
    table = RenameTable(mmdet)
    state = OrderedDict((table.to_source(k), v) for k, v in deterministic_weights(model, seed=3).items())
    folder = session_dir("ws")
    src = mmdet_checkpoint(folder / "faster_ws.pth", state, WS_CONFIG, mmdet_version="2.0.0")
    out = folder / "faster_ws"
    summary = convert(src, out)  # verified against the mmdetection reference forward (ConvWS, no mask head)
    assert summary["verified"] and summary["preprocess_from"] == "checkpoint config"
    return src, out, state


def test_weight_standardisation_is_a_property_of_the_model(faster_ws):
    src, out, state = faster_ws
    model = load(out)
    c = model.config
    assert c.task == "object-detection" and model.roi_heads.mask_head is None
    assert (c.backbone.weight_std, c.fpn.weight_std, c.roi_heads.box_weight_std) == (True, True, True)
    assert c.train.frozen_stages == 0 and c.train.norm_decay_mult == 0.0
    table = RenameTable(mmdet)
    assert all(torch.equal(v, state[table.to_source(k)]) for k, v in model.state_dict().items())  # not folded
    plain = GNMaskRCNN(type(c).from_dict({**c.to_dict(), "backbone": {**c.to_dict()["backbone"],
                                                                     "weight_std": False}}))
    plain.load_state_dict(model.state_dict())
    image = sample_images()[2]
    assert not torch.equal(plain.inspect(image)["backbone.c2"], model.inspect(image)["backbone.c2"])


def test_a_box_only_model_predicts_evaluates_and_exports_boxes(faster_ws, tmp_path):
    src, out, _ = faster_ws
    proc = run("predict", sample_images()[2], "-m", out, "-o", tmp_path / "pred", "--score-threshold", "0")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "pred" / "results.json").read_text())
    assert rows and all("bbox" in r and "segmentation" not in r for r in rows)
    from test_eval import _tiny_coco

    coco = _tiny_coco(tmp_path / "coco", masks=False)
    proc = run("eval", out, "--images", coco / "images", "--annotations", coco / "instances.json", "--results",
               tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    assert "box " in proc.stdout and "mask " not in proc.stdout
    proc = run("export", out, "-o", tmp_path / "onnx")
    assert proc.returncode == 0, proc.stderr
    got = gnhub.runtime.load(tmp_path / "onnx").predict(sample_images()[2])
    assert set(got) == {"boxes", "scores", "labels"}
    report = json.loads((tmp_path / "onnx" / "verification.json").read_text())
    assert report["passed"] and report["dtype"] == "onnx-ws"
    proc = run("eval", tmp_path / "onnx", "--runtime", "onnx", "--images", coco / "images", "--annotations",
               coco / "instances.json", "--results", tmp_path / "onnx.json")
    assert proc.returncode == 0, proc.stderr
    assert "box " in proc.stdout and "mask " not in proc.stdout


def test_a_box_only_model_trains_with_the_scratch_recipe(faster_ws):
    from gnhub.train.loop import _param_groups

    model = load(faster_ws[1])
    losses = model([sample_images()[2]], [{"boxes": np.array([[60.0, 40, 200, 120]]), "labels": np.array([3])}],
                        generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"rpn_cls", "rpn_bbox", "cls", "bbox"}
    sum(losses.values()).backward()
    assert model.backbone.conv1.weight.grad is not None  # frozen_stages=-1: nothing frozen
    groups = _param_groups(model, 1e-4)
    norms = {id(p) for m in model.modules() if isinstance(m, torch.nn.GroupNorm) for p in m.parameters()}
    assert [g.get("weight_decay") for g in groups] == [None, 0.0] and {id(p) for p in groups[1]["params"]} == norms


def test_a_file_named_like_another_zoo_model_is_refused(faster_ws, tmp_path):
    src = faster_ws[0]
    for name, holds in [("mask_rcnn_r50_fpn_gn_ws-all_2x_coco", r"\(ResNet-50, instance-segmentation\)"),
                        ("faster_rcnn_x50_32x4d_fpn_gn_ws-all_1x_coco", r"\(ResNeXt-50 32x4d, object-detection\)")]:
        renamed = tmp_path / f"{name}_20200226-16acb762.pth"
        renamed.write_bytes(src.read_bytes())
        with pytest.raises(GnhubError, match=f"named like zoo model {name} {holds} but holds a ResNet-50 "
                                             "object-detection model; wrong or renamed file"):
            convert(renamed, tmp_path / "out", verify=False, check_hash=False)
    assert not (tmp_path / "out").exists()


def test_ws_weights_stored_channels_last_run_and_verify(faster_ws, tmp_path):
    """Weight standardisation flattened each filter with .view: a traceback for channels_last weights
    (a checkpoint saved so, or a model moved to channels_last)."""
    from concurrent.futures import ThreadPoolExecutor

    from gnhub.compare import images_for
    from gnhub.modeling.conv import standardized
    from gnhub.source import open_source
    from gnhub.verify import verify_against

    src, out, state = faster_ws
    w = state["backbone.layer1.0.conv2.weight"]
    assert torch.equal(standardized(w.contiguous(memory_format=torch.channels_last)), standardized(w))  # bit-exact
    last = OrderedDict((k, v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 else v)
                       for k, v in state.items())
    path = mmdet_checkpoint(tmp_path / "channels_last.pth", last, WS_CONFIG, mmdet_version="2.0.0")
    with ThreadPoolExecutor(1) as pool:
        source = open_source(path, "auto", check_hash=False, pool=pool)
    assert not source.tensors["backbone.conv1.weight"].is_contiguous()
    model = load(out).to(memory_format=torch.channels_last)  # as a user may run it
    assert not model.backbone.conv1.weight.is_contiguous()
    report, _ = verify_against(source, model, images_for(None)[2:3])  # both forwards, channels_last filters
    assert report.passed and report.checks, report
