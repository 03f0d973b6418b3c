"""gnhub against a real mmdetection 3.3 run of the same checkpoint (../shared/fixtures)."""
import numpy as np
import pytest
import torch
from conftest import REFERENCE_CASE
from torchvision.ops import box_iou

from gnhub import load

pytestmark = pytest.mark.usefixtures("reference_threads")  # mmdetection ran at 2 threads

# float32 on CPU: gnhub runs the same kernels as mmdetection, so the tolerances are tight.
ATOL = {"fpn": 1e-4, "proposals": 1e-3, "scores": 1e-5, "logits": 1e-4, "boxes": 1e-3}


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(REFERENCE_CASE / "outputs.npz"))


@pytest.fixture(scope="module")
def model(reference_model_dir):
    return load(reference_model_dir)


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
    _close("mask_logits", rec["mask_logits"], ref["mask_logits_of_label"], ATOL["logits"])
    masks, want = rec["masks"].numpy(), _masks(ref)
    assert masks.shape == want.shape
    iou = (masks & want).sum((1, 2)) / np.maximum((masks | want).sum((1, 2)), 1)
    assert iou.min() >= 0.999, iou.min()


def test_same_stages_on_mmdetections_exact_input(model, reference):
    ref = reference
    batch = model.preprocessor.batch(
        [ref["resized_network_order"]], [ref["image_rgb"].shape[:2]], [tuple(ref["scale_factor"])]
    )
    assert list(batch.tensor.shape) == ref["input_shape"].tolist()
    assert batch.image_sizes[0] == tuple(ref["img_shape"])
    rec = {}
    model.run(batch, rec)
    check_stages(rec, ref)


def test_same_detections_end_to_end_from_rgb(model, reference):
    ref = reference
    resized, scale = model.preprocessor.resize(ref["image_rgb"])
    assert np.array_equal(resized, ref["resized_network_order"])  # the same OpenCV resize
    assert np.allclose(scale, ref["scale_factor"])
    rec = model.inspect(ref["image_rgb"])
    check_stages(rec, ref)
    # the acceptance rule for end to end: every detection matched by label, IoU and score
    iou = box_iou(rec["boxes"], torch.from_numpy(ref["boxes"]))
    assert bool((iou.diagonal() >= 0.99).all())
    assert float((rec["scores"] - torch.from_numpy(ref["scores"])).abs().max()) <= 1e-3


def test_preprocessing_read_from_the_checkpoint(model, reference):
    p = model.config.preprocess
    assert p.channel_order == ("RGB" if reference["bgr_to_rgb"] else "BGR")
    assert p.mean == tuple(reference["mean"].tolist()) and p.std == tuple(reference["std"].tolist())
    assert model.config.provenance["preprocess_from"] == "checkpoint config"
    assert model.config.provenance["source_version"] == "3.3.0"
