import os
from collections import OrderedDict

import pytest
import torch
from conftest import REAL_RUNS
from safetensors.torch import load_file

from gnhub.convert import convert
from gnhub.errors import GnhubError
from gnhub.layout import read_config


@pytest.fixture(scope="module")
def source(reference_checkpoint):
    return torch.load(reference_checkpoint, weights_only=True)


def _save(obj, path, legacy=False):
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def _weights(model_dir):
    return load_file(model_dir / "model.safetensors")


def test_every_tensor_mapped_and_recorded(reference_model_dir, source):
    import json

    config = json.loads((reference_model_dir / "config.json").read_text())
    weights = _weights(reference_model_dir)
    assert len(weights) == len(source["state_dict"])  # nothing lost
    assert config["provenance"]["dropped_tensors"] == []
    assert config["classes"] == list(source["meta"]["dataset_meta"]["classes"])
    assert config["provenance"]["source_sha256"].startswith(config["provenance"]["source_file"][-12:-4])
    # class order: mmdetection 2.x+ already has background last: rows unchanged
    cls = source["state_dict"]["roi_head.bbox_head.fc_cls.weight"]
    assert torch.equal(weights["roi_heads.box_head.cls_score.weight"], cls)


def test_legacy_serialization_gives_the_same_model(reference_model_dir, source, tmp_path):
    path = _save(source, tmp_path / "legacy.pth", legacy=True)
    with open(path, "rb") as f:
        assert f.read(2) != b"PK"  # really the pre-1.6 format, not a zip
    convert(path, tmp_path / "out", verify=False)
    want, got = _weights(reference_model_dir), _weights(tmp_path / "out")
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_mmdet_1x_layout_converts_to_the_same_model(reference_model_dir, source, tmp_path):
    """1.x: heads at top level, background first in fc_cls, background rows in fc_reg/conv_logits."""
    old = OrderedDict()
    g = torch.Generator().manual_seed(0)
    for k, v in source["state_dict"].items():
        k = k.replace("roi_head.", "")
        if k.startswith("bbox_head.fc_cls."):
            v = torch.cat([v[-1:], v[:-1]])
        elif k.startswith("bbox_head.fc_reg."):
            v = torch.cat([torch.randn((4,) + v.shape[1:], generator=g), v])
        elif k.startswith("mask_head.conv_logits."):
            v = torch.cat([torch.randn((1,) + v.shape[1:], generator=g), v])
        old[k] = v
    meta = {"mmdet_version": "1.0rc0+abc", "CLASSES": source["meta"]["dataset_meta"]["classes"]}
    path = _save({"meta": meta, "state_dict": old}, tmp_path / "v1.pth", legacy=True)
    summary = convert(path, tmp_path / "out", verify=False)
    assert summary["source_version"] == "1.0rc0+abc"
    want, got = _weights(reference_model_dir), _weights(tmp_path / "out")
    assert set(want) == set(got)
    for k in want:
        assert torch.equal(want[k], got[k]), k


def test_r101_key_list_converts(detweights, tmp_path):
    entries = detweights.read_key_list(str(REAL_RUNS / "keys" / "mmdet_mask-rcnn_r101_fpn_gn-all.txt"))
    sd = OrderedDict(detweights.make_state_dict(entries, seed=3))
    summary = convert(_save({"meta": {}, "state_dict": sd}, tmp_path / "r101.pth"), tmp_path / "out",
                      verify=False)
    assert summary["depth"] == 101 and summary["tensors"] == len(sd)
    assert summary["preprocess_from"].startswith("gnhub default")


def test_zoo_name_supplies_preprocessing_without_embedded_config(source, tmp_path):
    name = "mask_rcnn_r50_fpn_gn-all_contrib_2x_coco_20200207-00000000.pth"
    path = _save({"meta": {}, "state_dict": source["state_dict"]}, tmp_path / name)
    summary = convert(path, tmp_path / "out", check_hash=False, verify=False)
    assert summary["name"] == "mask_rcnn_r50_fpn_gn-all_contrib_2x_coco"
    assert summary["preprocess_from"] == "gnhub zoo (mask_rcnn_r50_fpn_gn-all_contrib_2x_coco)"

    assert read_config(tmp_path / "out" / "config.json").preprocess.channel_order == "RGB"


@pytest.mark.parametrize("change,match", [
    ("extra", "does not know: \\['roi_head.extra.weight'\\]"),
    ("missing", "missing \\['fpn.output.3.norm.bias'\\]"),
    ("shape", "wrong shape \\['rpn.conv.weight'\\]"),
    ("not_a_tensor", "is a str, not a tensor"),
])
def test_totality(source, tmp_path, change, match):
    sd = OrderedDict(source["state_dict"])
    if change == "extra":
        sd["roi_head.extra.weight"] = torch.zeros(3)
    elif change == "missing":
        del sd["neck.fpn_convs.3.gn.bias"]
    elif change == "shape":
        sd["rpn_head.rpn_conv.weight"] = torch.zeros(256, 256, 1, 1)
    else:
        sd["rpn_head.rpn_conv.bias"] = "oops"
    path = _save({"meta": {}, "state_dict": sd}, tmp_path / "bad.pth")
    with pytest.raises(GnhubError, match=match):
        convert(path, tmp_path / "out", verify=False)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.pth"]  # no partial output


def test_dropped_tensors_are_reported(source, tmp_path):
    sd = OrderedDict(source["state_dict"])
    sd["backbone.bn_extra.num_batches_tracked"] = torch.tensor(5)
    summary = convert(_save({"meta": {}, "state_dict": sd}, tmp_path / "x.pth"), tmp_path / "out", verify=False)
    assert summary["dropped"] == ["backbone.bn_extra.num_batches_tracked"]


def test_hash_prefix_in_the_name_is_checked(reference_checkpoint, tmp_path):
    wrong = tmp_path / "model_20200101-deadbeef.pth"
    os.symlink(reference_checkpoint, wrong)
    with pytest.raises(GnhubError, match="does not match the deadbeef.*`check_hash=False`"):
        convert(wrong, tmp_path / "out", verify=False)
    convert(wrong, tmp_path / "out", check_hash=False, verify=False)
    assert (tmp_path / "out" / "model.safetensors").exists()


def test_existing_output_needs_force(reference_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(GnhubError, match="already exists.*--force"):
        convert(reference_checkpoint, out, verify=False)
    with pytest.raises(GnhubError, match="not a gnhub model directory"):  # --force replaces only gnhub's own
        convert(reference_checkpoint, out, force=True, verify=False)
    assert (out / "keep.txt").read_text() == "mine"
    out = tmp_path / "model"
    convert(reference_checkpoint, out, verify=False)
    convert(reference_checkpoint, out, force=True, verify=False)
    assert sorted(p.name for p in out.iterdir()) == [".gnhub-files.jsonl", "config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "out"]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_conversion(reference_checkpoint, tmp_path, dtype):
    convert(reference_checkpoint, tmp_path / "out", dtype=dtype, verify=False)
    weights = _weights(tmp_path / "out")
    assert {str(v.dtype) for v in weights.values()} == {f"torch.{dtype}"}


def test_wrong_format_is_refused(tmp_path):
    path = _save({"model": {"w": torch.zeros(2)}}, tmp_path / "x.pth")
    with pytest.raises(GnhubError, match="not a checkpoint format gnhub knows"):
        convert(path, tmp_path / "out", verify=False)
    with pytest.raises(GnhubError, match="unknown format"):
        convert(path, tmp_path / "out", fmt="caffe", verify=False)
