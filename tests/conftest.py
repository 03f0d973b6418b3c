"""Shared fixtures: the team's ../shared/ material, checkpoints built once per session."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from gnhub import GNMaskRCNN, ModelConfig
from gnhub.demo import deterministic_weights

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures"
REFERENCE_CASE = FIXTURES / "mmdet_r50_gn_2x_seed0"

torch.set_num_threads(2)


def _shared_module(name: str):
    if not (FIXTURES / f"{name}.py").exists():
        pytest.skip("../shared/fixtures is absent: the team's reference material is needed")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, FIXTURES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def detweights():
    return _shared_module("detweights")


@pytest.fixture(scope="session")
def reference_checkpoint(tmp_path_factory) -> Path:
    """The reference case's checkpoint, rebuilt exactly as mmdetection publishes it (~180 MB)."""
    make = _shared_module("make_mmdet_checkpoint")
    return Path(make.build(str(REFERENCE_CASE), out_dir=str(tmp_path_factory.mktemp("reference"))))


@pytest.fixture(scope="session")
def reference_model_dir(reference_checkpoint, tmp_path_factory) -> Path:
    from gnhub.convert import convert

    out = tmp_path_factory.mktemp("converted") / "r50"
    convert(reference_checkpoint, out)
    return out


def small_config(depth: int = 50, num_classes: int = 80) -> ModelConfig:
    """The full architecture on images resized to fit 320x192 with 200 proposals: fast forwards."""
    config = ModelConfig()
    config.backbone.depth = depth
    config.preprocess.max_size = (320, 192)
    config.rpn.pre_nms_top_n, config.rpn.post_nms_top_n = 500, 200
    if num_classes != 80:
        config.classes = tuple(f"c{i}" for i in range(num_classes))
    return config


@pytest.fixture(scope="session")
def small_model() -> GNMaskRCNN:
    model = GNMaskRCNN(small_config())
    model.load_state_dict(deterministic_weights(model))
    return model


# An mmdetection config whose test settings make forwards fast: images fit 320x192, fewer proposals.
SMALL_MMDET_CONFIG = """
model = dict(
    data_preprocessor=dict(type='DetDataPreprocessor', mean=[103.53, 116.28, 123.675], std=[1.0, 1.0, 1.0],
                           bgr_to_rgb=False, pad_size_divisor=32),
    test_cfg=dict(
        rpn=dict(nms_pre=300, max_per_img=200, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
        rcnn=dict(score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5), max_per_img=50, mask_thr_binary=0.5)))
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(320, 192), keep_ratio=True)]
"""


def mmdet_checkpoint(path: Path, state_dict, config_text=SMALL_MMDET_CONFIG, legacy=False, **meta) -> Path:
    """Writes `state_dict` as mmdetection publishes it: {"meta": ..., "state_dict": ...}."""
    meta = {"mmdet_version": "3.3.0", "config": config_text, **meta}
    torch.save({"meta": meta, "state_dict": state_dict}, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.fixture(scope="session")
def reference_state_dict(reference_checkpoint):
    return torch.load(reference_checkpoint, weights_only=True)["state_dict"]


@pytest.fixture(scope="session")
def small_source(reference_state_dict, tmp_path_factory) -> Path:
    """The reference weights with fast test settings, as an mmdetection 3.x checkpoint."""
    return mmdet_checkpoint(tmp_path_factory.mktemp("small") / "small_r50.pth", reference_state_dict)
