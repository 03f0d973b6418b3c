"""Fine-tuning on CPU, end to end: `gnhub finetune` on a drawn COCO-format set of shapes
(`gnhub.train.shapes`), with validation AP before (the base model with its new heads) and after,
the seconds per step, and the loss of the first and last steps:

    python benchmarks/finetune.py [--images 48] [--iterations 300] [--size 96x128] [--box-batch 128]

The base is the R-50 GN checkpoint of the tests' real runs (tests/data/real_runs, deterministic random
weights: there are no pretrained weights offline), images resized to fit the --size box, so the numbers
show that the pipeline learns, not what a pretrained model reaches. The defaults take about 16
minutes on 2 cores (measured: box AP 0.000 -> 0.253, mask AP 0.000 -> 0.307; the recipe's lr for
2 images, 0.0025; at 0.02 the loss diverged). With a GPU (`--device cuda`), add `--size 800x1333
--box-batch 512` for mmdetection's training resolution and RoI batch.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"  # the real runs' generator and key lists


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--size", default="96x128", help="HxW of the drawn images and the resize box")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", choices=["bf16", "fp16"])
    parser.add_argument("--lr", type=float, help="default: the recipe's 0.02 x batch / 16 (0.0025 for 2 images)")
    parser.add_argument("--box-batch", type=int, default=128, help="sampled RoIs per image (mmdetection: 512)")
    args = parser.parse_args()
    import torch

    torch.set_flush_denormal(True)  # before the thread pool starts
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(TESTS))
    import detweights

    from gnhub import evaluate, load, tune_cpu
    from gnhub.convert import convert
    from gnhub.train import Recipe, finetune
    from gnhub.train.loop import Schedule
    from gnhub.train.shapes import CLASSES, write_shapes

    tune_cpu()  # as `gnhub finetune` does

    h, w = (int(v) for v in args.size.split("x"))
    scratch = tempfile.TemporaryDirectory(prefix="gnhub-finetune-bench-")  # removed at exit
    work = Path(scratch.name)
    train = write_shapes(work / "train", args.images, seed=0, size=(h, w))
    val = write_shapes(work / "val", max(8, args.images // 4), seed=1, size=(h, w))
    src = detweights.build_checkpoint(TESTS / "data" / "real_runs" / "mmdet_r50_gn_2x_seed0", work)
    convert(src, work / "base", verify=False)
    base = load(work / "base", device=args.device)
    base.config.preprocess.max_size = (max(h, w), min(h, w))
    base.config.train.box_batch_size_per_image = args.box_batch
    before = evaluate(base.with_classes(CLASSES, torch.Generator(base.device).manual_seed(0)), images=work / "val",
                      annotations=val)
    recipe = Recipe(iterations=args.iterations, warmup_iters=min(50, args.iterations // 4), lr=args.lr,
                    checkpoint_every=10**6, amp=args.amp)
    start = time.perf_counter()
    summary = finetune(base, train_annotations=train, train_images=work / "train", out=work / "out", recipe=recipe,
                       val=(val, work / "val"), device=args.device)
    seconds = time.perf_counter() - start
    rows = [json.loads(line) for line in (work / "out.train" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    after = summary["val"]
    print(f"R-50 GN, {args.images} drawn images of {h}x{w}, {args.iterations} steps of 2 images, "
          f"lr {Schedule(recipe, 1, 1).base:g}, "
          f"{args.box_batch} RoIs per image, "
          f"{args.threads} threads on {args.device}{', AMP ' + args.amp if args.amp else ''}")
    print(f"  {seconds / args.iterations:.2f} s per step ({seconds:.0f} s in all, with the final validation)")
    print(f"  loss: first 5 steps {sum(r['loss'] for r in steps[:5]) / 5:.3f}, "
          f"last 5 steps {sum(r['loss'] for r in steps[-5:]) / 5:.3f}")
    print(f"  {'':8s} {'box AP':>7s} {'AP50':>7s} {'mask AP':>8s} {'AP50':>7s}")
    for label, m in (("before", before), ("after", after)):
        print(f"  {label:8s} {m['box']['AP']:7.3f} {m['box']['AP50']:7.3f} {m['mask']['AP']:8.3f} "
              f"{m['mask']['AP50']:7.3f}")
    if args.device.startswith("cuda"):
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
