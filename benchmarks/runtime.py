"""ONNX Runtime against gnhub's PyTorch model on CPU, side by side in one run: the export time,
the latency of one image (after one warm-up call, median of --repeats, in fresh processes that
alternate) and each predictor process's peak memory:

    python benchmarks/runtime.py [--runs 3] [--repeats 3] [--threads 2]

The model is the reference R-50 GN checkpoint of the tests' real runs (tests/data/real_runs); the image is the built-in
street.png (427x640, resized to 800x1199 as mmdetection does).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"  # the real runs' generator and key lists

_CHILD = r"""
import json, sys, time
def peak_mb():  # VmHWM: this process's own peak (ru_maxrss would carry the parent's over exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
kind, target, image, repeats, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
if kind == "onnx":
    sys.modules["torch"] = None  # the ONNX path must not need torch
    import gnhub.runtime
    model = gnhub.runtime.load(target, threads=threads)
else:
    import torch
    torch.set_num_threads(threads)
    import gnhub
    gnhub.tune_cpu()  # as the gnhub command does
    model = gnhub.load(target)
from gnhub.images import load_image
rgb = load_image(image)
model.predict(rgb)
times = []
for _ in range(repeats):
    start = time.perf_counter()
    result = model.predict(rgb)
    times.append(time.perf_counter() - start)
print(json.dumps({"seconds": sorted(times)[len(times) // 2], "detections": len(result["boxes"]),
                  "peak_mb": peak_mb()}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="processes per predictor, alternating")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per process")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(TESTS))
    import detweights

    from gnhub import load
    from gnhub.convert import convert
    from gnhub.export import export
    from gnhub.samples import sample_images

    scratch = tempfile.TemporaryDirectory(prefix="gnhub-onnx-bench-")  # removed at exit
    work = Path(scratch.name)
    src = detweights.build_checkpoint(TESTS / "data" / "real_runs" / "mmdet_r50_gn_2x_seed0", work)
    convert(src, work / "r50", verify=False)
    start = time.perf_counter()
    summary = export(load(work / "r50"), work / "r50-onnx")
    export_seconds = time.perf_counter() - start
    image = str(sample_images()[0])
    rows: dict[str, list[dict]] = {"torch": [], "onnx": []}
    for _ in range(args.runs):
        for kind, target in (("torch", work / "r50"), ("onnx", work / "r50-onnx")):
            out = subprocess.run([sys.executable, "-c", _CHILD, kind, str(target), image, str(args.repeats),
                                  str(args.threads)], capture_output=True, text=True, check=True)
            rows[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
    t = {k: statistics.median(r["seconds"] for r in v) for k, v in rows.items()}
    mem = {k: max(r["peak_mb"] for r in v) for k, v in rows.items()}
    print(f"R-50 GN Mask R-CNN, street.png, {args.threads} threads, median of {args.runs} processes x "
          f"{args.repeats} calls")
    print(f"  export: {export_seconds:.1f} s with verification ({summary['export_seconds']:.1f} s tracing and "
          f"writing), {summary['bytes'] / 2**20:.0f} MiB")
    print(f"  {'':22s} {'latency':>9s} {'ratio':>6s} {'peak memory':>12s} {'detections':>11s}")
    for kind, label in (("torch", "gnhub PyTorch"), ("onnx", "gnhub.runtime (ORT)")):
        print(f"  {label:22s} {t[kind]:8.3f}s {t[kind] / t['torch']:6.2f} {mem[kind]:9.0f} MB "
              f"{rows[kind][0]['detections']:11d}")


if __name__ == "__main__":
    main()
