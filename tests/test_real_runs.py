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
# Detections whose scores differ by less than this are a tie: oneDNN's float32 kernels differ in the
# last bits between CPU generations (AVX512 vs AMX), which may order tied detections either way.
SCORE_TIE = 1e-4
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


def matched_detections(rec, ref) -> tuple[list[int], list[int]]:
    """Pairs (gnhub's index, the framework's index) of the same detection: same label, IoU >= 0.99,
    score within ATOL, one to one. Order may differ only among ties (scores within SCORE_TIE), and
    a detection may be missing from either side only as a tie at the end of the top-k list."""
    got_scores, want_scores = rec["scores"].double(), torch.from_numpy(ref["scores"]).double()
    iou = box_iou(rec["boxes"].double(), torch.from_numpy(ref["boxes"]).double())
    ok = (iou >= 0.99) & (rec["labels"][:, None] == torch.from_numpy(ref["labels"])[None, :])
    ok &= (got_scores[:, None] - want_scores[None, :]).abs() <= ATOL["scores"]
    got_idx, want_idx, used = [], [], set()
    for i in range(len(want_scores)):
        free = [j for j in ok[:, i].nonzero().flatten().tolist() if j not in used]
        if free:
            j = max(free, key=lambda j: float(iou[j, i]))
            used.add(j)
            got_idx.append(j)
            want_idx.append(i)
    for j, i in zip(got_idx, want_idx):  # out of place only where the framework's own scores tie
        at_j = want_scores[min(j, len(want_scores) - 1)]
        assert abs(float(want_scores[i] - at_j)) <= SCORE_TIE, f"detection {i} is at {j}: not a tie"
    for side, scores, kept in (("gnhub", got_scores, got_idx), ("framework", want_scores, want_idx)):
        missing = sorted(set(range(len(scores))) - set(kept))
        assert all(float(scores[k] - scores.min()) <= SCORE_TIE for k in missing), f"{side} has unmatched {missing}"
        assert len(missing) <= 2, f"{side} has unmatched {missing}"
    return got_idx, want_idx


def check_stages(rec, ref):
    _close("fpn.p2", rec["fpn.p2"][:, :32], ref["fpn_p2_first32"], ATOL["fpn"])
    _close("fpn.p3", rec["fpn.p3"][:, :32], ref["fpn_p3_first32"], ATOL["fpn"])
    for lvl in (4, 5, 6):
        _close(f"fpn.p{lvl}", rec[f"fpn.p{lvl}"], ref[f"fpn_p{lvl}"], ATOL["fpn"])
    _close("proposals", rec["proposals"], ref["proposals"], ATOL["proposals"])
    _close("proposal_scores", rec["proposal_scores"], ref["proposal_scores"], ATOL["scores"])
    _close("roi.cls_logits", rec["roi.cls_logits"], ref["roi_cls_score"], ATOL["logits"])
    _close("roi.box_deltas", rec["roi.box_deltas"], ref["roi_bbox_pred"], ATOL["logits"])
    g, w = matched_detections(rec, ref)
    _close("boxes", rec["boxes"][g], ref["boxes"][w], ATOL["boxes"])
    _close("scores", rec["scores"][g], ref["scores"][w], ATOL["scores"])
    if "mask_logits_of_label" in ref:
        _close("mask_logits", rec["mask_logits"][g], ref["mask_logits_of_label"][w], ATOL["logits"])
    masks, want = rec["masks"].numpy()[g], _masks(ref)[w]
    assert masks.shape == want.shape
    assert (masks != want).sum() <= 0.001 * want.sum()
    return g, w


def test_same_stages_on_the_frameworks_exact_input(case):
    name, ref, model = case
    batch = model.preprocessor.batch(
        [ref["resized_network_order"]], [ref["image_rgb"].shape[:2]], [tuple(ref["scale_factor"])]
    )
    assert list(batch.tensor.shape) == ref["input_shape"].tolist()
    assert batch.image_sizes[0] == tuple(ref["img_shape"])
    rec = {}
    model(batch, record=rec)
    check_stages(rec, ref)


def test_same_detections_end_to_end_from_rgb(case):
    name, ref, model = case
    resized, scale = model.preprocessor.resize(ref["image_rgb"])
    assert np.array_equal(resized, ref["resized_network_order"])  # the same resize (OpenCV, or Pillow for d2)
    assert np.allclose(scale, ref["scale_factor"])
    rec = model.inspect(ref["image_rgb"])
    g, w = check_stages(rec, ref)  # every detection matched by label, IoU and score (ties in any order)
    assert len(g) >= len(ref["scores"]) - 2


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
    assert model.config.convention == ("detectron2" if name.startswith("d2") else "mmdet")


def test_a_wrong_convention_still_fails(case):
    """The tie-tolerant matching stays strict: a box std off by 5% in one coordinate is caught."""
    import dataclasses

    name, ref, model = case
    batch = model.preprocessor.batch(
        [ref["resized_network_order"]], [ref["image_rgb"].shape[:2]], [tuple(ref["scale_factor"])]
    )
    heads = model.roi_heads
    right = heads.cfg
    heads.cfg = dataclasses.replace(right, box_stds=right.box_stds[:3] + (right.box_stds[3] * 1.05,))
    try:
        rec = {}
        model(batch, record=rec)
    finally:
        heads.cfg = right
    with pytest.raises(AssertionError):
        check_stages(rec, ref)
