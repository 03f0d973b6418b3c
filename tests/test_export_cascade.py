"""`gnhub export` of the strongest GN models' parts: cascade class-agnostic RoI heads, deformable
convolutions (ONNX DeformConv, opset 19), a FrozenBN backbone, and PaddleDetection's convention
(its numpy postprocess and mask paste in gnhub.runtime), on one small exported twin."""
import io

import numpy as np
import onnx
import pytest
import torch
from gnhub.converters import paddle
from test_deform_cascade import _cascade_config

import gnhub.runtime
from gnhub.demo import deterministic_weights
from gnhub.errors import GnhubError
from gnhub.export import export, verify_export
from gnhub.modeling import GNMaskRCNN, ops, with_weights
from gnhub.modeling.transform import load_image
from gnhub.samples import sample_images


def _paddle_cascade() -> GNMaskRCNN:
    """PaddleDetection's cascade_mask_rcnn_r50_fpn_gn layout, small: FrozenBN backbone (deformable
    res3-res5, as detectron2's X152), GN FPN, three class-agnostic 1conv1fc GN stages."""
    config = _cascade_config()
    paddle.SETTINGS["ppdet"].apply(config)
    config.preprocess.max_size = (96, 64)
    config.rpn.pre_nms_top_n, config.rpn.post_nms_top_n = 100, 40
    config.roi_heads.box_stds = (0.1, 0.1, 0.2, 0.2, 0.05, 0.05, 0.1, 0.1, 1 / 30, 1 / 30, 1 / 15, 1 / 15)
    config.fpn.num_groups = 8  # 4 channels a group, not 1: GN over one channel of a 2x3 map is all rounding
    config.backbone.norm, config.backbone.deform_stages = "FrozenBN", (False, True, True, True)
    config.check()
    model = GNMaskRCNN(config)
    weights = deterministic_weights(model)
    for k in weights:
        if k.endswith("running_var"):  # deterministic_weights' are N(0, 0.05): a variance must be positive
            weights[k] = 1 + weights[k].abs()
    model.load_state_dict(weights)
    return model


@pytest.fixture(scope="module")
def exported(session_dir):
    model = _paddle_cascade()
    out = session_dir("onnx-cascade") / "m"
    summary = export(model, out)
    return model, out, summary


def test_a_paddle_cascade_with_deformable_convolutions_exports_verified_and_runs(exported):
    model, out, summary = exported
    assert summary["verified"] and summary["opset"] == 19
    ops_used = {n.op_type for n in onnx.load(out / "model.onnx", load_external_data=False).graph.node}
    assert {"DeformConv", "RoiAlign", "NonMaxSuppression"} <= ops_used
    predictor = gnhub.runtime.load(out)
    rgb = load_image(sample_images()[1])
    got, want = predictor.predict(rgb), model.predict(rgb)
    assert len(got["boxes"]) == len(want["boxes"]) > 0
    assert np.array_equal(got["labels"], want["labels"].numpy())
    np.testing.assert_allclose(got["boxes"], want["boxes"].numpy(), rtol=0, atol=0.05)
    np.testing.assert_allclose(got["scores"], want["scores"].numpy(), rtol=0, atol=1e-3)
    inter = (got["masks"] & want["masks"].numpy()).sum((1, 2))
    union = (got["masks"] | want["masks"].numpy()).sum((1, 2))
    assert inter.sum() >= 0.999 * union.sum()  # over all masks (measured 0.99997): a pixel at the threshold flips


def test_the_export_check_sees_the_last_cascade_stage(exported, tmp_path):
    """The graph against the model with the third stage's classifier changed: its scores are a
    third of every detection's, and verification names the detections."""
    model, out, _ = exported
    state = dict(model.state_dict())
    key = "roi_heads.cascade_heads.1.cls_score.bias"
    state[key] = state[key] + torch.linspace(-1, 1, len(state[key]))
    report, _ = verify_export(with_weights(model.config, state, "changed"), out / "model.onnx")
    assert not report.passed and report.first_failure().stage == "detections"


def test_deformable_convolution_needs_opset_19(exported, tmp_path):
    model, _, _ = exported
    with pytest.raises(GnhubError, match=r"`opset=17`: deformable convolutions .* need 19 or later"):
        export(model, tmp_path / "x", opset=17)


@pytest.mark.parametrize("groups, stride", [(1, 2), (4, 1)])
def test_a_traced_deformable_convolution_is_onnx_deformconv_equal_to_torchvisions(groups, stride):
    """Traced at one size and run by onnxruntime at another: torchvision's kernel to float32
    rounding (both sum 9 * C / groups products, in their own order)."""
    class Deform(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(16, 16 // groups, 3, 3))
            self.offset = torch.nn.Conv2d(16, 18, 3, stride, 1)
            torch.nn.init.normal_(self.offset.weight, std=0.5)  # offsets of a few pixels, some outside the map

        def forward(self, x):
            return ops.deform_conv2d(x, self.offset(x), self.weight, (stride, stride), (1, 1))

    torch.manual_seed(0)
    module, f = Deform().requires_grad_(False), io.BytesIO()
    torch.onnx.export(module, (torch.randn(1, 16, 9, 12),), f, opset_version=19, dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {2: "h", 3: "w"}})
    import onnxruntime

    x = torch.randn(1, 16, 13, 10)
    got = onnxruntime.InferenceSession(f.getvalue()).run(None, {"x": x.numpy()})[0]
    want = module(x).numpy()
    assert got.shape == want.shape and np.abs(want).max() > 1
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
