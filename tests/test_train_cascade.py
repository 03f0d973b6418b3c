"""Cascade training: the RoI stages' losses and gradients held to a real detectron2 training step of
CascadeROIHeads (scripts/record_d2_cascade_train.py), deformable convolution's gradient, new
classes, class-agnostic boxes (a cascade finetunes end to end in test_finetune.py)."""
import hashlib
import json

import numpy as np
import pytest
import references
import torch
from conftest import REAL_RUNS
from test_d2_cascade import cascade_config, d2_names

from gnhub import GNMaskRCNN
from gnhub.modeling.bfloat16 import network_layout
from gnhub.modeling.ops import deform_conv2d

CASE = REAL_RUNS / "d2_cascade_train_x50_gn_dconv_seed60"
LOSSES = {"cls_stage0": "loss_cls_stage0", "bbox_stage0": "loss_box_reg_stage0", "cls_stage1": "loss_cls_stage1",
          "bbox_stage1": "loss_box_reg_stage1", "cls_stage2": "loss_cls_stage2", "bbox_stage2": "loss_box_reg_stage2",
          "mask": "loss_mask"}


def tiny_cascade_config(num_classes: int = 3):
    """The recorded run's config: the X152 cascade's parts on a ResNeXt-50 32x4d, 32 channels, 14x14 masks."""
    config = cascade_config()
    config.classes = tuple(f"c{i}" for i in range(num_classes))
    config.fpn.channels, config.roi_heads.fc_channels = 32, 64
    config.roi_heads.mask_pool_size, config.train.mask_size = 7, 14
    return config


@pytest.fixture(scope="module")
def recorded():
    """gnhub's model on the run's weights, the run's batch, and the run."""
    import detweights

    meta = json.loads((CASE / "meta.json").read_text())
    ref = references.load(CASE.name)
    model = GNMaskRCNN(tiny_cascade_config())
    names = d2_names(model)
    arrays = detweights.frozen_bn_arrays(detweights.read_key_list(CASE / "keys.txt"), meta["seed"])
    assert detweights.weights_digest(arrays) == str(ref["weights_sha256"])
    model.load_state_dict({k: torch.from_numpy(arrays.pop(names[k])) for k in model.state_dict()})
    assert not arrays  # every tensor of detectron2's model, none left over
    mean, std = (torch.tensor(meta[k]).view(3, 1, 1) for k in ("PIXEL_MEAN", "PIXEL_STD"))
    batch = torch.zeros(meta["input_shape"])
    gt, sizes = ([], [], [], []), []
    for i, (h, w, seed) in enumerate(meta["images"]):
        bgr = torch.from_numpy(np.ascontiguousarray(detweights.make_image(h, w, seed)[:, :, ::-1].transpose(2, 0, 1)))
        batch[i, :, :h, :w] = (bgr.float() - mean) / std
        masks = np.unpackbits(ref[f"masks_{i}_packed"], axis=-1, count=w).astype(bool)
        for part, a in zip(gt, (ref[f"proposals_{i}"], ref[f"boxes_{i}"], ref[f"labels_{i}"], masks)):
            part.append(torch.from_numpy(a))
        sizes.append((h, w))
    assert hashlib.sha256(batch.numpy().tobytes()).hexdigest() == str(ref["input_sha256"])
    return model, batch, gt, sizes, ref


def assert_gradients_are_detectron2s(grads: dict, feats: list, ref) -> None:
    """The recorded step's parameter gradient norms (every name), its full gradients and the FPN
    features' gradients."""
    assert sorted(grads) == sorted(map(str, ref["grad_norm_names"]))
    for name, norm in zip(ref["grad_norm_names"], ref["grad_norm"]):
        assert float(grads[str(name)].double().norm()) == pytest.approx(float(norm), rel=1e-4, abs=1e-9), name
    for key in references.names(ref, "grad__"):
        references.assert_close(key, grads[key[6:]], ref, atol=1e-6, rtol=1e-4)
    for i, f in enumerate(feats):
        references.assert_close(f"feature_grad_p{i + 2}", f.grad, ref, atol=1e-8, rtol=1e-4)


def test_cascade_losses_and_gradients_are_detectron2s(recorded, reference_threads):
    """Every stage's losses and the mask loss, the gradient norm of every RoI-head parameter, nine
    full gradients and the FPN features' gradients (each stage's pooled features scaled by 1/3)
    as detectron2's CascadeROIHeads gave them on the same weights, batch and proposals."""
    model, batch, (proposals, boxes, labels, masks), sizes, ref = recorded
    model.train()
    with torch.no_grad():
        feats = model.fpn(model.backbone(network_layout(batch)))[:4]
    feats = [f.detach().requires_grad_() for f in feats]
    losses = model.roi_heads.loss(feats, proposals, boxes, labels, masks, sizes, model.config.train)
    assert set(losses) == set(LOSSES)
    for ours, theirs in LOSSES.items():
        assert float(losses[ours]) == pytest.approx(float(ref[theirs]), rel=1e-5, abs=1e-7), ours
    sum(losses.values()).backward()
    names = d2_names(model)
    grads = {names[k]: p.grad for k, p in model.roi_heads.named_parameters(prefix="roi_heads")}
    assert_gradients_are_detectron2s(grads, feats, ref)


def test_deformable_convolution_has_torchvisions_gradient():
    """detectron2's own deformable convolution has no backward on a CPU; gnhub's (torchvision's
    kernel) is checked against finite differences in float64."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, generator=g, requires_grad=True)
    offset = (0.5 * torch.randn(1, 18, 4, 4, dtype=torch.float64, generator=g)).requires_grad_()
    weight = torch.randn(2, 2, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, o, w: deform_conv2d(a, o, w, (1, 1), (1, 1)),
                                    (x, offset, weight), fast_mode=True)


def test_new_classes_give_every_stage_a_classifier_and_keep_the_class_agnostic_regressors(recorded):
    model = recorded[0]
    new = model.with_classes(["a", "b"], torch.Generator().manual_seed(0))
    for head in (new.roi_heads.box_head, *new.roi_heads.cascade_heads):
        assert head.cls_score.weight.shape == (3, 64) and not head.cls_score.bias.any()
    kept = new.roi_heads.cascade_heads[1].bbox_pred.weight
    assert torch.equal(kept, model.roi_heads.cascade_heads[1].bbox_pred.weight)
    assert new.roi_heads.mask_head.logits.weight.shape[0] == 2
    assert float(new.roi_heads.mask_head.logits.weight.std()) == pytest.approx(0.001, rel=0.2)


def test_a_class_agnostic_single_stage_trains_its_four_deltas_as_mmdetection():
    """reg_class_agnostic: the loss of the 4 shared deltas is the per-class loss of a head whose
    per-class regressors all equal them."""
    from gnhub.config import RoIHeadsConfig, TrainConfig
    from gnhub.frameworks import convention
    from gnhub.modeling.roi_heads import RoIHeads

    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(1, 32, 64 // s, 64 // s, generator=g) for s in (4, 8, 16, 32)]
    props = [torch.tensor([[4.0, 4, 30, 30], [10, 12, 40, 44], [30, 2, 60, 20], [0, 0, 60, 60]])]
    gt = ([torch.tensor([[8.0, 6, 32, 34], [28, 4, 58, 22]])], [torch.tensor([1, 0])], [None])
    out = []
    for agnostic in (True, False):
        cfg = RoIHeadsConfig(num_convs=1, fc_channels=16, class_agnostic=agnostic)
        torch.manual_seed(1)
        heads = RoIHeads(32, 2, (4, 8, 16, 32), cfg, convention("mmdet"), masks=False)
        if not agnostic:
            state = dict(out[0][0])
            state["box_head.bbox_pred.weight"] = state["box_head.bbox_pred.weight"].repeat(2, 1)
            state["box_head.bbox_pred.bias"] = state["box_head.bbox_pred.bias"].repeat(2)
            heads.load_state_dict(state)
        out.append((heads.state_dict(), heads.loss(feats, props, *gt, [(64, 64)], TrainConfig())))
    assert out[0][1]["bbox"] > 0 and set(out[0][1]) == {"cls", "bbox"}
    assert float(out[0][1]["bbox"]) == pytest.approx(float(out[1][1]["bbox"]), rel=1e-6)
