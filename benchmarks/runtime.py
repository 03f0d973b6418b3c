"""The exported graph on ONNX Runtime and on OpenVINO against gnhub's PyTorch model in float32 and
bfloat16, on CPU, side by side in one run: the export time, the latency of one image (after one
warm-up call, median of --repeats, in fresh processes that alternate), each predictor process's
peak memory, and the share of PyTorch float32's detections each one matches:

    python benchmarks/runtime.py [--model r50|cascade-deform|paddle] [--kinds ...] [--runs 3] [--repeats 3]
                                  [--threads 2]

OpenVINO (`pip install openvino`, not a gnhub dependency: measured, not adopted) runs the same
model.onnx behind gnhub.runtime's numpy preprocessing and postprocessing, with its float32 and its
bfloat16 inference-precision hint (AMX or AVX512-BF16 where the CPU has them); its rows are left
out where it is not installed. The model (--model): the reference R-50 GN checkpoint of the tests'
real runs (tests/data/real_runs); `cascade-deform`, the X152 cascade's ResNeXt-50 32x4d twin of
tests/test_d2_cascade.py (FrozenBN backbone with deformable res3-res5, FPN without norm, three
class-agnostic cascade stages, 8-conv mask head; detectron2's convention); `paddle`, the
PaddleDetection GN Mask R-CNN of the real run ppdet_mask_rcnn_r50_fpn_gn_2x_seed40. The image is
the built-in street.png (427x640, resized to 800x1199 as mmdetection, detectron2 and
PaddleDetection do). Matched: the better-scored half of PyTorch float32's detections found with
IoU >= 0.9 and the same label (the bfloat16 tolerances of verification), and the mask IoU over them.
"""
from __future__ import annotations

import argparse
import importlib.util
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
import numpy as np
def peak_mb():  # VmHWM: this process's own peak (ru_maxrss would carry the parent's over exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
kind, target, image, repeats, threads, save = sys.argv[1:7]
repeats, threads = int(repeats), int(threads)
if kind == "onnxruntime":
    sys.modules["torch"] = None  # the ONNX path must not need torch
    import gnhub.runtime
    model = gnhub.runtime.load(target, threads=threads)
elif kind.startswith("openvino"):
    sys.modules["torch"] = None
    from pathlib import Path
    import openvino
    import gnhub.runtime
    from gnhub.frameworks import arrays
    from gnhub.layout import ONNX_FILE, read_export

    class Session:  # what gnhub.runtime asks of an onnxruntime session, on an OpenVINO compiled model
        def __init__(self, path):
            core = openvino.Core()
            hint = "bf16" if kind.endswith("bf16") else "f32"
            self.compiled = core.compile_model(core.read_model(str(path)), "CPU", {
                "INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads})
            self.inputs = [type("Input", (), {"name": next(n for n in i.names if n in gnhub.runtime.INPUTS)})
                           for i in self.compiled.inputs]

        def get_inputs(self):
            return self.inputs

        def run(self, names, feed):
            out = self.compiled(feed)
            return [out[self.compiled.output(n)] for n in names]

    config, _ = read_export(Path(target))
    model = gnhub.runtime.OnnxPredictor.__new__(gnhub.runtime.OnnxPredictor)
    model.config, model.twins, model.outputs = config, arrays(config.convention), gnhub.runtime.outputs_of(config)
    model.session = Session(Path(target) / ONNX_FILE)
else:
    import torch
    torch.set_num_threads(threads)
    import gnhub
    gnhub.tune_cpu()  # as the gnhub command does
    model = gnhub.load(target, dtype=kind.split()[-1])
from gnhub.images import load_image
rgb = load_image(image)
result = model.predict(rgb)
times = []
for _ in range(repeats):
    start = time.perf_counter()
    model.predict(rgb)
    times.append(time.perf_counter() - start)
if save != "-":
    np.savez(save, **{k: np.asarray(v) for k, v in result.items()})
print(json.dumps({"seconds": sorted(times)[len(times) // 2], "detections": len(result["boxes"]),
                  "peak_mb": peak_mb()}))
"""

KINDS = {"torch float32": "gnhub PyTorch float32", "torch bfloat16": "gnhub PyTorch bfloat16",
         "onnxruntime": "gnhub.runtime (ORT)", "openvino f32": "OpenVINO float32",
         "openvino bf16": "OpenVINO bf16 hint"}


def matched(got_file: Path, ref_file: Path, image: str) -> str:
    """The share of the reference's detections `got` matches, and their mask IoU (gnhub.compare)."""
    import numpy as np
    import torch

    from gnhub import stages as S
    from gnhub.compare import compare

    got, ref = ({k: torch.from_numpy(v) for k, v in np.load(f).items()} for f in (got_file, ref_file))
    checks = {c.stage: c for c in compare(image, got, ref, "bfloat16")}
    share = f"{1 - checks[S.DETECTIONS].max_rel:.0%}"
    return share + (f", mask IoU {1 - checks[S.MASKS].max_rel:.3f}" if S.MASKS in checks else "")


def r50_checkpoint(work: Path) -> Path:
    import detweights

    return detweights.build_checkpoint(TESTS / "data" / "real_runs" / "mmdet_r50_gn_2x_seed0", work)


def cascade_checkpoint(work: Path) -> Path:
    from test_d2_cascade import cascade_config, d2_arrays, write_pickle

    return write_pickle(work / "cascade_x50_dconv.pkl", d2_arrays(cascade_config(), 40))


def paddle_checkpoint(work: Path) -> Path:
    import detweights
    from conftest import paddle_pdparams
    from gnhub.converters import paddle

    case = TESTS / "data" / "real_runs" / "ppdet_mask_rcnn_r50_fpn_gn_2x_seed40"
    seed = json.loads((case / "meta.json").read_text())["seed"]
    arrays = detweights.paddle_arrays(detweights.read_key_list(case / "keys.txt"), seed, paddle.LINEAR)
    return paddle_pdparams(work / "mask_rcnn_r50_fpn_gn_2x_coco.pdparams", arrays)


MODELS = {"r50": ("R-50 GN Mask R-CNN", r50_checkpoint),
          "cascade-deform": ("Cascade Mask R-CNN X-50 32x4d, deformable, FrozenBN (detectron2)", cascade_checkpoint),
          "paddle": ("PaddleDetection R-50 GN Mask R-CNN, FrozenBN", paddle_checkpoint)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="processes per predictor, alternating")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", choices=list(MODELS), default="r50")
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS),
                        help="predictors to run (torch float32, the ratios' base, always)")
    args = parser.parse_args()
    sys.path.insert(0, str(TESTS))

    from gnhub import load
    from gnhub.convert import convert
    from gnhub.export import export
    from gnhub.samples import sample_images

    scratch = tempfile.TemporaryDirectory(prefix="gnhub-onnx-bench-")  # removed at exit
    work = Path(scratch.name)
    convert(MODELS[args.model][1](work), work / "r50", verify=False)
    start = time.perf_counter()
    summary = export(load(work / "r50"), work / "r50-onnx")
    export_seconds = time.perf_counter() - start
    image = sample_images()[0]
    kinds = [k for k in KINDS if k == "torch float32" or k in args.kinds]
    kinds = [k for k in kinds if not k.startswith("openvino") or importlib.util.find_spec("openvino")]
    if any(k.startswith("openvino") for k in args.kinds) and not importlib.util.find_spec("openvino"):
        print("OpenVINO: not installed here, not measured (pip install openvino)")
    rows: dict[str, list[dict]] = {k: [] for k in kinds}
    for run in range(args.runs):
        for kind in kinds:
            target = work / ("r50" if kind.startswith("torch") else "r50-onnx")
            save = str(work / f"{kind.replace(' ', '-')}.npz") if run == 0 else "-"
            out = subprocess.run([sys.executable, "-c", _CHILD, kind, str(target), str(image), str(args.repeats),
                                  str(args.threads), save], capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"{kind}: {out.stderr[-3000:]}")
            rows[kind].append(json.loads(out.stdout.strip().splitlines()[-1]))
    t = {k: statistics.median(r["seconds"] for r in v) for k, v in rows.items()}
    mem = {k: max(r["peak_mb"] for r in v) for k, v in rows.items()}
    base = t["torch float32"]
    print(f"{MODELS[args.model][0]}, {image.name}, {args.threads} threads, median of {args.runs} processes x "
          f"{args.repeats} calls")
    print(f"  export: {export_seconds:.1f} s with verification ({summary['export_seconds']:.1f} s tracing and "
          f"writing), {summary['bytes'] / 2**20:.0f} MiB")
    print(f"  {'':24s} {'latency':>9s} {'ratio':>6s} {'peak memory':>12s} {'detections':>11s}  matched (float32's)")
    ref = work / "torch-float32.npz"
    for kind in kinds:
        share = matched(work / f"{kind.replace(' ', '-')}.npz", ref, image.name)
        print(f"  {KINDS[kind]:24s} {t[kind]:8.3f}s {t[kind] / base:6.2f} {mem[kind]:9.0f} MB "
              f"{rows[kind][0]['detections']:11d}  {share}")


if __name__ == "__main__":
    main()
