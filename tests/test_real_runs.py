"""gnhub against real runs of the same checkpoints (../shared/fixtures): mmdetection 3.3 on a GN R-50
and on a GN+WS ResNeXt-50 32x4d, detectron2's DefaultPredictor on its GN R-50 zoo config."""
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES, REFERENCE_CASE, shared_module
from torchvision.ops import box_iou

from gnhub import load
from gnhub.convert import convert

pytestmark = pytest.mark.usefixtures("reference_threads")  # the frameworks ran at 2 threads

# float32 on CPU: gnhub runs the same kernels as the frameworks, so the tolerances are tight.
ATOL = {"fpn": 1e-4, "proposals": 1e-3, "scores": 1e-5, "logits": 1e-4, "boxes": 1e-3}
CASES = {  # case -> (its rebuilder, what its preprocessing came from)
    "mmdet_r50_gn_2x_seed0": ("make_mmdet_checkpoint", "checkpoint config"),
    "mmdet_x50_gn_ws_2x_seed30": ("make_mmdet_checkpoint", "checkpoint config"),
    "d2_mask_rcnn_R_50_FPN_3x_gn_seed20": ("make_d2_checkpoint", "gnhub zoo (mask_rcnn_R_50_FPN_3x_gn)"),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, session_dir):
    """(name, the run's outputs, the converted model): the R-50 case reuses the session's conversion."""
    name = request.param
    if FIXTURES / name == REFERENCE_CASE:
        model_dir = request.getfixturevalue("reference_model_dir")
    else:
        folder = session_dir(name)
        source = Path(shared_module(CASES[name][0]).build(str(FIXTURES / name), out_dir=str(folder)))
        model_dir = folder / "converted"
        convert(source, model_dir, verify=False)
        source.unlink()  # 180 MB: the converted model is what the tests use
    return name, dict(np.load(FIXTURES / name / "outputs.npz")), load(model_dir)


def _masks(ref):
    return np.unpackbits(ref["masks_packed"], axis=-1, count=int(ref["masks_shape"][2])).astype(bool)


def _close(name, got, want, atol):
    want = torch.from_numpy(np.asarray(want))
    torch.testing.assert_close(got.float(), want.float(), rtol=0, atol=atol, msg=lambda m: f"{name}: {m}")


def check_stages(rec, ref):
    _close("fpn.p2", rec["fpn.p2"][:, :32], ref["fpn_p2_first32"], ATOL["fpn"])
    _close("fpn.p3", rec["fpn.p3"][:, :32], ref["fpn_p3_first32"], ATOL["fpn"])
    for lvl in (4, 5, 6):
        _close(f"fpn.p{lvl}", rec[f"fpn.p{lvl}"], ref[f"fpn_p{lvl}"], ATOL["fpn"])
    _close("proposals", rec["proposals"], ref["proposals"], ATOL["proposals"])
    _close("proposal_scores", rec["proposal_scores"], ref["proposal_scores"], ATOL["scores"])
    _close("roi.cls_logits", rec["roi.cls_logits"], ref["roi_cls_score"], ATOL["logits"])
    _close("roi.box_deltas", rec["roi.box_deltas"], ref["roi_bbox_pred"], ATOL["logits"])
    assert rec["labels"].tolist() == ref["labels"].tolist()
    _close("boxes", rec["boxes"], ref["boxes"], ATOL["boxes"])
    _close("scores", rec["scores"], ref["scores"], ATOL["scores"])
    if "mask_logits_of_label" in ref:
        _close("mask_logits", rec["mask_logits"], ref["mask_logits_of_label"], ATOL["logits"])
    masks, want = rec["masks"].numpy(), _masks(ref)
    assert masks.shape == want.shape
    assert (masks != want).sum() <= 0.001 * want.sum()


def test_same_stages_on_the_frameworks_exact_input(case):
    name, ref, model = case
    batch = model.preprocessor.batch(
        [ref["resized_network_order"]], [ref["image_rgb"].shape[:2]], [tuple(ref["scale_factor"])]
    )
    assert list(batch.tensor.shape) == ref["input_shape"].tolist()
    assert batch.image_sizes[0] == tuple(ref["img_shape"])
    rec = {}
    model.run(batch, rec)
    check_stages(rec, ref)


def test_same_detections_end_to_end_from_rgb(case):
    name, ref, model = case
    resized, scale = model.preprocessor.resize(ref["image_rgb"])
    assert np.array_equal(resized, ref["resized_network_order"])  # the same resize (OpenCV, or Pillow for d2)
    assert np.allclose(scale, ref["scale_factor"])
    rec = model.inspect(ref["image_rgb"])
    check_stages(rec, ref)
    # the acceptance rule for end to end: every detection matched by label, IoU and score
    iou = box_iou(rec["boxes"], torch.from_numpy(ref["boxes"]))
    assert bool((iou.diagonal() >= 0.99).all())
    assert float((rec["scores"] - torch.from_numpy(ref["scores"])).abs().max()) <= 1e-3


def test_settings_read_from_the_checkpoint_or_the_zoo(case):
    name, ref, model = case
    p = model.config.preprocess
    assert p.channel_order == ("RGB" if ref["bgr_to_rgb"] else "BGR")
    assert p.mean == tuple(ref["mean"].tolist()) and p.std == tuple(ref["std"].tolist())
    assert model.config.provenance["preprocess_from"] == CASES[name][1]
    ws = "_ws_" in name
    b = model.config.backbone
    assert (b.weight_std, model.config.fpn.weight_std, model.config.roi_heads.box_weight_std) == (ws, ws, ws)
    assert (b.groups, b.base_width) == ((32, 4) if "x50" in name else (1, 64))
    assert model.config.box_convention == ("detectron2" if name.startswith("d2") else "mmdet")
