"""Records a real detectron2 run of configs/Misc/cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv.yaml
into tests/data/real_runs (recipe: docs/detectron2_oracle.md). Run it with detectron2 (built with
its CPU extension) importable, from the project root:

    PYTHONPATH=/path/to/detectron2 python scripts/record_d2_cascade_run.py [--out DIR]

detectron2 builds the model from its own config (small test settings below: sizes,
proposals, detections), gnhub's test generator (tests/detweights.py, frozen_bn_arrays) makes
deterministic weights from the model's own key list, they are written as a model-zoo pickle and
loaded through DefaultPredictor's DetectionCheckpointer, and DefaultPredictor runs on
make_image(HEIGHT, WIDTH, IMAGE_SEED) given as BGR, at 2 threads. Writes keys.txt, meta.json,
source.txt and reference.npz (tests/references.compact: large arrays as samples and statistics).
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

CONFIG = "Misc/cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv.yaml"
SEED, IMAGE_SEED, HEIGHT, WIDTH = 50, 51, 128, 192
# small test settings, so that the X152 forward costs seconds: test sizes, RPN proposals, detections
MIN_SIZE_TEST, MAX_SIZE_TEST, POST_NMS_TOPK_TEST, DETECTIONS_PER_IMAGE = 128, 192, 20, 10
SOURCE = "model_0039999_e76410.pkl"  # the zoo file's name: gnhub's zoo entry gives the settings
CASE = "d2_cascade_mask_rcnn_X_152_gn_dconv_seed50"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REAL_RUNS / CASE)
    args = ap.parse_args()
    import detectron2
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.engine import DefaultPredictor
    from detectron2.modeling import build_model

    torch.set_num_threads(2)
    cfg = get_cfg()
    configs = Path(detectron2.__file__).parents[1] / "configs"  # a source checkout, built in place
    cfg.merge_from_file(str(configs / CONFIG) if configs.is_dir() else model_zoo.get_config_file(CONFIG))
    cfg.MODEL.DEVICE = "cpu"
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = MIN_SIZE_TEST, MAX_SIZE_TEST
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST, cfg.TEST.DETECTIONS_PER_IMAGE = POST_NMS_TOPK_TEST, DETECTIONS_PER_IMAGE
    keys = [(k, tuple(v.shape)) for k, v in build_model(cfg).state_dict().items()]
    arrays = detweights.frozen_bn_arrays(keys, SEED)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / SOURCE
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
    model.preprocess_image = (lambda f: lambda batched: seen.setdefault("images", f(batched)))(model.preprocess_image)
    rgb = detweights.make_image(HEIGHT, WIDTH, IMAGE_SEED)
    with torch.no_grad():
        inst = predictor(np.ascontiguousarray(rgb[:, :, ::-1]))["instances"]
        logits = model.roi_heads.mask_head.layers(seen["mask_features"])
    images, props = seen["images"], seen["proposals"]
    h, w = images.image_sizes[0]
    resized = predictor.aug.get_transform(rgb[:, :, ::-1]).apply_image(np.ascontiguousarray(rgb[:, :, ::-1]))
    cls, deltas = seen["stage0"]
    labels = inst.pred_classes
    out = {
        "image_seed": np.array(IMAGE_SEED), "image_shape": np.array(rgb.shape), "image_sha256": np.array(sha256(rgb)),
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
    stored = {}
    for name, a in out.items():
        stored.update(compact(name, a))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reference.npz").write_bytes(npz_bytes(stored))
    (args.out / "keys.txt").write_text("".join(f"{k}\t{','.join(map(str, s))}\n" for k, s in keys))
    (args.out / "source.txt").write_text(SOURCE + "\n")
    meta = {"detectron2_version": detectron2.__version__, "config": CONFIG, "seed": SEED, "weights":
            "tests/detweights.py frozen_bn_arrays", "pickle_protocol": 4, "torch": torch.__version__, "threads": 2,
            "PIXEL_MEAN": list(cfg.MODEL.PIXEL_MEAN), "PIXEL_STD": list(cfg.MODEL.PIXEL_STD),
            "MIN_SIZE_TEST": MIN_SIZE_TEST, "MAX_SIZE_TEST": MAX_SIZE_TEST,
            "POST_NMS_TOPK_TEST": POST_NMS_TOPK_TEST, "DETECTIONS_PER_IMAGE": DETECTIONS_PER_IMAGE,
            "image_hw": [HEIGHT, WIDTH], "image_seed": IMAGE_SEED, "detections": len(labels)}
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{args.out}: {len(labels)} detections, {len(props)} proposals")


if __name__ == "__main__":
    main()
