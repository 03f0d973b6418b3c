"""CPU latency of GN Mask R-CNN R-50 `predict` vs torchvision's Mask R-CNN R-50, same input, same run.

    python benchmarks/inference.py [--runs 5] [--threads N] [--batch] [--conventions detectron]

Both models get the same 800x1333 RGB image and keep up to 100 detections (torchvision's score
threshold is lowered to 0 so its mask head runs on as many boxes as gnhub's: random weights
score every class about equally). Prints the median of each, their ratio, and where gnhub's
time goes stage by stage. With --batch: images/s of both for batch sizes 1, 2 and 4 (and, on a
GPU, gnhub in float16 and under torch.compile). With --conventions detectron, gnhub runs with the
config fields of a converted Detectron model (Detectron's resize, anchors, NMS, paste).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torchvision
from gnhub.converters import detectron

from gnhub import GNMaskRCNN, ModelConfig
from gnhub.convert import apply_settings
from gnhub.demo import deterministic_weights


def median_seconds(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def stage_times(model: GNMaskRCNN, image: np.ndarray) -> dict[str, float]:
    """Seconds per stage of one gnhub forward, timed stage by stage."""
    out, t = {}, time.perf_counter()

    def lap(name):
        nonlocal t
        now = time.perf_counter()
        out[name] = now - t
        t = now

    with torch.inference_mode():
        batch = model.preprocessor([image])
        lap("preprocess")
        c = model.backbone(batch.tensor)
        lap("backbone")
        p = model.fpn(c)
        lap("fpn")
        obj, dlt = model.rpn.head(p)
        boxes, _ = model.rpn.proposals(obj, dlt, batch.image_sizes[0], 0)
        lap("rpn")
        rois = torch.cat([boxes.new_zeros(len(boxes), 1), boxes], 1)
        logits, deltas = model.roi_heads.box_head(model.roi_heads.box_pool(p[:4], rois))
        lap("box head (1000 RoIs)")
        det_boxes, _, labels = model.roi_heads.detect(logits, deltas, boxes, batch.image_sizes[0])
        mrois = torch.cat([det_boxes.new_zeros(len(det_boxes), 1), det_boxes], 1)
        masks = model.roi_heads.mask_logits(p[:4], mrois, labels)
        lap(f"mask head ({len(det_boxes)} RoIs)")
        from gnhub.modeling.masks import paste_masks

        paste_masks(masks.sigmoid(), det_boxes / det_boxes.new_tensor(batch.scale_factors[0]).repeat(2),
                    *image.shape[:2], 0.5)
        lap("paste masks")
    return out


def batch_mode(gn: GNMaskRCNN, tv, runs: int, device: str) -> None:
    """Images/s for batch sizes 1, 2, 4: gnhub.predict vs torchvision on the same images."""
    images = [np.random.default_rng(i).integers(0, 256, (800, 1333, 3), dtype=np.uint8) for i in range(4)]
    tv_images = [torch.from_numpy(im).permute(2, 0, 1).float().div(255).to(device) for im in images]
    variants = {"gnhub float32": gn}
    if device != "cpu":
        variants["gnhub float16"] = GNMaskRCNN(gn.config).to(device)
        variants["gnhub float16"].load_state_dict(gn.state_dict())
        variants["gnhub float16"].half()
        compiled = GNMaskRCNN(gn.config).to(device)
        compiled.load_state_dict(gn.state_dict())
        compiled.backbone = torch.compile(compiled.backbone)
        variants["gnhub torch.compile backbone"] = compiled
    print(f"batch mode, {device}, median of {runs} runs, images/s")
    for bs in (1, 2, 4):
        row = []
        for label, model in variants.items():
            t = median_seconds(lambda m=model, b=bs: m.predict(images[:b], batch_size=b), runs)
            row.append(f"{label} {bs / t:6.2f}")
        with torch.inference_mode():
            t = median_seconds(lambda b=bs: tv(tv_images[:b]), runs)
        row.append(f"torchvision {bs / t:6.2f}")
        print(f"  batch {bs}: " + " | ".join(row))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--batch", action="store_true", help="images/s for batch sizes 1, 2, 4")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--conventions", choices=["mmdet", "detectron"], default="mmdet")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    image = np.random.default_rng(0).integers(0, 256, (800, 1333, 3), dtype=np.uint8)
    config = ModelConfig()
    if args.conventions == "detectron":
        apply_settings(config, detectron.SETTINGS)
    gn = GNMaskRCNN(config)
    gn.load_state_dict(deterministic_weights(gn))
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, box_score_thresh=0.0)
    tv.eval()
    if args.batch:
        batch_mode(gn.to(args.device), tv.to(args.device), args.runs, args.device)
        return
    tv_input = [torch.from_numpy(image).permute(2, 0, 1).float() / 255]

    def run_tv():
        with torch.inference_mode():
            return tv(tv_input)

    n_gn = len(gn.predict(image)["boxes"])
    n_tv = len(run_tv()[0]["boxes"])
    t_gn = median_seconds(lambda: gn.predict(image), args.runs)
    t_tv = median_seconds(run_tv, args.runs)
    print(f"input 800x1333, CPU, {args.threads} threads, median of {args.runs} runs")
    print(f"torchvision maskrcnn_resnet50_fpn : {t_tv:7.3f} s  ({n_tv} detections)")
    print(f"gnhub GN Mask R-CNN R-50 ({args.conventions:9s}): {t_gn:7.3f} s  ({n_gn} detections)")
    print(f"ratio gnhub / torchvision         : {t_gn / t_tv:7.2f}x  (target <= 1.1x)")
    if args.conventions != "mmdet":
        return
    print("gnhub stages:")
    for name, sec in stage_times(gn, image).items():
        print(f"  {name:24s} {sec:7.3f} s")


if __name__ == "__main__":
    main()
