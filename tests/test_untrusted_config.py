"""config.json and the mmdetection config text inside a checkpoint are untrusted: every value is
checked against bounds a real model can have, and every parse ends in a value or one clear error."""
import json
from collections import OrderedDict

import numpy as np
import pytest
import torch
from conftest import SMALL_MMDET_CONFIG, mmdet_checkpoint
from gnhub.converters import mmdet
from hypothesis import given, settings
from hypothesis import strategies as st

from gnhub.config import ConfigPatch, ModelConfig
from gnhub.convert import convert
from gnhub.errors import GnhubError
from gnhub.frameworks import convention
from gnhub.layout import read_config
from gnhub.modeling.transform import Preprocessor
from gnhub.source import checked_settings


def usable(config: ModelConfig) -> None:
    """What a config's values are used for first: building the preprocessing and resizing."""
    preprocessor = Preprocessor(config.preprocess, convention(config.convention).rescale)
    img, _ = preprocessor.resize(np.zeros((30, 20, 3), np.uint8))
    assert img.size > 0


# -- config.json ------------------------------------------------------------------------------

@pytest.mark.parametrize("path,value", [
    ("roi_heads.detections_per_image", 10**30), ("preprocess.max_size", [1e8, 1e8]),
    ("preprocess.max_size", [0, 0]), ("preprocess.size_divisor", 0), ("preprocess.mean", [1, 2]),
    ("preprocess.std", [0, 1, 1]), ("rpn.nms_iou", 2.0), ("rpn.post_nms_top_n", -1), ("classes", []),
    ("roi_heads.score_thresh", float("nan")), ("roi_heads.aligned", 1), ("rpn.strides", [4, 8]),
    ("backbone.depth", "50"), ("preprocess.mean", "abc"), ("name", ""),
])
def test_out_of_bounds_config_values_are_one_clear_error(tmp_path, path, value):
    data = ModelConfig().to_dict()
    *parents, leaf = path.split(".")
    target = data
    for p in parents:
        target = target[p]
    target[leaf] = value
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(GnhubError, match=f"config: {path} is"):
        read_config(tmp_path / "config.json")


_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**40, 10**40), st.floats(allow_nan=True),
                    st.text(max_size=5), st.lists(st.integers(-5, 10**6), max_size=6),
                    st.lists(st.floats(-1e9, 1e9), max_size=6), st.dictionaries(st.text(max_size=3), st.integers()))
_FIELDS = [f"{s}.{k}" for s, sub in ModelConfig().to_dict().items() if isinstance(sub, dict) and s != "provenance"
           for k in sub] + ["name", "task", "classes", "convention", "weights_sha256", "provenance"]


@settings(max_examples=150, deadline=None)
@given(changes=st.lists(st.tuples(st.sampled_from(_FIELDS), _VALUES), min_size=1, max_size=4))
def test_fuzzed_config_json_is_valid_or_one_clear_error(changes):
    data = ModelConfig().to_dict()
    for path, value in changes:
        *parents, leaf = path.split(".")
        target = data
        for p in parents:
            target = target[p]
        target[leaf] = value
    try:
        config = ModelConfig.from_dict(json.loads(json.dumps(data)))
    except GnhubError:
        return
    usable(config)


# -- the mmdetection config text in a checkpoint ------------------------------------------------

HOSTILE_CONFIGS = {
    "unhashable key": "model = dict(foo={[1]: 2})",
    "50000 unary minus": "x = " + "-" * 50_000 + "1",
    "200000-term sum": "x = dict(nms_pre=" + "+".join(["1"] * 200_000) + ", max_per_img=1)",
    "deep nesting": "x = " + "dict(a=" * 3000 + "1" + ")" * 3000,
    "huge text": "# " + "x" * (mmdet.MAX_CONFIG_CHARS + 1),
    "mean=5": "p = dict(mean=5, std=[1, 1, 1])",
    "mean='abc'": "p = dict(mean='abc', std=[1, 1, 1])",
    "pad_size_divisor=None": "p = dict(pad_size_divisor=None)",
    "pad_size_divisor=0": "p = dict(pad_size_divisor=0)",
    "rcnn without nms": "t = dict(score_thr=0.05, mask_thr_binary=0.5, max_per_img=100)",
    "scale=(0, 0)": "test_pipeline = [dict(type='Resize', scale=(0, 0), keep_ratio=True)]",
    "scale=(1000000, 1000000)": "test_pipeline = [dict(type='Resize', scale=(1000000, 1000000))]",
    "max_per_img=10**30": "t = dict(score_thr=0.05, nms=dict(iou_threshold=0.5), max_per_img=10**30, "
                          "mask_thr_binary=0.5)",
    "nms_pre='a'": "r = dict(nms_pre='a', max_per_img=1000, nms=dict(iou_threshold=0.7))",
    "std=[0, 0, 0]": "p = dict(mean=[1, 2, 3], std=[0, 0, 0])",
    "not python": "model = dict(",
}

SAID = {"huge text", "mean=5", "mean='abc'", "pad_size_divisor=None", "pad_size_divisor=0", "rcnn without nms",
        "scale=(0, 0)", "scale=(1000000, 1000000)", "max_per_img=10**30", "nms_pre='a'", "std=[0, 0, 0]",
        "not python"}


@pytest.mark.parametrize("name", sorted(HOSTILE_CONFIGS))
def test_hostile_embedded_configs_end_in_a_value(name):
    file = mmdet.read_settings({"meta": {"config": HOSTILE_CONFIGS[name]}})
    settings_, notes = checked_settings(file.values, ConfigPatch())
    notes += file.ignored
    config = ModelConfig()
    settings_.apply(config)
    usable(config)
    if name in SAID:
        assert notes, name  # what was read but not used is said


@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("dict(mean=std[]0123456789.,-+*'\"scale_pad=)nms_pre{}:")),
                    max_size=200))
def test_fuzzed_embedded_config_text(text):
    settings_, _ = checked_settings(mmdet.read_settings({"meta": {"config": SMALL_MMDET_CONFIG + "\n" + text}}).values,
                                    ConfigPatch())
    config = ModelConfig()
    settings_.apply(config)
    usable(config)


def test_a_hostile_embedded_config_falls_back_to_the_zoo_and_says_so(reference_state_dict, tmp_path):
    text = SMALL_MMDET_CONFIG.replace("mean=[103.53, 116.28, 123.675]", "mean='abc'").replace(
        "scale=(320, 192)", "scale=(0, 0)")
    path = mmdet_checkpoint(tmp_path / "mask_rcnn_r50_fpn_gn-all_2x_coco_20200206-8eee02a6.pth",
                            OrderedDict(reference_state_dict), text)
    messages = []
    summary = convert(path, tmp_path / "out", check_hash=False, verify=False, log=messages.append)
    assert summary["preprocess_from"] == "gnhub zoo (mask_rcnn_r50_fpn_gn-all_2x_coco)"
    assert any("mean" in m and "not used" in m for m in messages), messages
    assert any("max_size is (0, 0)" in m for m in messages), messages
    config = read_config(tmp_path / "out" / "config.json")
    assert config.preprocess.max_size == (1333, 800) and config.preprocess.mean == (103.53, 116.28, 123.675)
    assert torch.equal(torch.tensor(config.preprocess.std), torch.ones(3))
