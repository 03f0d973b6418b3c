"""CPU latency of GN Mask R-CNN R-50 `predict` in float32 and bfloat16, beside mmdetection's own
`inference_detector` on the same weights (where mmdetection is installed; it says so where not)
and torchvision's Mask R-CNN R-50, on the same image in one run; and bfloat16 as a CPU without
AMX runs it (oneDNN held to AVX512-BF16 by ONEDNN_MAX_CPU_ISA, where `--dtype auto` picks float32):

    python benchmarks/inference.py [--rounds 3] [--runs 2] [--threads N] [--batch] [--conventions detectron]

The weights are the reference R-50 checkpoint of the tests' real runs (tests/data/real_runs), the image the built-in
street.png. Every model keeps up to 100 detections (torchvision's score threshold is lowered to
0 so its mask head runs on as many boxes as gnhub's). Each predictor runs in its own processes,
as a user runs it (--rounds processes per row, the rows alternating; --runs timed calls each after
a warm-up), and two control rows show gnhub with GNHUB_MALLOC=system and mmdetection with gnhub's
malloc setting. Prints the medians, their ratios and each row's peak memory, whether gnhub's
outputs equal mmdetection's bit for bit, the bfloat16/float32 ratio of --pairs calls alternating
in one process (with and without AMX), where gnhub's time goes stage by stage in float32 and
bfloat16, and `verify`'s precision report of the bfloat16 model. With --batch: images/s of gnhub
and torchvision for batch sizes 1, 2 and 4, median of --runs (and, on a GPU, gnhub in float16 and
under torch.compile).
With --conventions detectron, gnhub runs with the config fields of a converted Detectron model
(Detectron's resize, anchors, NMS, paste).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torchvision
from gnhub.converters import detectron

from gnhub import GNMaskRCNN, ModelConfig, load
from gnhub.allocator import tune_cpu
from gnhub.convert import convert
from gnhub.demo import deterministic_weights
from gnhub.errors import GnhubError
from gnhub.images import load_image
from gnhub.modeling import with_weights
from gnhub.modeling.bfloat16 import network_layout, roi_align_features
from gnhub.samples import sample_images

TESTS = Path(__file__).resolve().parents[1] / "tests"  # the real runs' generator and key lists
ZOO_NAME = "mask_rcnn_r50_fpn_gn-all_2x_coco"


def median_seconds(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def stage_times(model: GNMaskRCNN, image: np.ndarray) -> dict[str, float]:
    """Seconds per stage of one gnhub forward in the model's dtype, timed stage by stage."""
    out, t = {}, time.perf_counter()

    def lap(name):
        nonlocal t
        now = time.perf_counter()
        out[name] = now - t
        t = now

    with torch.inference_mode():
        model.prepare()
        batch = model.preprocessor([image], model.device, model.dtype)
        lap("preprocess")
        c = model.backbone(network_layout(batch.tensor))
        lap("backbone")
        p = model.fpn(c)
        lap("fpn")
        obj, dlt = model.rpn.head(p)
        boxes, _ = model.rpn.proposals(obj, dlt, batch.image_sizes[0], 0)
        lap("rpn")
        rois = torch.cat([boxes.new_zeros(len(boxes), 1), boxes], 1)
        feats = roi_align_features(p[:4])
        logits, deltas = model.roi_heads.box_head(model.roi_heads.box_pool(feats, rois, p[0].dtype))
        lap("box head (1000 RoIs)")
        det_boxes, _, labels = model.roi_heads.detect(logits, deltas, boxes, batch.image_sizes[0])
        mrois = torch.cat([det_boxes.new_zeros(len(det_boxes), 1), det_boxes], 1)
        masks = model.roi_heads.mask_logits(feats, mrois, labels, p[0].dtype)
        lap(f"mask head ({len(det_boxes)} RoIs)")
        conv = model.convention
        conv.paste_masks(masks.sigmoid(), conv.to_original(det_boxes, batch.scale_factors[0]), *image.shape[:2], 0.5)
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


def mmdetection(checkpoint: Path, zoo_name: str):
    """mmdetection's own inference_detector on the same weights, or None where it is not installed."""
    from gnhub.reference.mmdet_framework import mmdet_version, packaged_config

    try:
        version = mmdet_version()
    except GnhubError as e:
        print(f"mmdetection: not installed here, not measured ({e})")
        return None
    from mmdet.apis import inference_detector, init_detector

    model = init_detector(str(packaged_config(zoo_name)), None, device="cpu")
    model.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"], strict=True)

    def run(rgb):
        with torch.inference_mode():
            return inference_detector(model, np.ascontiguousarray(rgb[:, :, ::-1])).pred_instances  # BGR, as read

    run.version = version
    return run


def precision_report(source: Path, model: GNMaskRCNN, dtype: str) -> None:
    """gnhub verify's report for a half-precision copy: the precision.* stages and the detections."""
    from concurrent.futures import ThreadPoolExecutor

    from gnhub.compare import images_for
    from gnhub.modeling import DTYPES, with_weights
    from gnhub.source import open_source
    from gnhub.verify import verify_against

    half = with_weights(model.config, {k: v.to(DTYPES[dtype]) for k, v in model.state_dict().items()}, dtype)
    with ThreadPoolExecutor(1) as pool:
        src = open_source(source, "auto", check_hash=False, pool=pool)
        report, _ = verify_against(src, half, images_for(None), dtype)
    print(f"verify's precision report of the {dtype} model (4 built-in images, {dtype} tolerances):")
    for row in report.summary():
        print(f"  {'ok  ' if row['passed'] else 'FAIL'} {row['stage']:26s} max abs {row['max_abs']:9.3g}  "
              f"max rel {row['max_rel']:9.3g}")


MM_TUNED = "mmdetection, gnhub's malloc setting"
NO_AMX = "gnhub bfloat16 without AMX"  # oneDNN held to AVX512-BF16: what a CPU without AMX-BF16 gets
KINDS = ("gnhub float32", "gnhub float32, GNHUB_MALLOC=system", "gnhub bfloat16", NO_AMX, "mmdetection", MM_TUNED,
         "torchvision maskrcnn_resnet50_fpn")


def gnhub_model(work: Path, conventions: str) -> GNMaskRCNN:
    gn = load(work / "r50")
    if conventions == "detectron":
        config = gn.config
        detectron.SETTINGS["e2e"].apply(config)
        gn = with_weights(config, gn.state_dict(), "detectron conventions")
    return gn


def worker(kind: str, work: Path, runs: int, conventions: str) -> None:
    """One process of the latency table: warm-up, then `runs` timed calls on street.png; prints JSON."""
    image = load_image(sample_images()[0])  # street.png, 427x640 -> 800x1199 as mmdetection resizes it
    if kind.startswith("gnhub"):
        tune_cpu()  # as the gnhub command does (GNHUB_MALLOC=system: not)
        gn = gnhub_model(work, conventions)
        if kind.startswith("gnhub bfloat16"):
            gn = with_weights(gn.config, {k: v.bfloat16() for k, v in gn.state_dict().items()}, "bfloat16")
        fn, count = (lambda: gn.predict(image)), (lambda out: len(out["boxes"]))
    elif kind.startswith("mmdetection"):
        if kind == MM_TUNED:
            tune_cpu()
        fn, count = partial(mmdetection(next(work.glob("*.pth")), ZOO_NAME), image), (lambda out: len(out.bboxes))
    else:
        tv = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                                box_score_thresh=0.0).eval()
        tv_input = [torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255]

        def fn():
            with torch.inference_mode():
                return tv(tv_input)

        count = lambda out: len(out[0]["boxes"])  # noqa: E731
    detections = count(fn())  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    peak = next(int(line.split()[1]) / 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    print(json.dumps({"times": times, "detections": detections, "peak_mb": peak}))


def paired(work: Path, pairs: int) -> None:
    """float32 and bfloat16 predict in one process, alternating call by call (which goes first
    alternates too): the median of the pairs' ratios, which a shared machine's load drifting
    between calls moves far less than it moves each row's own median. Prints JSON."""
    tune_cpu()
    gn = gnhub_model(work, "mmdet")
    bf = with_weights(gn.config, {k: v.bfloat16() for k, v in gn.state_dict().items()}, "bfloat16")
    image = load_image(sample_images()[0])
    gn.predict(image), bf.predict(image)  # warm-up: filters packed

    def timed(model):
        start = time.perf_counter()
        model.predict(image)
        return time.perf_counter() - start

    f32, bf16 = [], []
    for i in range(pairs):
        first, second = ((gn, f32), (bf, bf16)) if i % 2 == 0 else ((bf, bf16), (gn, f32))
        for model, times in (first, second):
            times.append(timed(model))
    print(json.dumps({"ratio": statistics.median(b / a for a, b in zip(f32, bf16)),
                      "float32": statistics.median(f32), "bfloat16": statistics.median(bf16)}))


def paired_table(work: Path, pairs: int) -> None:
    """`paired` in one process as it is and in one with oneDNN held to AVX512-BF16 (no AMX)."""
    print(f"float32 and bfloat16 in one process, alternating, {pairs} pairs; median of the pairs' ratios")
    for label, isa in (("AMX", None), ("without AMX (ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16)", "AVX512_CORE_BF16")):
        env = {**os.environ, "GNHUB_MALLOC": "gnhub", **({"ONEDNN_MAX_CPU_ISA": isa} if isa else {})}
        proc = subprocess.run([sys.executable, __file__, "--paired", str(pairs), "--work", str(work)],
                              capture_output=True, text=True, env=env)
        if proc.returncode:
            sys.exit(f"paired: {proc.stderr[-3000:]}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  {label:52s} bfloat16 {r['ratio']:5.2f}x float32  (medians: float32 {r['float32']:.3f} s, "
              f"bfloat16 {r['bfloat16']:.3f} s)")


def latency_table(work: Path, args, mm_version: str | None) -> None:
    """Each kind in its own processes, the kinds alternating round by round, as a user runs them."""
    kinds = [k for k in KINDS if mm_version or not k.startswith("mmdetection")]
    if args.conventions == "detectron":
        kinds = [k for k in kinds if not k.startswith("mmdetection")]
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for kind in kinds:
            env = {**os.environ, "GNHUB_MALLOC": "system" if kind.endswith("=system") else "gnhub"}
            if kind == NO_AMX:
                env["ONEDNN_MAX_CPU_ISA"] = "AVX512_CORE_BF16"
            proc = subprocess.run([sys.executable, __file__, "--worker", kind, "--work", str(work), "--runs",
                                   str(args.runs), "--threads", str(args.threads), "--conventions", args.conventions],
                                  capture_output=True, text=True, env=env)
            if proc.returncode:
                sys.exit(f"{kind}: {proc.stderr[-3000:]}")
            results[kind].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    median = {k: statistics.median(t for r in rs for t in r["times"]) for k, rs in results.items()}
    base = median["gnhub float32"]
    print(f"street.png 427x640 (800x1199 network input), CPU, {args.threads} threads; {args.rounds} processes per "
          f"row, alternating, {args.runs} timed calls each after a warm-up; median")
    for kind, rs in results.items():
        label = kind.replace("mmdetection", f"mmdetection {mm_version}")
        print(f"  {label:44s} {median[kind]:7.3f} s  {median[kind] / base:5.2f}x gnhub float32  "
              f"({rs[0]['detections']} detections, peak {max(r['peak_mb'] for r in rs):5.0f} MB)")
    if mm_version:
        print(f"  gnhub float32 / mmdetection: {base / median['mmdetection']:.2f}x (target <= 0.8x); "
              f"with the same malloc setting: {base / median[MM_TUNED]:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2, help="timed calls per process (--batch: per batch size)")
    ap.add_argument("--rounds", type=int, default=3, help="processes per row")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--batch", action="store_true", help="images/s for batch sizes 1, 2, 4")
    ap.add_argument("--pairs", type=int, default=8, help="float32/bfloat16 pairs timed in one process")
    ap.add_argument("--paired", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--conventions", choices=["mmdet", "detectron"], default="mmdet")
    ap.add_argument("--no-precision", action="store_true", help="skip the bfloat16 precision report")
    ap.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.paired:
        paired(args.work, args.paired)
        return
    if args.worker:
        worker(args.worker, args.work, args.runs, args.conventions)
        return
    if args.batch:
        tv = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                                box_score_thresh=0.0).eval()
        config = ModelConfig()
        gn = GNMaskRCNN(config)
        gn.load_state_dict(deterministic_weights(gn))
        batch_mode(gn.to(args.device), tv.to(args.device), args.runs, args.device)
        return

    sys.path.insert(0, str(TESTS))
    import detweights

    scratch = tempfile.TemporaryDirectory(prefix="gnhub-inference-bench-")  # removed at exit
    work = Path(scratch.name)
    src = Path(detweights.build_checkpoint(TESTS / "data" / "real_runs" / "mmdet_r50_gn_2x_seed0", work))
    convert(src, work / "r50", verify=False)
    mm = mmdetection(src, ZOO_NAME) if args.conventions == "mmdet" else None
    latency_table(work, args, mm and mm.version)
    paired_table(work, args.pairs)
    gn = gnhub_model(work, args.conventions)
    image = load_image(sample_images()[0])
    if mm is not None:
        ours, theirs = gn.predict(image), mm(image)
        same = all(torch.equal(ours[k].cpu(), getattr(theirs, name).cpu().to(ours[k].dtype)) for k, name in
                   (("boxes", "bboxes"), ("scores", "scores"), ("labels", "labels"), ("masks", "masks")))
        print(f"gnhub float32 outputs bit-identical to mmdetection's: {same}")
    if args.conventions != "mmdet":
        return
    bf = with_weights(gn.config, {k: v.bfloat16() for k, v in gn.state_dict().items()}, "bfloat16")
    stage_times(bf, image)  # warm-up: filters packed
    f32_stages, bf_stages = stage_times(gn, image), stage_times(bf, image)
    print("gnhub stages, one forward each:")
    for name, sec in f32_stages.items():
        print(f"  {name:24s} float32 {sec:7.3f} s  bfloat16 {bf_stages[name]:7.3f} s  {bf_stages[name] / sec:5.2f}x")
    if not args.no_precision:
        precision_report(src, gn, "bfloat16")


if __name__ == "__main__":
    main()
