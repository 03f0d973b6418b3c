"""Panoptic FPN training: the semantic head's loss, its targets (labels resized and padded as
detectron2's training input) and the cascade's losses held to a real detectron2 training step of
PanopticFPN (scripts/record_d2_cascade_train.py --case panoptic)."""
import json

import numpy as np
import pytest
import references
import torch
from conftest import REAL_RUNS
from test_d2_panoptic import d2_names, panoptic_config
from test_train_cascade import LOSSES, assert_gradients_are_detectron2s

from gnhub import GNMaskRCNN
from gnhub.errors import GnhubError
from gnhub.modeling.bfloat16 import network_layout
from gnhub.modeling.panoptic import resize_labels
from gnhub.train import finetune

CASE = REAL_RUNS / "d2_panoptic_train_r50_gn_dconv_seed80"


@pytest.fixture(scope="module")
def recorded():
    """gnhub's tiny panoptic model on the run's weights (its images are not resized), the run's
    images and targets, and the run."""
    import detweights

    meta = json.loads((CASE / "meta.json").read_text())
    ref = references.load(CASE.name)
    config = panoptic_config()
    config.classes, config.semantic.classes = ("a", "b", "c"), ("things", "s1", "s2", "s3")
    config.fpn.channels, config.roi_heads.fc_channels, config.semantic.channels = 32, 64, 32
    config.roi_heads.mask_pool_size, config.train.mask_size = 7, 14
    config.preprocess.max_size = (96, 64)
    model = GNMaskRCNN(config)
    names = d2_names(model)
    arrays = detweights.frozen_bn_arrays(detweights.read_key_list(CASE / "keys.txt"), meta["seed"])
    assert detweights.weights_digest(arrays) == str(ref["weights_sha256"])
    model.load_state_dict({k: torch.from_numpy(arrays.pop(names[k])) for k in model.state_dict()})
    assert not arrays  # every tensor of detectron2's model, none left over
    images, targets, proposals = [], [], []
    for i, (h, w, seed) in enumerate(meta["images"]):
        images.append(detweights.make_image(h, w, seed))
        masks = np.unpackbits(ref[f"masks_{i}_packed"], axis=-1, count=w).astype(bool)
        targets.append({"boxes": torch.from_numpy(ref[f"boxes_{i}"]), "labels": torch.from_numpy(ref[f"labels_{i}"]),
                        "masks": torch.from_numpy(masks), "sem_seg": torch.from_numpy(ref[f"sem_seg_{i}"]).long()})
        proposals.append(torch.from_numpy(ref[f"proposals_{i}"]))
    return model, images, targets, proposals, ref


def test_semantic_and_cascade_losses_and_gradients_are_detectron2s(recorded, reference_threads):
    """The semantic loss (labels padded with 255, cross-entropy at the input's size, times 0.5)
    and the cascade's losses on the run's proposals, the gradient norm of every semantic-head and
    RoI-head parameter, full gradients and the FPN features' gradients, as detectron2 gave them."""
    model, images, targets, proposals, ref = recorded
    model.train()
    batch, (boxes, labels, masks, semantic) = model._training_batch(images, targets)
    assert semantic.shape == (2, 64, 96) and (semantic[1, :, 80:] == 255).all()
    with torch.no_grad():
        feats = model.fpn(model.backbone(network_layout(batch.tensor)))[:4]
    feats = [f.detach().requires_grad_() for f in feats]
    losses = model.roi_heads.loss(feats, proposals, boxes, labels, masks, batch.image_sizes, model.config.train)
    losses["sem_seg"] = model.sem_seg_head.loss(feats, semantic, model.config.semantic.loss_weight)
    for ours, theirs in {**LOSSES, "sem_seg": "loss_sem_seg"}.items():
        assert losses[ours].item() == pytest.approx(float(ref[theirs]), rel=1e-5, abs=1e-7), ours
    sum(losses.values()).backward()
    names = d2_names(model)
    grads = {names[k]: p.grad for head in ("roi_heads", "sem_seg_head")
             for k, p in getattr(model, head).named_parameters(prefix=head)}
    assert_gradients_are_detectron2s(grads, feats, ref)


def test_the_model_gives_the_semantic_loss_beside_the_instance_losses(recorded):
    model, images, targets, _, ref = recorded
    losses = model(images, targets, generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"rpn_cls", "rpn_bbox", "sem_seg", *LOSSES}
    assert losses["sem_seg"].item() == pytest.approx(float(ref["loss_sem_seg"]), rel=1e-5)
    with pytest.raises(GnhubError, match="target 1: a Panoptic FPN trains its semantic head too"):
        model(images, [targets[0], {k: v for k, v in targets[1].items() if k != "sem_seg"}])
    bad = dict(targets[1], sem_seg=torch.full((64, 80), 4))
    with pytest.raises(GnhubError, match=r"target 1: sem_seg labels must index config.semantic.classes \(0..3\)"):
        model(images, [targets[0], bad])


def test_finetune_refuses_a_panoptic_model_until_it_reads_semantic_labels(recorded, tmp_path):
    with pytest.raises(GnhubError, match="does not train a Panoptic FPN yet: its data pipeline reads no semantic"):
        finetune(recorded[0], train_annotations=tmp_path / "a.json", train_images=tmp_path, out=tmp_path / "m")


def test_labels_resize_as_detectron2s_training_input():
    ref = references.load(CASE.name)
    for i in range(2):
        got = resize_labels(ref[f"resize_from_{i}"], ref[f"resize_to_{i}"].shape)
        assert np.array_equal(got, ref[f"resize_to_{i}"])
