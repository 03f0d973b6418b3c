"""Settings are a typed patch of the config schema (gnhub/config.py's ConfigPatch): a path that is
no field, or a value config.json would refuse, stops the table that holds it."""
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import mmdet_checkpoint
from gnhub.converters import FORMATS, FileSettings

from gnhub import zoo
from gnhub.config import BGR_CAFFE, ConfigPatch, ModelConfig
from gnhub.errors import GnhubError
from gnhub.source import checked_settings, open_source


def test_a_misspelt_path_in_a_built_in_table_is_a_programming_error():
    with pytest.raises(ValueError, match=r"'rpn.nms_iuo' is not a config field; did you mean rpn.nms_iou"):
        ConfigPatch({"rpn.nms_iou": 0.7, "rpn.nms_iuo": 0.6})
    with pytest.raises(ValueError, match="is not a config field"):
        ConfigPatch({"rpn": 0.7})  # a section, not a field
    with pytest.raises(ValueError, match=r"rpn.nms_iou is 7; expected a number from 0 to 1"):
        ConfigPatch({"rpn.nms_iou": 7})
    with pytest.raises(ValueError, match="expected one of"):
        ConfigPatch({"convention": "cv2"})
    with pytest.raises(ValueError, match="read_settings: 'roi_heads.score_tresh' is not a config field"):
        FileSettings({"roi_heads.score_tresh": 0.05})  # a converter's own path: checked when it is made


def test_a_misspelt_path_in_user_data_is_one_clear_error():
    with pytest.raises(GnhubError, match=r"^zoo.json \(entry 0\): 'rpn.nms_iuo' is not a config field; did you"):
        ConfigPatch({"rpn.nms_iuo": 0.6}, "zoo.json (entry 0)")
    with pytest.raises(GnhubError, match=r"^register\(\): entry 'mine': settings: 'rpn.nms_iuo' is not"):
        zoo.register("mine", "https://up.example/m/mine.pth", "a" * 64, settings={"rpn.nms_iuo": 0.6})
    assert "mine" not in zoo.models()


def test_a_patch_sets_the_fields_it_names_and_nothing_else():
    config = ModelConfig()
    patch = ConfigPatch({"rpn.nms_iou": 0.6, "preprocess.max_size": [640, 480], "roi_heads.finest_scale": 28,
                         "convention": "detectron2"})
    assert patch["preprocess.max_size"] == (640, 480) and type(patch["roi_heads.finest_scale"]) is float
    patch.apply(config)
    assert (config.rpn.nms_iou, config.preprocess.max_size, config.convention) == (0.6, (640, 480), "detectron2")
    assert not hasattr(config.rpn, "nms_iuo") and config.train.rpn_nms_iou == 0.7
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_patches_merge_right_over_left_and_stay_unchanged():
    left = ConfigPatch({"rpn.nms_iou": 0.6, "rpn.min_size": 1.0})
    merged = left | ConfigPatch({"rpn.nms_iou": 0.5})
    assert dict(merged) == {"rpn.nms_iou": 0.5, "rpn.min_size": 1.0} and left["rpn.nms_iou"] == 0.6
    with pytest.raises(TypeError):
        left | {"rpn.nms_iuo": 0.5}  # a plain dict is not checked: it does not merge
    with pytest.raises(TypeError):
        left["rpn.nms_iou"] = 0.5


def test_every_built_in_table_is_a_patch():
    tables = [t for f in FORMATS.values() for t in f.SETTINGS.values()] + [e.settings for e in zoo.MODELS.values()]
    assert tables and all(isinstance(t, ConfigPatch) for t in tables)
    assert zoo.MODELS["mask_rcnn_R_50_FPN_3x_gn"].settings == BGR_CAFFE
    assert zoo.MODELS["mask_rcnn_r50_fpn_gn-all_2x_coco"].settings["preprocess.mean"] == (103.53, 116.28, 123.675)


def test_a_registered_entrys_settings_reach_the_conversion(tmp_path):
    path = mmdet_checkpoint(tmp_path / "mine.pth", {"backbone.conv1.weight": torch.zeros(1)}, "")
    zoo.register("mine", "https://up.example/m/mine.pth", "a" * 64, settings={"roi_heads.finest_scale": 28})
    try:
        with ThreadPoolExecutor(1) as pool:
            settings = open_source(path, "auto", False, pool, name="mine").settings
    finally:
        zoo._REGISTERED.clear()
    assert settings == ConfigPatch({"preprocess.channel_order": "RGB", "preprocess.mean": (123.675, 116.28, 103.53),
                                    "preprocess.std": (58.395, 57.12, 57.375), "roi_heads.finest_scale": 28.0})


def test_a_files_bad_value_falls_back_to_the_formats_default():
    patch, notes = checked_settings({"rpn.nms_iou": 7, "rpn.min_size": 2}, ConfigPatch({"rpn.nms_iou": 0.7}))
    assert dict(patch) == {"rpn.nms_iou": 0.7, "rpn.min_size": 2.0} and notes == [
        "checkpoint rpn.nms_iou is 7; expected a number from 0 to 1"]
