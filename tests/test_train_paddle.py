"""PaddleDetection's Faster R-CNN trains as PaddleDetection trains it: the RPN's and the box head's
losses and gradients held to a real PaddleDetection training step (scripts/record_paddle_train.py);
its Mask R-CNN and cascade refuse training in one line (tests/test_paddle.py)."""
import hashlib
import json

import numpy as np
import pytest
import torch
from conftest import REAL_RUNS
from gnhub.converters import RenameTable, paddle

from gnhub import GNMaskRCNN
from gnhub.config import ModelConfig
from gnhub.modeling.bfloat16 import network_layout

CASE = REAL_RUNS / "ppdet_faster_rcnn_train_tiny_seed70"
LOSSES = {"rpn_cls": "loss_rpn_cls", "rpn_bbox": "loss_rpn_reg", "cls": "loss_bbox_cls", "bbox": "loss_bbox_reg"}


@pytest.fixture(scope="module")
def recorded():
    """The run's weights renamed as conversion renames them onto gnhub's Faster R-CNN with
    PaddleDetection's settings and convention (3 classes, a 32-channel FPN and head, a 64-wide fc:
    widths conversion takes from the zoo's), its batch, ground truth and proposals, and the run."""
    import detweights

    meta = json.loads((CASE / "meta.json").read_text())
    ref = np.load(CASE / "reference.npz")
    arrays = detweights.paddle_arrays(detweights.read_key_list(CASE / "keys.txt"), meta["seed"], paddle.LINEAR)
    assert detweights.weights_digest(arrays) == meta["weights_sha256"]
    config = ModelConfig(name="ppdet_faster_tiny", task="object-detection", classes=("a", "b", "c"))
    config.backbone.norm, config.fpn.channels, config.roi_heads.fc_channels = "FrozenBN", 32, 64
    paddle.SETTINGS["ppdet"].apply(config)
    model = GNMaskRCNN(config)
    table = RenameTable(paddle)
    state = {table.to_gnhub(k): torch.from_numpy(v.T.copy() if k in paddle.LINEAR else v) for k, v in arrays.items()}
    model.load_state_dict(state)
    batch = np.zeros((len(meta["images"]), 3, 64, 96), np.float32)
    for i, (h, w, seed) in enumerate(meta["images"]):  # NormalizeImage(is_scale=True), as the run computed it
        im = detweights.make_image(h, w, seed).astype(np.float32) * np.float32(1 / 255)
        batch[i, :, :h, :w] = ((im - np.array(meta["mean"], np.float32)) / np.array(meta["std"], np.float32)
                               ).transpose(2, 0, 1)
    assert hashlib.sha256(batch.tobytes()).hexdigest() == str(ref["input_sha256"])
    gt = ([torch.tensor(b) for b in meta["boxes"]], [torch.tensor(c) for c in meta["labels"]],
          [torch.from_numpy(ref[f"proposals_{i}"]) for i in range(len(meta["images"]))])
    return model, torch.from_numpy(batch), gt, [(h, w) for h, w, _ in meta["images"]], ref


def test_faster_rcnn_losses_and_gradients_are_paddledetections(recorded, reference_threads):
    """RPNTargetAssign over every anchor of the padded batch (low-quality matches), BBoxAssigner
    with the ground truth added, their losses as RPNHead and BBoxHead.get_loss compute them: the
    four losses and the gradient norm of each of the 90 parameters PaddleDetection trains (stem and
    res2 frozen, frozen BatchNorm), and the RPN's and the box head's predictors' full gradients."""
    model, batch, (boxes, labels, proposals), sizes, ref = recorded
    train = model.config.train
    train.rpn_batch_size_per_image = 4096  # the run's quota: every anchor taken, as every RoI is
    model.train()
    model.freeze_stages()
    p = model.fpn(model.backbone(network_layout(batch)))
    rpn_cls, rpn_bbox = model.rpn.detectron2_loss(*model.rpn.head(p), boxes, train)
    losses = {"rpn_cls": rpn_cls, "rpn_bbox": rpn_bbox,
              **model.roi_heads.loss(p[:4], proposals, boxes, labels, [None, None], sizes, train)}
    for ours, theirs in LOSSES.items():
        assert float(losses[ours]) == pytest.approx(float(ref[theirs]), rel=1e-5), ours
    sum(losses.values()).backward()
    table = RenameTable(paddle)
    grads = {table.to_source(k): v.grad for k, v in model.named_parameters() if v.requires_grad}
    assert sorted(grads) == sorted(map(str, ref["grad_norm_names"]))
    for name, norm in zip(ref["grad_norm_names"], ref["grad_norm"]):
        assert float(grads[str(name)].double().norm()) == pytest.approx(float(norm), rel=1e-4, abs=1e-9), name
    for key in (k for k in ref.files if k.startswith("grad__")):
        got = grads[key[6:]].T if key[6:] in paddle.LINEAR else grads[key[6:]]
        want = torch.from_numpy(ref[key])
        assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max()), key


def test_the_model_trains_with_paddledetections_losses(recorded, monkeypatch):
    """model(images, targets) of a paddle-convention Faster R-CNN: PaddleDetection's RPN loss (not
    mmdetection's) and box losses, on training proposals of its own."""
    import detweights

    model, _, (boxes, labels, _), sizes, _ = recorded
    model.config.preprocess.max_size = (96, 64)  # the images at their own size
    used = []
    monkeypatch.setattr(model.rpn, "loss", None)  # mmdetection's: not called
    detectron2_loss = model.rpn.detectron2_loss
    monkeypatch.setattr(model.rpn, "detectron2_loss", lambda *a, **k: used.append(1) or detectron2_loss(*a, **k))
    images = [detweights.make_image(h, w, 61 + i) for i, (h, w) in enumerate(sizes)]
    losses = model(images, [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels)],
                   generator=torch.Generator().manual_seed(0))
    assert used == [1] and set(losses) == {"rpn_cls", "rpn_bbox", "cls", "bbox"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
