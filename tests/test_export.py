"""`gnhub export`: an ONNX graph verified like a conversion, and gnhub.runtime without torch."""
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import small_config
from test_cli import run

import gnhub.export
from gnhub import GNMaskRCNN, load
from gnhub.compare import compare
from gnhub.demo import deterministic_weights
from gnhub.errors import GnhubError
from gnhub.export import DetectionGraph, export
from gnhub.modeling.transform import load_image
from gnhub.runtime import OnnxPredictor
from gnhub.samples import sample_images


@pytest.fixture(scope="module")
def exported(small_dir, session_dir):
    out = session_dir("onnx") / "m-onnx"
    proc = run("export", small_dir, "-o", out)
    assert proc.returncode == 0, proc.stderr
    return out


def test_export_verifies_and_runs_by_cli(exported, small_dir, tmp_path):
    report = json.loads((exported / "verification.json").read_text())
    assert report["passed"] and report["dtype"] == "onnx" and len(report["onnx_sha256"]) == 64
    stages = {(c["image"], c["stage"]) for c in report["checks"]}
    for image in ("street.png", "portrait.png", "square.png", "tiny.png"):  # other sizes than the traced one
        assert {(image, s) for s in ("input", "proposals", "detections", "mask_logits", "masks")} <= stages
    proc = run("verify", exported)
    assert proc.returncode == 0, proc.stderr
    proc = run("predict", sample_images()[1], "--model", exported, "--runtime", "onnx", "--out", tmp_path / "p")
    assert proc.returncode == 0, proc.stderr
    onnx_dets = json.loads((tmp_path / "p" / "results.json").read_text())
    proc = run("predict", sample_images()[1], "--model", small_dir, "--out", tmp_path / "t")
    torch_dets = json.loads((tmp_path / "t" / "results.json").read_text())
    assert len(onnx_dets) == len(torch_dets) > 0
    assert [d["category_id"] for d in onnx_dets[:10]] == [d["category_id"] for d in torch_dets[:10]]


def test_eval_scores_an_export_without_torch(exported, small_dir, tmp_path):
    from test_eval import _tiny_coco

    coco = _tiny_coco(tmp_path / "coco")
    args = ["eval", exported, "--runtime", "onnx", "--images", coco / "images", "--annotations",
            coco / "instances.json", "--results", tmp_path / "onnx.json"]
    code = ("import sys; sys.modules['torch'] = None\n"  # importing torch now fails
            "from gnhub.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "box " in proc.stdout and "mask " in proc.stdout
    proc = run("eval", small_dir, *args[4:-1], tmp_path / "torch.json")
    assert proc.returncode == 0, proc.stderr
    got, want = (json.loads((tmp_path / f"{r}.json").read_text()) for r in ("onnx", "torch"))
    assert len(got) == len(want) and [g["category_id"] for g in got] == [w["category_id"] for w in want]
    assert np.allclose([g["bbox"] for g in got], [w["bbox"] for w in want], atol=0.05)


def test_published_beside_the_weights_and_run_by_name_without_torch(exported, small_dir, tmp_path):
    hub = tmp_path / "hub"
    proc = run("publish", small_dir, "--repo-id", "me/m", "--onnx", exported, "--hub-dir", hub)
    assert proc.returncode == 0, proc.stderr
    assert (hub / "me/m/onnx/model.onnx").is_file() and (hub / "me/m/model.safetensors").is_file()
    card = (hub / "me/m/README.md").read_text()
    assert "## Run with ONNX Runtime" in card and 'gnhub.runtime.load("' in card and "**passed**" in card
    assert load("me/m", hub_dir=str(hub)).config.weights_sha256 == load(small_dir).config.weights_sha256
    code = ("import sys; sys.modules['torch'] = None\n"  # importing torch now fails
            "import gnhub.runtime\n"
            f"r = gnhub.runtime.load('me/m', hub_dir={str(hub)!r}).predict({str(sample_images()[0])!r})\n"
            "print(sorted(r), len(r['boxes']), r['masks'].shape, 'torch' in sys.modules and sys.modules['torch'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("['boxes', 'labels', 'masks', 'scores']") and proc.stdout.strip().endswith("None")
    proc = run("publish", small_dir, "--repo-id", "me/m", "--onnx", exported, "--hub-dir", hub)
    assert proc.returncode == 0 and "unchanged" in proc.stdout


@pytest.fixture(scope="module")
def small_model():
    model = GNMaskRCNN(small_config())
    model.load_state_dict(deterministic_weights(model))
    return model


def _variant(model, **roi):
    config = dataclasses.replace(model.config, roi_heads=dataclasses.replace(model.config.roi_heads, **roi))
    return gnhub.modeling.with_weights(config, model.state_dict(), "variant")


@pytest.mark.parametrize("roi, count", [({"score_thresh": 1.0}, 0), ({"detections_per_image": 1}, 1)])
def test_zero_and_one_detection(small_model, tmp_path, roi, count):
    model = _variant(small_model, **roi)
    export(model, tmp_path / "x", verify=False)
    predictor = gnhub.runtime.load(tmp_path / "x")
    rgb = load_image(sample_images()[2])
    got, want = predictor.predict(rgb), model.predict(rgb)
    assert len(got["boxes"]) == len(want["boxes"]) == count
    assert got["masks"].shape == (count, *rgb.shape[:2]) and got["labels"].dtype == np.int64
    if count:
        ref = {k: v for k, v in model.inspect(rgb).items()}
        stages = {k: torch.from_numpy(v) for k, v in predictor.stages(rgb).items()}
        assert all(c.passed for c in compare("square.png", stages, {k: ref[k] for k in stages if k in ref}, "onnx"))


def test_broken_exports_fail_at_the_right_stage(small_model, tmp_path, monkeypatch):
    unaligned = _variant(small_model, aligned=False)
    monkeypatch.setattr(gnhub.export, "verify_export", _against(small_model, gnhub.export.verify_export))
    with pytest.raises(GnhubError, match="does not verify, nothing written: detections differs on street.png"):
        export(unaligned, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    monkeypatch.undo()

    forward = DetectionGraph.forward

    def constant_size(self, x, image_size, scale_factor):  # the traced image's size baked into the graph
        return forward(self, x, torch.tensor(image_size.tolist()), torch.tensor(scale_factor.tolist()))

    monkeypatch.setattr(DetectionGraph, "forward", constant_size)
    with pytest.raises(GnhubError, match="differs on portrait.png"):
        export(small_model, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def _against(reference, verify):
    """verify_export comparing the graph with `reference` (the intended model), not the exported one."""
    return lambda model, path: verify(reference, path)


def test_what_does_not_export_is_one_error(small_model, tmp_path):
    with pytest.raises(GnhubError, match="float32 only"):
        export(small_model.to(torch.bfloat16), tmp_path / "h")
    small_model.float()
    with pytest.raises(GnhubError, match="needs 16 or later"):
        export(small_model, tmp_path / "o", opset=13)
    det = dataclasses.replace(small_model.config, convention="detectron")
    with pytest.raises(GnhubError, match="Detectron's conventions"):
        export(gnhub.modeling.with_weights(det, small_model.state_dict(), "d"), tmp_path / "d")
    with pytest.raises(GnhubError, match="no model.onnx"):
        gnhub.runtime.load(tmp_path)
    assert OnnxPredictor and load


def test_a_foreign_onnx_graph_whose_hash_matches_is_refused_on_load(exported, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from gnhub.files import sha256_file

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "foreign",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    folder = tmp_path / "foreign"
    folder.mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "model.onnx")
    (folder / "config.json").write_bytes((exported / "config.json").read_bytes())
    report = json.loads((exported / "verification.json").read_text())
    (folder / "verification.json").write_text(json.dumps({**report, "onnx_sha256": sha256_file(folder / "model.onnx")}))
    with pytest.raises(GnhubError, match=r"model.onnx: not a gnhub export of this config \(inputs \['x'\]"):
        gnhub.runtime.load(folder)
