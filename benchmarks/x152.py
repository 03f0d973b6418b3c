"""CPU time and peak memory of detectron2's cascade X152 (cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv)
predicting one image, at detectron2's own test settings:

    python benchmarks/x152.py [--threads 2] [--repeats 1] [--detectron2-python PY]

The weights are the tests' real run's (tests/data/real_runs/d2_cascade_mask_rcnn_X_152_gn_dconv_seed50:
its key list and seed, tests/detweights.py), written as the zoo's pickle and converted without
verification; the image is the built-in street.png (427x640, resized to 800x1199 as detectron2
does). A fresh process loads the model, predicts once to warm up, then times --repeats predicts
(wall and process CPU time) and reports its own peak memory (VmHWM). With --detectron2-python (an
interpreter that imports detectron2, built as docs/detectron2_oracle.md says), detectron2's own
DefaultPredictor runs the same pickle on the same image the same way, for comparison.
"""
from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASE = ROOT / "tests" / "data" / "real_runs" / "d2_cascade_mask_rcnn_X_152_gn_dconv_seed50"

_COMMON = r"""
import json, sys, time
def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
def timed(predict, repeats):  # one warm-up call, then the fastest of `repeats`; this process's own peak
    predict()
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        detections = predict()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    print(json.dumps({"wall_s": min(wall), "cpu_s": min(cpu), "detections": detections, "peak_mb": peak_mb()}))
"""
_CHILD = _COMMON + r"""
model_dir, image, repeats, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
import torch
torch.set_num_threads(threads)
import gnhub
gnhub.tune_cpu()
model = gnhub.load(model_dir)
from gnhub.images import load_image
rgb = load_image(image)
timed(lambda: len(model.predict(rgb)["boxes"]), repeats)
"""
_D2_CHILD = _COMMON + r"""
weights, image, repeats, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
import numpy as np, torch
from PIL import Image
torch.set_num_threads(threads)
from pathlib import Path
import detectron2
from detectron2.config import get_cfg
from detectron2.engine import DefaultPredictor
cfg = get_cfg()
configs = Path(detectron2.__file__).parents[1] / "configs" / "Misc"
cfg.merge_from_file(str(configs / "cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv.yaml"))
cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS = "cpu", weights
predictor = DefaultPredictor(cfg)
bgr = np.ascontiguousarray(np.asarray(Image.open(image).convert("RGB"))[:, :, ::-1])
timed(lambda: len(predictor(bgr)["instances"]), repeats)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--detectron2-python", help="an interpreter that imports detectron2: run it too")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    import detweights

    from gnhub.convert import convert
    from gnhub.samples import sample_images

    meta = json.loads((CASE / "meta.json").read_text())
    arrays = detweights.frozen_bn_arrays(detweights.read_key_list(CASE / "keys.txt"), meta["seed"])
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / (CASE / "source.txt").read_text().strip()
        with open(src, "wb") as f:
            pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo"}, f, protocol=4)
        del arrays
        convert(src, Path(tmp) / "x152", verify=False)
        image = next(p for p in sample_images() if p.name == "street.png")
        runs = [("gnhub", sys.executable, _CHILD, Path(tmp) / "x152")]
        if args.detectron2_python:
            runs.append(("detectron2", args.detectron2_python, _D2_CHILD, src))
        for who, python, child, target in runs:
            out = subprocess.run([python, "-c", child, str(target), str(image), str(args.repeats), str(args.threads)],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{who}: X152 cascade predict, street.png at 800x1199, {args.threads} threads: {r['wall_s']:.1f} s "
                  f"wall, {r['cpu_s']:.1f} s CPU, peak memory {r['peak_mb']:.0f} MB, {r['detections']} detections")


if __name__ == "__main__":
    main()
