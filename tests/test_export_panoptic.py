"""`gnhub export` of a Panoptic FPN (detectron2's panoptic_fpn_R_101_dconv_cascade_gn_3x, as a tiny
twin): the graph adds the semantic logits, gnhub.runtime resizes them, takes the argmax and
merges them with the instances in numpy (gnhub.panoptic_merge, the model's own merge, held to a
real detectron2 run's), and the export verifies the semantic labels and panoptic segments."""
import json

import numpy as np
import pytest
import torch
from test_deform_cascade import _cascade_config

import gnhub.runtime
from gnhub import stages as S
from gnhub.demo import deterministic_weights
from gnhub.export import export, verify_export, verify_export_golden
from gnhub.modeling import GNMaskRCNN, with_weights
from gnhub.modeling.transform import load_image
from gnhub.panoptic_merge import combine, semantic_labels
from gnhub.runtime import network_input
from gnhub.samples import sample_images


@pytest.fixture(scope="module")
def exported(session_dir):
    config = _cascade_config()
    config.backbone.groups, config.backbone.base_width = 8, 4  # ResNeXt-50 8x4d: a third of ResNet-50's time
    s = config.semantic
    s.classes, s.channels, s.num_groups = ("things", "sky", "grass", "wall"), 16, 4
    s.stuff_area, s.instance_score_thresh = 64, 0.0  # random weights: low scores, thing and stuff segments both
    config.check()
    model = GNMaskRCNN(config)
    model.load_state_dict(deterministic_weights(model))
    out = session_dir("onnx-panoptic") / "m"
    return model, out, export(model, out)


def test_a_panoptic_fpn_exports_verified_and_the_runtime_merges_as_pytorch(exported):
    model, out, summary = exported
    assert summary["verified"]
    predictor = gnhub.runtime.load(out)
    rgb = load_image(sample_images()[1])
    got, want = predictor.predict(rgb), model.inspect(rgb)
    assert set(predictor.predict(rgb)) == set(model.predict(rgb))
    ref = {k: want[k].numpy() for k in (S.SEM_SEG, S.PANOPTIC, S.SEGMENTS, "masks", "scores", "labels")}
    # the numpy resize and argmax on PyTorch's logits: PyTorch's labels, every pixel
    size, original = network_input(rgb, model.config)[1].tolist(), rgb.shape[:2]
    assert np.array_equal(semantic_labels(want[S.SEM_SEG_LOGITS][0].numpy(), size, original), ref[S.SEM_SEG])
    assert (got[S.SEM_SEG] == ref[S.SEM_SEG]).mean() >= 0.9999  # the graph's logits: a near tie may flip
    # the runtime's result: the same segments (ids, things' detections, categories); the mask
    # paste twin's pixels at the threshold (measured 12 of the masks', 3 of the map's) move stuff areas
    segments = ref[S.SEGMENTS]
    assert set(segments[:, 1].tolist()) == {0, 1} and len(segments) >= 3  # things and stuff merged
    assert np.array_equal(got[S.SEGMENTS][:, :4], segments[:, :4])
    moved = int((got["masks"] != ref["masks"]).sum()) + int((got[S.SEM_SEG] != ref[S.SEM_SEG]).sum())
    assert np.abs(got[S.SEGMENTS][:, 4] - segments[:, 4]).sum() <= moved
    assert (got[S.PANOPTIC] != ref[S.PANOPTIC]).sum() <= moved < 0.001 * ref["masks"].sum()


def test_the_export_check_sees_the_semantic_head(exported):
    """The graph against the model with the semantic predictor's bias changed: the semantic
    logits differ, and verification names them; the stored golden outputs verify."""
    model, out, _ = exported
    assert verify_export_golden(out).passed
    state = dict(model.state_dict())
    key = "sem_seg_head.predictor.bias"
    state[key] = state[key] + torch.linspace(-1, 1, len(state[key]))
    report, _ = verify_export(with_weights(model.config, state, "changed"), out / "model.onnx")
    assert not report.passed and report.first_failure().stage == S.SEM_SEG_LOGITS


def test_predict_on_the_runtime_writes_the_panoptic_result(exported, tmp_path):
    """`gnhub predict --runtime onnx`'s writer on the export: the panoptic PNG and record of the
    PyTorch model's segments (ids, categories; areas within the pasted masks' threshold pixels)."""
    from gnhub.predict import predict_files

    model, out, _ = exported
    path = sample_images()[1]
    records = []
    for name, predictor in (("onnx", gnhub.runtime.load(out)), ("torch", model)):
        predict_files(predictor, [path], tmp_path / name)
        assert (tmp_path / name / f"{path.stem}_panoptic.png").is_file()
        records.append(json.loads((tmp_path / name / "panoptic.json").read_text())["annotations"][0]["segments_info"])
    got, want = records
    assert [(s["id"], s["category_id"], s["isthing"]) for s in got] == [
        (s["id"], s["category_id"], s["isthing"]) for s in want] and len(want) >= 3
    assert sum(abs(a["area"] - b["area"]) for a, b in zip(got, want)) <= 0.001 * sum(s["area"] for s in want)


def test_the_numpy_merge_is_detectron2s_on_a_real_run():
    """gnhub.panoptic_merge.combine (the PyTorch model's merge and the runtime's) on a real
    detectron2 run's own masks, scores, classes and semantic labels (recorded by
    scripts/record_d2_cascade_run.py --case panoptic): detectron2's segment map and segments, on
    any CPU (the R-101 test in test_d2_panoptic.py compares them after NMS on AVX512 only)."""
    import references
    from conftest import REAL_RUNS
    from test_real_runs import _masks

    from gnhub.config import SemanticConfig

    case = REAL_RUNS / "d2_panoptic_fpn_R_101_dconv_cascade_gn_seed60"
    meta, ref = json.loads((case / "meta.json").read_text()), references.load(case.name)
    cfg = SemanticConfig(overlap_thresh=meta["OVERLAP_THRESH"], stuff_area=meta["STUFF_AREA_LIMIT"],
                         instance_score_thresh=meta["INSTANCES_CONFIDENCE_THRESH"])
    seg, segments = combine(_masks(ref), ref["scores"], ref["labels"], ref["sem_seg_labels"].astype(np.int64), cfg)
    assert np.array_equal(seg, ref["panoptic_seg"]) and np.array_equal(segments, ref["segments"])
    assert (segments[:, 1] == 0).any() and 0 < (segments[:, 1] == 1).sum() < len(ref["scores"])  # stuff; a cut
