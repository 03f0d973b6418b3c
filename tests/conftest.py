"""Shared fixtures: the real runs' checkpoints (tests/data/real_runs), built once per session."""
from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from gnhub import GNMaskRCNN, ModelConfig
from gnhub.demo import deterministic_weights

ROOT = Path(__file__).resolve().parents[1]
REAL_RUNS = ROOT / "tests" / "data" / "real_runs"
REFERENCE_CASE = REAL_RUNS / "mmdet_r50_gn_2x_seed0"

# Under pytest-xdist (-n 2) each worker gets one core. Results are bit-identical only at the same
# thread count: tests that compare with runs made at 2 threads use the `reference_threads` fixture.
REFERENCE_THREADS = 2
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else REFERENCE_THREADS)


def sigint_default():
    """preexec_fn for a child the tests interrupt with SIGINT: a suite started as a background job
    (`cmd &`) hands its children SIGINT ignored, which Python (and gnhub) then rightly ignore."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture()
def reference_threads():
    """This test at the thread count of the reference runs (and of `gnhub` subprocesses here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(REFERENCE_THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory):
    """mktemp for the session's and modules' fixtures, whose folders (checkpoints, models, exports:
    gigabytes) are removed when the session ends, failed or not; a failed test keeps its own
    tmp_path, which is what reading the failure needs."""
    import shutil

    made = []

    def make(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def gnhub_cache(tmp_path_factory) -> Path:
    """gnhub's cache for this session (and its subprocesses), never the user's; removed with the session."""
    path = tmp_path_factory.mktemp("gnhub-cache")
    os.environ["GNHUB_CACHE"] = str(path)
    return path


def case_checkpoint(case: Path, out_dir: Path) -> Path:
    """A real run's checkpoint, rebuilt as its framework publishes it, with the run's own weights."""
    import detweights

    with np.load(case / "reference.npz") as ref:
        return detweights.build_checkpoint(case, out_dir, str(ref["weights_sha256"]))


@pytest.fixture(scope="session")
def detweights():
    """The generator of the real runs' weights and images (tests/detweights.py)."""
    import detweights

    return detweights


@pytest.fixture(scope="session")
def reference_checkpoint(session_dir) -> Path:
    """The reference case's checkpoint, rebuilt exactly as mmdetection publishes it (~180 MB)."""
    return case_checkpoint(REFERENCE_CASE, session_dir("reference"))


@pytest.fixture(scope="session")
def reference_model_dir(reference_checkpoint, session_dir) -> Path:
    from gnhub.convert import convert

    out = session_dir("converted") / "r50"
    convert(reference_checkpoint, out, verify=False)  # test_mmdet_reference compares it with mmdetection itself
    return out


def small_config(depth: int = 50, num_classes: int = 80) -> ModelConfig:
    """The full architecture on images resized to fit 320x192 with 50 proposals and 20 detections:
    fast forwards (the RoI heads and the masks cost most on small images)."""
    config = ModelConfig()
    config.backbone.depth = depth
    config.preprocess.max_size = (320, 192)
    config.rpn.pre_nms_top_n, config.rpn.post_nms_top_n = 200, 50
    config.roi_heads.detections_per_image = 20
    if num_classes != 80:
        config.classes = tuple(f"c{i}" for i in range(num_classes))
    return config


@pytest.fixture(scope="session")
def small_model() -> GNMaskRCNN:
    model = GNMaskRCNN(small_config())
    model.load_state_dict(deterministic_weights(model))
    return model


# An mmdetection config whose test settings make forwards fast: images fit 320x192, 50 proposals, 20 detections.
SMALL_MMDET_CONFIG = """
model = dict(
    data_preprocessor=dict(type='DetDataPreprocessor', mean=[103.53, 116.28, 123.675], std=[1.0, 1.0, 1.0],
                           bgr_to_rgb=False, pad_size_divisor=32),
    test_cfg=dict(
        rpn=dict(nms_pre=200, max_per_img=50, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
        rcnn=dict(score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5), max_per_img=20, mask_thr_binary=0.5)))
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
def small_source(reference_state_dict, session_dir) -> Path:
    """The reference weights with fast test settings, as an mmdetection 3.x checkpoint."""
    return mmdet_checkpoint(session_dir("small") / "small_r50.pth", reference_state_dict)


@pytest.fixture(scope="session")
def small_dir(small_source, session_dir) -> Path:
    """small_source converted with verification: a model directory as gnhub writes it."""
    from gnhub.convert import convert

    out = session_dir("verified") / "m"
    summary = convert(small_source, out)
    assert summary["verified"] is True
    return out


# -- Detectron -----------------------------------------------------------------------------

def detectron_blobs(depth: int, detector: bool) -> list[tuple[str, tuple[int, ...]]]:
    """The blob names and shapes of a Detectron GN checkpoint, spelled out from Detectron's own
    naming (modeling/ResNet.py, FPN.py, fast_rcnn_heads.py, mask_rcnn_heads.py), not gnhub's table."""
    def conv_gn(name, out, inp, k):
        return [(f"{name}_w", (out, inp, k, k)), (f"{name}_gn_s", (out,)), (f"{name}_gn_b", (out,))]

    def conv_bias(name, out, inp, k):
        return [(f"{name}_w", (out, inp, k, k)), (f"{name}_b", (out,))]

    blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    blobs = conv_gn("conv1", 64, 3, 7)
    inp = 64
    for stage, n in zip(range(2, 6), blocks):
        out = 256 * 2 ** (stage - 2)
        for i in range(n):
            blobs += conv_gn(f"res{stage}_{i}_branch2a", out // 4, inp if i == 0 else out, 1)
            blobs += conv_gn(f"res{stage}_{i}_branch2b", out // 4, out // 4, 3)
            blobs += conv_gn(f"res{stage}_{i}_branch2c", out, out // 4, 1)
            if i == 0:
                blobs += conv_gn(f"res{stage}_0_branch1", out, inp, 1)
        inp = out
    if not detector:
        return blobs + [("pred_w", (1000, 2048)), ("pred_b", (1000,))]
    last = [f"res{s}_{n - 1}_sum" for s, n in zip(range(2, 6), blocks)]
    blobs += conv_gn(f"fpn_inner_{last[3]}", 256, 2048, 1)
    for s in (2, 1, 0):
        blobs += conv_gn(f"fpn_inner_{last[s]}_lateral", 256, 256 * 2**s, 1)
    for s in range(4):
        blobs += conv_gn(f"fpn_{last[s]}", 256, 256, 3)
    blobs += conv_bias("conv_rpn_fpn2", 256, 256, 3) + conv_bias("rpn_cls_logits_fpn2", 3, 256, 1)
    blobs += conv_bias("rpn_bbox_pred_fpn2", 12, 256, 1)
    for n in range(1, 5):
        blobs += conv_gn(f"head_conv{n}", 256, 256, 3)
    blobs += [("fc6_w", (1024, 256 * 49)), ("fc6_b", (1024,)), ("cls_score_w", (81, 1024)), ("cls_score_b", (81,)),
              ("bbox_pred_w", (324, 1024)), ("bbox_pred_b", (324,))]
    for n in range(1, 5):
        blobs += conv_gn(f"_mask_fcn{n}", 256, 256, 3)  # mask_rcnn_fcn_head_v1upXconvs_gn
    return blobs + conv_bias("conv5_mask", 256, 256, 2) + conv_bias("mask_fcn_logits", 81, 256, 1)


class Py2Pickler(pickle._Pickler):
    """Pickles bytes and str as Python 2's `str` (BINSTRING), as Detectron's files hold them."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj):
        self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj if len(obj) < 256
                   else pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin1"))

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


# Detectron's cfg YAML is a dump of its AttrDict: mimic the Python tags it carries.
class AttrDict(dict):
    pass


SMALL_DETECTRON_TEST = {"SCALE": 192, "MAX_SIZE": 320, "RPN_PRE_NMS_TOP_N": 300, "RPN_POST_NMS_TOP_N": 200,
                        "DETECTIONS_PER_IM": 50}


def detectron_pickle(path: Path, blobs: dict, test: dict | None = SMALL_DETECTRON_TEST) -> Path:
    """Writes `blobs` as Detectron saves a model: {'blobs': ..., 'cfg': YAML}, Python 2 style."""
    obj = {"blobs": blobs}
    if test is not None:
        obj["cfg"] = yaml.dump(AttrDict(MODEL=AttrDict(TYPE="generalized_rcnn"), TEST=AttrDict(test)))
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(obj)
    return path


@pytest.fixture(scope="session")
def detectron_e2e(detweights, session_dir) -> Path:
    """A Detectron R-50-FPN GN Mask R-CNN model_final.pkl (deterministic weights, fast test settings),
    with what trained files also hold: momentum blobs, the ImageNet classifier preserved from the
    initial weights, an empty preserved blob."""
    arrays = detweights.make_arrays(detectron_blobs(50, True), seed=1)
    arrays.update({k + "_momentum": np.zeros_like(arrays[k]) for k in ("conv1_w", "fc6_b", "cls_score_w")})
    arrays.update(pred_w=np.zeros((1000, 2048), np.float32), pred_b=np.zeros(1000, np.float32), res_conv1_bn_s=None)
    return detectron_pickle(session_dir("detectron") / "e2e_mask_rcnn_R-50-FPN_2x_gn.pkl", arrays)


@pytest.fixture(scope="session")
def detectron_backbone(detweights, session_dir) -> Path:
    """A Detectron ImageNet R-50-GN.pkl: the bare blobs dict, no cfg."""
    arrays = detweights.make_arrays(detectron_blobs(50, False), seed=2)
    path = session_dir("detectron") / "R-50-GN.pkl"
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(arrays)
    return path


PADDLE_TABLE = "StructuredToParameterName@@"


def paddle_bytes(arrays: dict, names: dict | None = None, protocol: int = 4) -> bytes:
    """`arrays` as `paddle.save(state_dict)` writes them (paddle/framework/io.py): one pickle of a
    plain dict of numpy arrays, then paddle's table of its internal parameter names `names`
    (tests/test_paddle.py holds this to a file real paddle wrote)."""
    names = names if names is not None else {k: f"param_{i}.w_0" for i, k in enumerate(arrays)}
    return pickle.dumps({**arrays, PADDLE_TABLE: names}, protocol=protocol)


def paddle_pdparams(path: Path, arrays: dict) -> Path:
    path.write_bytes(paddle_bytes(arrays))
    return path
