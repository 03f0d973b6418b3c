"""Records a real detectron2 run of configs/Misc/cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv.yaml
(`--case x152`) or configs/Misc/panoptic_fpn_R_101_dconv_cascade_gn_3x.yaml (`--case panoptic`) into
tests/data/real_runs (recipe: docs/detectron2_oracle.md). Run it with detectron2 (built with its CPU
extension) importable, from the project root:

    PYTHONPATH=/path/to/detectron2 python scripts/record_d2_cascade_run.py [--case x152|panoptic] [--out DIR]

detectron2 builds the model from its own config (small test settings below: sizes,
proposals, detections), gnhub's test generator (tests/detweights.py, frozen_bn_arrays) makes
deterministic weights from the model's own key list, they are written as a model-zoo pickle and
loaded through DefaultPredictor's DetectionCheckpointer, and DefaultPredictor runs on
make_image(HEIGHT, WIDTH, IMAGE_SEED) given as BGR, at 2 threads. Writes keys.txt, meta.json,
source.txt and reference.npz (tests/references.compact: large arrays as samples and statistics).
The panoptic case also records the semantic head's logits, the semantic labels, the panoptic
segment map and its segments; its merge thresholds (PANOPTIC_FPN.COMBINE) are lowered so that a
small image with random weights has thing and stuff segments to merge.
"""
from __future__ import annotations

import argparse
import json
import pickle
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

import detweights  # noqa: E402
from references import REAL_RUNS, compact, sha256  # noqa: E402
from refresh_real_runs import npz_bytes  # noqa: E402

# case -> (config, seed, image seed, the zoo file's name (gnhub's zoo entry gives the settings), folder)
CASES = {
    "x152": ("Misc/cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv.yaml", 50, 51, "model_0039999_e76410.pkl",
             "d2_cascade_mask_rcnn_X_152_gn_dconv_seed50"),
    "panoptic": ("Misc/panoptic_fpn_R_101_dconv_cascade_gn_3x.yaml", 60, 61, "model_final_be35db.pkl",
                 "d2_panoptic_fpn_R_101_dconv_cascade_gn_seed60"),
}
HEIGHT, WIDTH = 128, 192
# small test settings, so that the X152 forward costs seconds: test sizes, RPN proposals, detections
MIN_SIZE_TEST, MAX_SIZE_TEST, POST_NMS_TOPK_TEST, DETECTIONS_PER_IMAGE = 128, 192, 20, 10
# the panoptic case's merge: detectron2's overlap threshold, lower stuff area and instance score limits
OVERLAP_THRESH, STUFF_AREA_LIMIT, INSTANCES_CONFIDENCE_THRESH = 0.5, 256, 0.1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=sorted(CASES), default="x152")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    config, seed, image_seed, source, case = CASES[args.case]
    args.out = args.out or REAL_RUNS / case
    panoptic = args.case == "panoptic"
    import detectron2
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.engine import DefaultPredictor
    from detectron2.modeling import build_model

    torch.set_num_threads(2)
    cfg = get_cfg()
    configs = Path(detectron2.__file__).parents[1] / "configs"  # a source checkout, built in place
    cfg.merge_from_file(str(configs / config) if configs.is_dir() else model_zoo.get_config_file(config))
    cfg.MODEL.DEVICE = "cpu"
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = MIN_SIZE_TEST, MAX_SIZE_TEST
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST, cfg.TEST.DETECTIONS_PER_IMAGE = POST_NMS_TOPK_TEST, DETECTIONS_PER_IMAGE
    combine = cfg.MODEL.PANOPTIC_FPN.COMBINE
    if panoptic:
        combine.OVERLAP_THRESH, combine.STUFF_AREA_LIMIT = OVERLAP_THRESH, STUFF_AREA_LIMIT
        combine.INSTANCES_CONFIDENCE_THRESH = INSTANCES_CONFIDENCE_THRESH
    keys = [(k, tuple(v.shape)) for k, v in build_model(cfg).state_dict().items()]
    arrays = detweights.frozen_bn_arrays(keys, seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / source
        with open(path, "wb") as f:
            pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo"}, f, protocol=4)
        cfg.MODEL.WEIGHTS = str(path)
        predictor = DefaultPredictor(cfg)
    model = predictor.model
    seen = {}
    model.backbone.register_forward_hook(lambda m, a, out: seen.update(fpn=out))
    model.proposal_generator.register_forward_hook(lambda m, a, out: seen.update(proposals=out[0][0]))
    model.roi_heads.box_predictor[0].register_forward_hook(lambda m, a, out: seen.setdefault("stage0", out))
    model.roi_heads.mask_head.register_forward_pre_hook(lambda m, a: seen.update(mask_features=a[0]))
    if panoptic:
        model.sem_seg_head.register_forward_hook(lambda m, a, out: seen.update(sem_seg_logits=out[0]))
    model.preprocess_image = (lambda f: lambda batched: seen.setdefault("images", f(batched)))(model.preprocess_image)
    rgb = detweights.make_image(HEIGHT, WIDTH, image_seed)
    with torch.no_grad():
        result = predictor(np.ascontiguousarray(rgb[:, :, ::-1]))
        inst = result["instances"]
        logits = model.roi_heads.mask_head.layers(seen["mask_features"])
    images, props = seen["images"], seen["proposals"]
    h, w = images.image_sizes[0]
    resized = predictor.aug.get_transform(rgb[:, :, ::-1]).apply_image(np.ascontiguousarray(rgb[:, :, ::-1]))
    cls, deltas = seen["stage0"]
    labels = inst.pred_classes
    out = {
        "image_seed": np.array(image_seed), "image_shape": np.array(rgb.shape), "image_sha256": np.array(sha256(rgb)),
        "resized_shape": np.array(resized.shape), "resized_sha256": np.array(sha256(resized)),
        "input_shape": np.array(images.tensor.shape), "img_shape": np.array((h, w)),
        "scale_factor": np.array((w / WIDTH, h / HEIGHT), np.float32),
        "proposals": props.proposal_boxes.tensor.numpy(), "proposal_scores": props.objectness_logits.numpy(),
        "roi_cls_score": cls.numpy(), "roi_bbox_pred": deltas.numpy(),
        "boxes": inst.pred_boxes.tensor.numpy(), "scores": inst.scores.numpy(), "labels": labels.numpy(),
        "mask_logits_of_label": logits[torch.arange(len(labels)), labels].numpy(),
        "masks_packed": np.packbits(inst.pred_masks.numpy(), axis=-1), "masks_shape": np.array(inst.pred_masks.shape),
        "fpn_p2_first32": seen["fpn"]["p2"][:, :32].numpy(), "fpn_p3_first32": seen["fpn"]["p3"][:, :32].numpy(),
        **{f"fpn_p{i}": seen["fpn"][f"p{i}"].numpy() for i in (4, 5, 6)},
        "weights_sha256": np.array(detweights.weights_digest(arrays)),
    }
    if panoptic:
        seg, info = result["panoptic_seg"]
        assert int(seg.max()) < 256
        out.update({
            "sem_seg_logits": seen["sem_seg_logits"].numpy(), "sem_seg": result["sem_seg"].numpy(),
            "sem_seg_labels": result["sem_seg"].argmax(dim=0).numpy().astype(np.uint8),
            "panoptic_seg": seg.numpy().astype(np.uint8),
            # per segment: id, isthing, category_id, instance_id (-1: stuff), area (-1: a thing)
            "segments": np.array([[s["id"], s["isthing"], s["category_id"], s.get("instance_id", -1),
                                   s.get("area", -1)] for s in info], np.int64).reshape(-1, 5),
            "segment_scores": np.array([s["score"] for s in info if s["isthing"]], np.float32),
        })
    stored = {}
    for name, a in out.items():
        stored.update(compact(name, a))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reference.npz").write_bytes(npz_bytes(stored))
    (args.out / "keys.txt").write_text("".join(f"{k}\t{','.join(map(str, s))}\n" for k, s in keys))
    (args.out / "source.txt").write_text(source + "\n")
    meta = {"detectron2_version": detectron2.__version__, "config": config, "seed": seed, "weights":
            "tests/detweights.py frozen_bn_arrays", "pickle_protocol": 4, "torch": torch.__version__, "threads": 2,
            "PIXEL_MEAN": list(cfg.MODEL.PIXEL_MEAN), "PIXEL_STD": list(cfg.MODEL.PIXEL_STD),
            "MIN_SIZE_TEST": MIN_SIZE_TEST, "MAX_SIZE_TEST": MAX_SIZE_TEST,
            "POST_NMS_TOPK_TEST": POST_NMS_TOPK_TEST, "DETECTIONS_PER_IMAGE": DETECTIONS_PER_IMAGE,
            "image_hw": [HEIGHT, WIDTH], "image_seed": image_seed, "detections": len(labels)}
    if panoptic:
        meta.update(OVERLAP_THRESH=OVERLAP_THRESH, STUFF_AREA_LIMIT=STUFF_AREA_LIMIT,
                    INSTANCES_CONFIDENCE_THRESH=INSTANCES_CONFIDENCE_THRESH, segments=len(result["panoptic_seg"][1]))
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{args.out}: {len(labels)} detections, {len(props)} proposals")


if __name__ == "__main__":
    main()
