"""gnhub against real runs of the same checkpoints (tests/data/real_runs): mmdetection 3.3 on a GN R-50
and on a GN+WS ResNeXt-50 32x4d, detectron2's DefaultPredictor on its GN R-50 zoo config."""
import numpy as np
import pytest
import references
import torch
from conftest import REAL_RUNS, REFERENCE_CASE, case_checkpoint
from references import assert_close
from torchvision.ops import box_iou

from gnhub import load
from gnhub.convert import convert
from gnhub.precision import cpu_flags

pytestmark = pytest.mark.usefixtures("reference_threads")  # the frameworks ran at 2 threads

# float32 on CPU: gnhub runs the same kernels as the frameworks, but oneDNN's float32 kernels sum in
# another order on another CPU (AMX, AVX512, AVX2: measured up to 3e-5 on FPN levels and detection
# scores, 5e-3 px on proposals and so 1.6e-3 on RoI logits of scale 7, between the recording Xeon and
# an AMD EPYC), so the tolerances cover that and no more.
ATOL = {"fpn": 5e-4, "proposals": 5e-3, "scores": 1e-4, "logits": 3e-3, "boxes": 5e-3}
# Detections (and proposals) whose scores differ by less than this are a tie, which such last-bit
# differences may order either way, or move across the top-k cut-off.
SCORE_TIE = 1e-4
RTOL = 1e-3  # and relative to the value, for the FPN levels
# The runs were recorded on Xeons with AVX512 (and AMX), where gnhub's stages match them bit for bit.
# On a CPU without AVX512 oneDNN sums in another order: the dense stages stay within the tolerances
# above, but among a random-weight network's thousand near-equal proposal scores NMS then keeps other
# boxes (an AMD EPYC: 5 of 1000 proposals for R-50, 379 of 1000 for GN+WS ResNeXt), so the stages
# after NMS are compared only on a CPU of the recording kind.
RECORDING_KIND = "avx512f" in cpu_flags() or not cpu_flags()  # no /proc/cpuinfo: compare everything
CASES = {  # case -> what its preprocessing came from
    "mmdet_r50_gn_2x_seed0": "checkpoint config",
    "mmdet_x50_gn_ws_2x_seed30": "checkpoint config",
    "d2_mask_rcnn_R_50_FPN_3x_gn_seed20": "gnhub zoo (mask_rcnn_R_50_FPN_3x_gn)",
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, session_dir):
    """(name, the run's reference, its image, the converted model): the R-50 case reuses the
    session's conversion."""
    name = request.param
    if REAL_RUNS / name == REFERENCE_CASE:
        model_dir = request.getfixturevalue("reference_model_dir")
    else:
        folder = session_dir(name)
        source = case_checkpoint(REAL_RUNS / name, folder)
        model_dir = folder / "converted"
        convert(source, model_dir, verify=False)
        source.unlink()  # 180 MB: the converted model is what the tests use
    ref = references.load(name)
    return name, ref, references.image(ref), load(model_dir)


def _masks(ref):
    return np.unpackbits(ref["masks_packed"], axis=-1, count=int(ref["masks_shape"][2])).astype(bool)


def matched_rows(boxes, scores, want_boxes, want_scores, same=None, coords=None) -> tuple[list[int], list[int]]:
    """Pairs (gnhub's index, the framework's index) of the same box: IoU >= 0.99 (or every corner
    within `coords` pixels: proposals may be thinner than a pixel), score within ATOL (and `same`,
    e.g. the label), one to one. Order may differ only among ties (scores within
    SCORE_TIE), and at most two boxes may be missing from either side (another proposal set).
    With `coords` (proposals: NMS among a thousand near-equal scores), up to 1% of either side may
    be unmatched anywhere instead: a last-bit difference decides which of two boxes survives."""
    got_scores, want_scores = torch.as_tensor(scores).double(), torch.as_tensor(want_scores).double()
    boxes, want_boxes = torch.as_tensor(boxes).double(), torch.as_tensor(want_boxes).double()
    if coords is None:
        iou = box_iou(boxes, want_boxes)
        ok = iou >= 0.99
    else:
        iou = -(boxes[:, None, :] - want_boxes[None, :, :]).abs().amax(dim=-1)  # closeness: the nearest first
        ok = iou >= -coords
    ok &= ((got_scores[:, None] - want_scores[None, :]).abs() <= ATOL["scores"])
    ok &= same if same is not None else True
    got_idx, want_idx, used = [], [], set()
    for i in range(len(want_scores)):
        free = [j for j in ok[:, i].nonzero().flatten().tolist() if j not in used]
        if free:
            j = max(free, key=lambda j: float(iou[j, i]))
            used.add(j)
            got_idx.append(j)
            want_idx.append(i)
    if coords is not None:
        for side, n in (("gnhub", len(got_scores)), ("framework", len(want_scores))):
            assert n - len(got_idx) <= 0.01 * n, f"{side} has {n - len(got_idx)} of {n} unmatched"
        return got_idx, want_idx
    for j, i in zip(got_idx, want_idx):  # out of place only where the framework's own scores tie
        at_j = want_scores[min(j, len(want_scores) - 1)]
        assert abs(float(want_scores[i] - at_j)) <= SCORE_TIE, f"row {i} is at {j}: not a tie"
    for side, s, kept in (("gnhub", got_scores, got_idx), ("framework", want_scores, want_idx)):
        missing = sorted(set(range(len(s))) - set(kept))
        assert len(missing) <= 2, f"{side} has unmatched {missing}"
    return got_idx, want_idx


def matched_detections(rec, ref) -> tuple[list[int], list[int]]:
    """matched_rows of the detections, labels equal."""
    same = rec["labels"][:, None] == torch.from_numpy(ref["labels"])[None, :]
    return matched_rows(rec["boxes"], rec["scores"], ref["boxes"], ref["scores"], same)


def check_stages(rec, ref):
    """Every stage the run recorded, at the tolerances of ATOL (large ones from their compact form)."""
    assert_close("fpn_p2_first32", rec["fpn.p2"][:, :32], ref, ATOL["fpn"], RTOL)
    assert_close("fpn_p3_first32", rec["fpn.p3"][:, :32], ref, ATOL["fpn"], RTOL)
    for lvl in (4, 5, 6):
        assert_close(f"fpn_p{lvl}", rec[f"fpn.p{lvl}"], ref, ATOL["fpn"], RTOL)
    if not RECORDING_KIND:
        pytest.skip("the stages after NMS are compared on a CPU with AVX512, as the runs were recorded")
    gp, wp = matched_rows(rec["proposals"], rec["proposal_scores"], ref["proposals"], ref["proposal_scores"],
                          coords=ATOL["proposals"])
    assert_close("proposals", rec["proposals"][gp], ref, ATOL["proposals"], rows=wp)
    assert_close("proposal_scores", rec["proposal_scores"][gp], ref, ATOL["scores"], rows=wp)
    assert_close("roi_cls_score", rec["roi.cls_logits"][gp], ref, ATOL["logits"], rows=wp)
    assert_close("roi_bbox_pred", rec["roi.box_deltas"][gp], ref, ATOL["logits"], rows=wp)
    g, w = matched_detections(rec, ref)
    assert_close("boxes", rec["boxes"][g], ref, ATOL["boxes"], rows=w)
    assert_close("scores", rec["scores"][g], ref, ATOL["scores"], rows=w)
    if references.names(ref, "mask_logits_of_label"):
        assert_close("mask_logits_of_label", rec["mask_logits"][g], ref, ATOL["logits"], rows=w)
    if "masks_packed" in ref:  # a Mask R-CNN's run
        masks, want = rec["masks"].numpy()[g], _masks(ref)[w]
        assert masks.shape == want.shape
        assert (masks != want).sum() <= 0.003 * want.sum()
    return g, w


def _frameworks_resize(model, rgb, ref):
    """gnhub's resize of the run's image, which must be the framework's byte for byte (OpenCV, or
    Pillow for detectron2), and gnhub's scale factor."""
    resized, scale = model.preprocessor.resize(rgb)
    assert resized.shape == tuple(ref["resized_shape"]) and references.sha256(resized) == str(ref["resized_sha256"])
    return resized, scale


def test_same_stages_on_the_frameworks_exact_input(case):
    name, ref, rgb, model = case
    resized, _ = _frameworks_resize(model, rgb, ref)
    batch = model.preprocessor.batch([resized], [rgb.shape[:2]], [tuple(ref["scale_factor"])])
    assert list(batch.tensor.shape) == ref["input_shape"].tolist()
    assert batch.image_sizes[0] == tuple(ref["img_shape"])
    rec = {}
    model(batch, record=rec)
    check_stages(rec, ref)


def test_same_detections_end_to_end_from_rgb(case):
    name, ref, rgb, model = case
    _, scale = _frameworks_resize(model, rgb, ref)
    assert np.allclose(scale, ref["scale_factor"])
    rec = model.inspect(rgb)
    g, w = check_stages(rec, ref)  # every detection matched by label, IoU and score (ties in any order)
    assert len(g) >= len(ref["scores"]) - 2


def test_settings_read_from_the_checkpoint_or_the_zoo(case):
    name, ref, _, model = case
    p = model.config.preprocess
    assert p.channel_order == ("RGB" if ref["bgr_to_rgb"] else "BGR")
    assert p.mean == tuple(ref["mean"].tolist()) and p.std == tuple(ref["std"].tolist())
    assert model.config.provenance["preprocess_from"] == CASES[name]
    ws = "_ws_" in name
    b = model.config.backbone
    assert (b.weight_std, model.config.fpn.weight_std, model.config.roi_heads.box_weight_std) == (ws, ws, ws)
    assert (b.groups, b.base_width) == ((32, 4) if "x50" in name else (1, 64))
    assert model.config.convention == ("detectron2" if name.startswith("d2") else "mmdet")


def test_a_wrong_convention_still_fails(case):
    """The tie-tolerant matching stays strict: a box std off by 5% in one coordinate is caught."""
    import dataclasses

    name, ref, rgb, model = case
    batch = model.preprocessor.batch([_frameworks_resize(model, rgb, ref)[0]], [rgb.shape[:2]],
                                     [tuple(ref["scale_factor"])])
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


def test_a_compact_reference_fails_what_the_full_comparison_fails():
    """Where a reference ships compact, a result within tolerance everywhere passes; one off by
    twice the tolerance in a channel, an image column or a detection fails: at the sampled places,
    and by the slice statistics where it is off everywhere but there."""
    a = np.random.default_rng(0).standard_normal((1, 64, 40, 60)).astype(np.float32)
    ref = references.compact("p", a)
    assert "p" not in ref and ref["p:sample"].size == references.SAMPLES
    assert_close("p", torch.from_numpy(a) + 0.9e-4, ref, 1e-4)
    unsampled = np.ones(a.shape, bool)
    unsampled.flat[ref["p:index"]] = False
    for where in ((0, 5), (0, slice(None), slice(None), 7)):
        for only, match in ((np.ones(a.shape, bool), "sampled places"), (unsampled, "along axis")):
            off = a.copy()
            off[where] += np.where(only, 2e-4, 0).astype(np.float32)[where]
            with pytest.raises(AssertionError, match=match):
                assert_close("p", torch.from_numpy(off), ref, 1e-4)
    logits = np.random.default_rng(1).standard_normal((100, 28, 28)).astype(np.float32)
    ref = references.compact("m", logits)
    rows = [3, 1, 2] + list(range(4, 100))  # detection 0 unmatched, 1..3 in another order
    assert_close("m", torch.from_numpy(logits[rows]), ref, 1e-4, rows=rows)
    unsampled = np.ones(logits.shape, bool)
    unsampled.flat[ref["m:index"]] = False
    off = logits.copy()
    off[1] += np.where(unsampled[1], 2e-4, 0).astype(np.float32)
    with pytest.raises(AssertionError, match="slice 1 along axis 0"):
        assert_close("m", torch.from_numpy(off[rows]), ref, 1e-4, rows=rows)


FASTER_CASES = ["mmdet_faster_r50_scratch_seed3"]


@pytest.mark.parametrize("name", FASTER_CASES)
def test_faster_rcnn_detections_as_mmdetection_rescales_them_before_nms(name, session_dir, monkeypatch):
    """mmdetection's Faster R-CNN (no mask head) scales its boxes to original pixels (times
    float32(1 / factor)) before NMS; Mask R-CNN after it. Where gnhub's proposals are mmdetection's
    bit for bit (the run's CPU arithmetic), its boxes must be too; dividing after NMS, as for a Mask
    R-CNN, is not (it was gnhub's rule before)."""
    import json

    import detweights

    from gnhub.frameworks.mmdet.convention import MMDetConvention

    case = REAL_RUNS / name
    meta = json.loads((case / "meta.json").read_text())
    ref = dict(np.load(case / "reference.npz"))
    entries = detweights.read_key_list(case / "keys.txt")
    assert detweights.weights_digest(detweights.make_arrays(entries, meta["seed"])) == meta["weights_sha256"]
    folder = session_dir(name)
    src = folder / "faster.pth"
    torch.save({"state_dict": detweights.make_state_dict(entries, meta["seed"]), "meta": {"mmdet_version": "3.3.0"}},
               src)
    convert(src, folder / "converted", name=meta["zoo_name"], verify=False)
    model = load(folder / "converted")
    rgb = detweights.make_image(*meta["image"][:2], meta["seed"])
    rec = model.inspect(rgb)
    out = {k: rec[k] for k in ("boxes", "scores", "labels")}
    kept, _ = matched_detections(out, ref)
    assert len(kept) >= len(ref["boxes"]) - 2
    if torch.equal(rec["proposals"], torch.from_numpy(ref["proposals"])):
        assert torch.equal(out["boxes"], torch.from_numpy(ref["boxes"]))
        monkeypatch.setattr(MMDetConvention, "rescales_box_only", False)
        assert not torch.equal(model.inspect(rgb)["boxes"], torch.from_numpy(ref["boxes"]))
