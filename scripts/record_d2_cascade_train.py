"""Records one real detectron2 training step of CascadeROIHeads into tests/data/real_runs
(recipe: docs/detectron2_oracle.md). Run it with detectron2 (built with its CPU extension)
importable, from the project root:

    PYTHONPATH=/path/to/detectron2 python scripts/record_d2_cascade_train.py [--out DIR]

detectron2 builds configs/Misc/cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv.yaml made tiny
(OVERRIDES: ResNeXt-50 32x4d with its deformable stages and FrozenBN, 32-channel FPN and GN heads, a
7x7 mask pool, 3 classes), gnhub's test generator (tests/detweights.py, frozen_bn_arrays) gives
the weights by detectron2's own key list, and the training-mode RoI heads run on a batch of two images
(make_image, BGR) with fixed proposals (drawn here around the ground truth and stored) and
ground-truth boxes, classes and bit masks. The run is deterministic: each image has fewer
candidates than the sampler's quota (512, a quarter foreground), so subsample_labels takes them
all (in its random order, which no loss depends on). The backbone runs without gradients:
detectron2's deformable convolution has no backward on a CPU (its _DeformConv.backward raises
NotImplementedError), so the FPN features are leaves and their gradients are recorded. Writes
keys.txt (the weights' order), meta.json and reference.npz (tests/references.compact) at 2 threads.

`--case panoptic` records PanopticFPN's training step the same way on
configs/Misc/panoptic_fpn_R_101_dconv_cascade_gn_3x.yaml made tiny (PANOPTIC: a GN ResNet-50 with its
deformable stages, 32-channel GN FPN and heads, 3 thing classes, 4 semantic labels), two images
(64 x 96 and 64 x 80: a detectron2-style resize leaves them as they are) and, per image, semantic
labels (blobs of 0..3 and 255) given as PanopticFPN.forward takes them (ImageList.from_tensors,
padded with 255): its SemSegFPNHead loss joins the RoI heads' before the backward. It also records
ResizeTransform.apply_segmentation of two label maps (the training input's label resize).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

import detweights  # noqa: E402
from references import REAL_RUNS, compact  # noqa: E402
from refresh_real_runs import npz_bytes  # noqa: E402

CONFIG = "Misc/cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv.yaml"
OVERRIDES = {"MODEL.RESNETS.DEPTH": 50, "MODEL.RESNETS.WIDTH_PER_GROUP": 4, "MODEL.FPN.OUT_CHANNELS": 32,
             "MODEL.ROI_BOX_HEAD.CONV_DIM": 32, "MODEL.ROI_BOX_HEAD.FC_DIM": 64, "MODEL.ROI_MASK_HEAD.CONV_DIM": 32,
             "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": 7,
             "MODEL.ROI_HEADS.NUM_CLASSES": 3}
SEED = 60
IMAGES = ((64, 96, 61), (48, 80, 62))  # (height, width, seed); the batch pads to 64 x 96
GT_PER_IMAGE, JITTERED, RANDOM = 3, 6, 4  # boxes; proposals: per ground truth, and anywhere
CASE = "d2_cascade_train_x50_gn_dconv_seed60"
PANOPTIC = {"config": "Misc/panoptic_fpn_R_101_dconv_cascade_gn_3x.yaml", "seed": 80,
            "images": ((64, 96, 81), (64, 80, 82)), "case": "d2_panoptic_train_r50_gn_dconv_seed80",
            "overrides": {"MODEL.RESNETS.DEPTH": 50, "MODEL.FPN.OUT_CHANNELS": 32, "MODEL.ROI_BOX_HEAD.FC_DIM": 64,
                          "MODEL.ROI_MASK_HEAD.CONV_DIM": 32, "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": 7,
                          "MODEL.ROI_HEADS.NUM_CLASSES": 3, "MODEL.SEM_SEG_HEAD.CONVS_DIM": 32,
                          "MODEL.SEM_SEG_HEAD.NUM_CLASSES": 4},
            "full_grads": ("sem_seg_head.predictor.weight", "sem_seg_head.p2.0.weight", "sem_seg_head.p5.0.weight",
                           "roi_heads.box_predictor.0.cls_score.weight",
                           "roi_heads.box_predictor.2.bbox_pred.weight", "roi_heads.mask_head.predictor.weight")}
RESIZED = (((100, 150), (64, 96)), ((75, 125), (48, 80)))  # label maps resized as the training input resizes them
# full gradients of these (the large ones compact); every roi_heads parameter's gradient norm
FULL_GRADS = ("roi_heads.box_predictor.0.bbox_pred.weight", "roi_heads.box_predictor.1.bbox_pred.weight",
              "roi_heads.box_predictor.2.bbox_pred.weight", "roi_heads.box_predictor.0.cls_score.weight",
              "roi_heads.box_predictor.2.cls_score.weight", "roi_heads.box_head.0.conv1.weight",
              "roi_heads.box_head.2.fc1.weight", "roi_heads.mask_head.predictor.weight",
              "roi_heads.mask_head.mask_fcn1.weight")


def targets_of(h: int, w: int, rng: np.random.Generator):
    """Ground truth (boxes, classes, masks: an ellipse inside each box) and proposals: jittered
    ground-truth boxes (their IoUs spread over the cascade's thresholds) and random boxes."""
    boxes, masks = [], []
    yy, xx = np.mgrid[:h, :w] + 0.5
    for _ in range(GT_PER_IMAGE):
        bw, bh = rng.uniform(0.2, 0.5) * w, rng.uniform(0.2, 0.5) * h
        x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        boxes.append([x0, y0, x0 + bw, y0 + bh])
        masks.append(((xx - x0 - bw / 2) / (bw / 2)) ** 2 + ((yy - y0 - bh / 2) / (bh / 2)) ** 2 <= 1)
    boxes = np.array(boxes, np.float32)
    props = []
    for x0, y0, x1, y1 in boxes:
        bw, bh = x1 - x0, y1 - y0
        shift = rng.uniform(-0.25, 0.25, (JITTERED, 2)) * [bw, bh]
        scale = np.exp(rng.uniform(-0.3, 0.3, (JITTERED, 2)))
        cx, cy = (x0 + x1) / 2 + shift[:, 0], (y0 + y1) / 2 + shift[:, 1]
        pw, ph = bw * scale[:, 0], bh * scale[:, 1]
        props.append(np.stack([cx - pw / 2, cy - ph / 2, cx + pw / 2, cy + ph / 2], axis=1))
    corner = rng.uniform(0, 1, (RANDOM, 2)) * [w * 0.7, h * 0.7]
    props.append(np.concatenate([corner, corner + rng.uniform(6, 24, (RANDOM, 2))], axis=1))
    props = np.concatenate(props)
    props[:, 0::2] = props[:, 0::2].clip(0, w)
    props[:, 1::2] = props[:, 1::2].clip(0, h)
    classes = rng.integers(0, OVERRIDES["MODEL.ROI_HEADS.NUM_CLASSES"], GT_PER_IMAGE)
    return boxes, classes, np.stack(masks), props.astype(np.float32)


def semantic_of(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w) uint8 semantic labels: a coarse grid of labels 0..3 and 255 (none), blocky, with
    a few single-pixel specks."""
    grid = rng.choice(np.array([0, 1, 2, 3, 255], np.uint8), (h // 8 + 1, w // 8 + 1), p=[0.25, 0.2, 0.2, 0.2, 0.15])
    labels = np.repeat(np.repeat(grid, 8, 0), 8, 1)[:h, :w].copy()
    labels[rng.integers(0, h, 40), rng.integers(0, w, 40)] = rng.integers(0, 4, 40)
    return labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=("cascade", "panoptic"), default="cascade")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    panoptic = args.case == "panoptic"
    config, overrides, seed, images_, case, full_grads = (
        (PANOPTIC[k] for k in ("config", "overrides", "seed", "images", "case", "full_grads")) if panoptic
        else (CONFIG, OVERRIDES, SEED, IMAGES, CASE, FULL_GRADS))
    args.out = args.out or REAL_RUNS / case
    import detectron2
    from detectron2.config import get_cfg
    from detectron2.data.transforms import ResizeTransform
    from detectron2.modeling import build_model
    from detectron2.structures import BitMasks, Boxes, ImageList, Instances
    from detectron2.utils.events import EventStorage

    torch.set_num_threads(2)
    cfg = get_cfg()
    cfg.merge_from_file(str(Path(detectron2.__file__).parents[1] / "configs" / config))
    cfg.merge_from_list([x for k, v in overrides.items() for x in (k, str(v))] + ["MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    keys = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    arrays = detweights.frozen_bn_arrays(keys, seed)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()})
    model.train()
    out, inputs, targets, proposals = {}, [], [], []
    for i, (h, w, image_seed) in enumerate(images_):
        rgb = detweights.make_image(h, w, image_seed)
        boxes, classes, masks, props = targets_of(h, w, np.random.default_rng(image_seed))
        inputs.append({"image": torch.from_numpy(np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1))).float()})
        gt = Instances((h, w))
        gt.gt_boxes, gt.gt_classes = Boxes(torch.from_numpy(boxes)), torch.from_numpy(classes)
        gt.gt_masks = BitMasks(torch.from_numpy(masks))
        targets.append(gt)
        p = Instances((h, w))
        p.proposal_boxes, p.objectness_logits = Boxes(torch.from_numpy(props)), torch.zeros(len(props))
        proposals.append(p)
        out.update({f"boxes_{i}": boxes, f"labels_{i}": classes, f"proposals_{i}": props,
                    f"masks_{i}_packed": np.packbits(masks, axis=-1), f"masks_{i}_shape": np.array(masks.shape)})
        if panoptic:
            labels = semantic_of(h, w, np.random.default_rng(image_seed + 100))
            inputs[-1]["sem_seg"] = torch.as_tensor(labels.astype("long"))  # as DatasetMapper gives them
            out[f"sem_seg_{i}"] = inputs[-1]["sem_seg"].numpy().astype(np.uint8)
    images = model.preprocess_image(inputs)
    with torch.no_grad():
        features = model.backbone(images.tensor)
    features = {k: v.detach().requires_grad_() for k, v in features.items()}
    torch.manual_seed(0)
    with EventStorage():
        _, losses = model.roi_heads(images, features, proposals, targets)
        if panoptic:  # as PanopticFPN.forward gives the semantic labels to its head
            gt_sem_seg = ImageList.from_tensors([x["sem_seg"] for x in inputs], model.backbone.size_divisibility,
                                                model.sem_seg_head.ignore_value,
                                                model.backbone.padding_constraints).tensor
            losses.update(model.sem_seg_head(features, gt_sem_seg)[1])
    total = sum(losses.values())
    total.backward()
    heads = ("roi_heads.", "sem_seg_head.")
    grads = {k: p.grad for k, p in model.named_parameters() if k.startswith(heads) and p.grad is not None}
    out.update({k: np.array(float(v.detach())) for k, v in losses.items()})  # loss_cls_stage0, ..
    out["grad_norm_names"] = np.array(sorted(grads))
    out["grad_norm"] = np.array([float(grads[k].double().norm()) for k in sorted(grads)])
    out.update({f"grad__{k}": grads[k].numpy() for k in full_grads})
    if panoptic:
        for i, ((h, w), (nh, nw)) in enumerate(RESIZED):
            labels = semantic_of(h, w, np.random.default_rng(90 + i))
            out.update({f"resize_from_{i}": labels, f"resize_to_{i}": ResizeTransform(h, w, nh, nw)
                        .apply_segmentation(labels)})
    out.update({f"feature_grad_{k}": features[k].grad.numpy() for k in ("p2", "p3", "p4", "p5")})
    out["weights_sha256"] = np.array(detweights.weights_digest(arrays))
    out["input_sha256"] = np.array(hashlib.sha256(images.tensor.numpy().tobytes()).hexdigest())
    stored = {}
    for name, a in out.items():
        stored.update(compact(name, a))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reference.npz").write_bytes(npz_bytes(stored))
    (args.out / "keys.txt").write_text("".join(f"{k}\t{','.join(map(str, s))}\n" for k, s in keys))
    meta = {"detectron2_version": detectron2.__version__, "config": config, "overrides": overrides, "seed": seed,
            "weights": "tests/detweights.py frozen_bn_arrays", "torch": torch.__version__, "threads": 2,
            "PIXEL_MEAN": list(cfg.MODEL.PIXEL_MEAN), "PIXEL_STD": list(cfg.MODEL.PIXEL_STD),
            "images": [list(x) for x in images_], "input_shape": list(images.tensor.shape),
            "BATCH_SIZE_PER_IMAGE": cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE,
            "POSITIVE_FRACTION": cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION,
            "IOUS": list(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS),
            "BBOX_REG_WEIGHTS": [list(w) for w in cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS],
            **({"SEM_SEG_LOSS_WEIGHT": cfg.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT} if panoptic else {}),
            "losses": {k: float(v.detach()) for k, v in losses.items()}}
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{args.out}: " + ", ".join(f"{k} {float(v):.5g}" for k, v in losses.items()))


if __name__ == "__main__":
    main()
