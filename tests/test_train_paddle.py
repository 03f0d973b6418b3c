"""PaddleDetection's Faster R-CNN and cascade train as PaddleDetection trains them: the RPN's and the
box heads' losses and gradients held to real PaddleDetection training steps
(scripts/record_paddle_train.py); its Mask R-CNN refuses training in one line (tests/test_paddle.py)."""
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
CASCADE = REAL_RUNS / "ppdet_cascade_rcnn_train_tiny_seed71"  # recorded in float64 (docs/training.md)
LOSSES = {"rpn_cls": "loss_rpn_cls", "rpn_bbox": "loss_rpn_reg", "cls": "loss_bbox_cls", "bbox": "loss_bbox_reg"}
CASCADE_LOSSES = {"rpn_cls": "loss_rpn_cls", "rpn_bbox": "loss_rpn_reg",
                  **{f"{n}_stage{s}": f"loss_bbox_{p}_stage{s}" for s in range(3) for n, p in (("cls", "cls"),
                                                                                                ("bbox", "reg"))}}


def _recorded(case, layout):
    """The run's weights renamed as conversion renames them onto gnhub's model with
    PaddleDetection's settings (`layout`) and convention (3 classes, a 32-channel FPN and head, a
    64-wide fc: widths conversion takes from the zoo's), its batch, ground truth and proposals, and
    the run."""
    import detweights

    meta = json.loads((case / "meta.json").read_text())
    ref = np.load(case / "reference.npz")
    arrays = detweights.paddle_arrays(detweights.read_key_list(case / "keys.txt"), meta["seed"], paddle.LINEAR)
    assert detweights.weights_digest(arrays) == meta["weights_sha256"]
    config = ModelConfig(name="ppdet_tiny", task="object-detection", classes=("a", "b", "c"))
    config.backbone.norm, config.fpn.channels, config.roi_heads.fc_channels = "FrozenBN", 32, 64
    paddle.SETTINGS[layout].apply(config)
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


@pytest.fixture(scope="module")
def recorded():
    return _recorded(CASE, "ppdet")


def _step(model, batch, boxes, labels, proposals, sizes):
    """One training step's losses (gradients computed) as the run's batch and proposals give them."""
    train = model.config.train
    train.rpn_batch_size_per_image = 4096  # the run's quota: every anchor taken, as every RoI is
    model.train()
    model.freeze_stages()
    p = model.fpn(model.backbone(network_layout(batch)))
    rpn_cls, rpn_bbox = model.rpn.detectron2_loss(*model.rpn.head(p), boxes, train)
    losses = {"rpn_cls": rpn_cls, "rpn_bbox": rpn_bbox,
              **model.roi_heads.loss(p[:4], proposals, boxes, labels, [None, None], sizes, train)}
    sum(losses.values()).backward()
    return losses


def test_faster_rcnn_losses_and_gradients_are_paddledetections(recorded, reference_threads):
    """RPNTargetAssign over every anchor of the padded batch (low-quality matches), BBoxAssigner
    with the ground truth added, their losses as RPNHead and BBoxHead.get_loss compute them: the
    four losses and the gradient norm of each of the 90 parameters PaddleDetection trains (stem and
    res2 frozen, frozen BatchNorm), and the RPN's and the box head's predictors' full gradients."""
    model, batch, (boxes, labels, proposals), sizes, ref = recorded
    losses = _step(model, batch, boxes, labels, proposals, sizes)
    for ours, theirs in LOSSES.items():
        assert float(losses[ours]) == pytest.approx(float(ref[theirs]), rel=1e-5), ours
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


def test_cascade_losses_and_gradients_are_paddledetections():
    """CascadeHead's step (recorded in float64, held in float64: in float32 one ReLU input of
    -2.7e-5 rounds to opposite signs in the two frameworks, docs/training.md): stage 0 sampled with
    the ground truth added, stages 1 and 2 relabelling the previous stage's clipped boxes at 0.6 and
    0.7, each stage's losses times 1 / 3 (stage_loss_weights): the eight losses, the gradient norm
    of each of the 126 parameters PaddleDetection trains, and every stage's predictors' full
    gradients; then model(images, targets) trains it."""
    import detweights

    model, batch, (boxes, labels, proposals), sizes, ref = _recorded(CASCADE, "ppdet-cascade")
    model.double()
    losses = _step(model, batch.double(), [b.double() for b in boxes], labels, [q.double() for q in proposals],
                   sizes)
    for ours, theirs in CASCADE_LOSSES.items():
        assert float(losses[ours]) == pytest.approx(float(ref[theirs]), rel=1e-5), ours
    table = RenameTable(paddle)
    params = dict(model.named_parameters())
    grads = {str(n): params[table.to_gnhub(str(n))].grad for n in ref["grad_norm_names"]}
    assert len(grads) == len({k for k, v in params.items() if v.requires_grad}) == 126
    for name, norm in zip(ref["grad_norm_names"], ref["grad_norm"]):
        assert float(grads[str(name)].norm()) == pytest.approx(float(norm), rel=1e-4, abs=1e-9), name
    keys = [k for k in ref.files if k.startswith("grad__")]
    assert len(keys) == 8
    for key in keys:
        got = grads[key[6:]].T if key[6:] in paddle.LINEAR else grads[key[6:]]
        want = torch.from_numpy(ref[key])
        assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max()), key
    model.config.preprocess.max_size = (96, 64)  # model(images, targets): a cascade trains (no refusal)
    images = [detweights.make_image(h, w, 61 + i) for i, (h, w) in enumerate(sizes)]
    trained = model(images, [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels)],
                    generator=torch.Generator().manual_seed(0))
    assert set(trained) == set(CASCADE_LOSSES) and all(torch.isfinite(v) and v > 0 for v in trained.values())
