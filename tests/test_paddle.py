"""PaddleDetection's .pdparams: read by gnhub's own unpickler (no paddle), held to files real
paddle 2.6.2 and PaddleDetection wrote (scripts/record_paddle_files.py), recognised and renamed."""
import hashlib
import json
import pickle
import pickletools

import cv2
import detweights
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import PADDLE_TABLE, REAL_RUNS, ROOT, paddle_bytes, paddle_pdparams
from gnhub.converters import FORMATS, RenameTable, paddle
from test_cli import assert_one_line_error, run

from gnhub.checkpoint import read_pickle
from gnhub.config import ModelConfig
from gnhub.convert import convert, infer_config, map_tensors
from gnhub.errors import GnhubError
from gnhub.modeling import GNMaskRCNN, with_weights

TINY = ROOT / "tests" / "data" / "paddle"
KEYS = TINY / "ppdet_mask_rcnn_r50_fpn_gn_2x_coco.txt"


def _ops(data: bytes) -> list:
    """A pickle's opcodes and arguments, numpy's module spelt as numpy 1.x spells it (2.x writes
    numpy._core) and without protocol 4's frame lengths."""
    return [(op.name, arg.replace("numpy._core", "numpy.core") if isinstance(arg, str) else arg)
            for op, arg, _ in pickletools.genops(data) if op.name != "FRAME"]


def test_a_file_real_paddle_saved_reads_back_as_paddle_computes_with_it():
    """paddle.save's bytes, its Linear's [in, out] weight (transposed by the converter) and its
    frozen BatchNorm (use_global_stats: (x - mean) / sqrt(var + 1e-5) * w + b) on recorded inputs."""
    obj = read_pickle(TINY / "tiny.pdparams")
    arrays = {k: v for k, v in obj.items() if k != PADDLE_TABLE}
    assert list(obj)[-1] == PADDLE_TABLE and obj[PADDLE_TABLE]["bbox_head.bbox_score.weight"] == "linear_3.w_0"
    assert _ops(paddle_bytes(arrays, obj[PADDLE_TABLE])) == _ops((TINY / "tiny.pdparams").read_bytes())
    assert next(name for name, c in FORMATS.items() if c.detect(obj)) == "paddle"

    record = json.loads((TINY / "tiny.json").read_text())
    t = paddle.source_tensors(obj)
    assert PADDLE_TABLE not in t and t["bbox_head.bbox_score.weight"].shape == (3, 6)  # torch's [out, in]
    fc = "bbox_head.bbox_score."
    linear = F.linear(torch.tensor(record["x_linear"]), t[fc + "weight"], t[fc + "bias"])
    torch.testing.assert_close(linear, torch.tensor(record["linear"]), rtol=1e-6, atol=1e-6)
    bn = "backbone.conv1.conv1.norm."
    frozen = F.batch_norm(torch.tensor(record["x_bn"]), t[bn + "_mean"], t[bn + "_variance"], t[bn + "weight"],
                          t[bn + "bias"], training=False, eps=1e-5)
    torch.testing.assert_close(frozen, torch.tensor(record["frozen_bn"]), rtol=1e-6, atol=1e-6)


def test_every_tensor_of_paddledetections_gn_mask_rcnn_has_its_gnhub_name_and_shape():
    """The state dict of configs/gn/mask_rcnn_r50_fpn_gn_2x_coco.yml as PaddleDetection builds it:
    every name renamed, each into a tensor of gnhub's R-50 GN Mask R-CNN of the same shape (Linear
    weights transposed); the frozen BatchNorm's statistics are the backbone norms' running ones."""
    entries = detweights.read_key_list(KEYS)
    assert len(entries) == 329
    table = RenameTable(paddle)
    with torch.device("meta"):
        own = GNMaskRCNN(ModelConfig()).state_dict()
    renamed = set()
    for name, shape in entries:
        new = table.to_gnhub(name)
        assert new is not None, name
        if name.endswith(("._mean", "._variance")):
            assert new.endswith((".running_mean", ".running_var")) and new.rsplit(".", 1)[0] + ".weight" in own, name
            continue
        expected = shape[::-1] if name in paddle.LINEAR else shape
        assert tuple(own[new].shape) == expected, (name, new)
        assert table.to_source(new) == name
        renamed.add(new)
    assert renamed == set(own)  # one to one: nothing of gnhub's model left without its source tensor


def test_a_paddledetection_checkpoint_is_recognised_and_refused_in_one_line(tmp_path):
    path = paddle_pdparams(tmp_path / "mask_rcnn_r50_fpn_gn_2x_coco.pdparams", {
        "backbone.conv1.conv1.conv.weight": np.zeros((64, 3, 7, 7), np.float32),
        "backbone.conv1.conv1.norm._mean": np.zeros(64, np.float32)})
    with pytest.raises(GnhubError, match="test conventions"):
        convert(path, tmp_path / "out", verify=False)
    assert_one_line_error(run("convert", path, "-o", tmp_path / "out"), str(path), "PaddleDetection checkpoint",
                          "docs/paddle.md")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_every_protocol_paddle_writes_is_read(tmp_path, protocol):
    """paddle.save takes protocols 2 to 4 (4 by default)."""
    arrays = {"neck.fpn_res2_sum.conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)}
    path = tmp_path / "m.pdparams"
    path.write_bytes(paddle_bytes(arrays, protocol=protocol))
    got = read_pickle(path)
    assert np.array_equal(got["neck.fpn_res2_sum.conv.weight"], arrays["neck.fpn_res2_sum.conv.weight"])
    assert pickle.loads(path.read_bytes()).keys() == got.keys()


RUN = REAL_RUNS / "ppdet_mask_rcnn_r50_fpn_gn_2x_seed40"


def _ppdet_input(image: np.ndarray, short: int, long: int) -> np.ndarray:
    """PaddleDetection's test reader on an RGB image, its numpy steps as it takes them: Resize
    (keep_ratio: the scale to fit short x long, cv2 cubic with fx, fy), NormalizeImage (is_scale,
    ImageNet mean and std in float64 on the float32 image), Permute, PadBatch to stride 32."""
    h, w = image.shape[:2]
    scale = min(short / min(h, w), long / max(h, w))
    rh, rw = int(scale * h + 0.5), int(scale * w + 0.5)
    im = cv2.resize(image, None, None, fx=rw / w, fy=rh / h, interpolation=cv2.INTER_CUBIC).astype(np.float32)
    im *= 1.0 / 255.0
    im -= np.array([0.485, 0.456, 0.406])[None, None]
    im /= np.array([0.229, 0.224, 0.225])[None, None]
    im = im.transpose(2, 0, 1)
    out = np.zeros((3, -(-rh // 32) * 32, -(-rw // 32) * 32), np.float32)
    out[:, :rh, :rw] = im
    return out


def test_the_converted_frozen_bn_backbone_and_gn_fpn_compute_what_paddledetection_computed():
    """A real PaddleDetection run (scripts/record_paddle_run.py): its seed-40 weights renamed by the
    converter onto gnhub's model (FrozenBN backbone inferred from the tensors), on the network input
    PaddleDetection computed (its sha256 checked), give PaddleDetection's FPN levels P2-P6."""
    meta = json.loads((RUN / "meta.json").read_text())
    ref = np.load(RUN / "reference.npz")
    arrays = detweights.paddle_arrays(detweights.read_key_list(RUN / "keys.txt"), meta["seed"], paddle.LINEAR)
    assert detweights.weights_digest(arrays) == meta["weights_sha256"]
    mapped, dropped = map_tensors(paddle.source_tensors(arrays), paddle, "run")
    config = infer_config(mapped, "run")
    assert (config.backbone.norm, config.fpn.norm, config.task, dropped) == ("FrozenBN", "GN", "instance-segmentation",
                                                                             [])
    model = with_weights(config, mapped, "run")
    image = detweights.make_image(*meta["image_shape"], meta["image_seed"])
    x = _ppdet_input(image, *meta["target_size"])
    assert hashlib.sha256(x.tobytes()).hexdigest() == str(ref["input_sha256"])
    with torch.no_grad():
        levels = model.fpn(model.backbone(torch.from_numpy(x)[None]))
    for i, level in enumerate(levels):
        got, want = level[0, :4].numpy(), ref[f"fpn_p{i + 2}_first4"]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())  # measured: 2.4e-6
