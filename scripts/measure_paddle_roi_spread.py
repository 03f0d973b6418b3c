"""Measures why gnhub's and PaddleDetection's RoI-head outputs are 1e-4 apart at the zoo's full test
size (docs/paddle.md, "`gnhub verify --against paddle`"; report.TOLERANCES "float32-framework"):
the seed-40 Mask R-CNN of tests/data/real_runs/ppdet_mask_rcnn_r50_fpn_gn_2x_seed40, converted, on
square.png at 1333 x 800 with 1000 proposals, compared as `verify` compares, between gnhub float32,
gnhub float64 (the same code, `.double()`) and PaddleDetection (paddle_framework.py, in the paddle
environment of docs/paddle.md); then gnhub's box head alone on PaddleDetection's own FPN maps and
proposals (what a different summation order in the head would show) and on its proposals with
gnhub's float64 maps (what the maps contribute).

    GNHUB_PADDLE_PYTHON=... GNHUB_PADDLE_DETECTION=... python scripts/measure_paddle_roi_spread.py WORKDIR
"""
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import detweights  # noqa: E402
from conftest import REAL_RUNS, paddle_pdparams  # noqa: E402
from gnhub.converters import paddle  # noqa: E402

from gnhub import load  # noqa: E402
from gnhub.compare import compare, images_for, run_model  # noqa: E402
from gnhub.convert import convert  # noqa: E402
from gnhub.files import scratch_dir  # noqa: E402
from gnhub.modeling.roi_heads import to_rois  # noqa: E402
from gnhub.reference.paddle_framework import PaddleFramework, paddle_setup  # noqa: E402
from gnhub.source import open_source  # noqa: E402

ROI = ("roi.cls_logits", "roi.box_deltas")


def rel(a, b) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def head(model, maps, proposals, dtype):
    """The box head's (class logits, deltas) on the given maps and proposals, in `dtype`."""
    rh = model.roi_heads.to(dtype)
    with torch.no_grad():
        return rh.box_head(rh.box_pool([m.to(dtype) for m in maps], to_rois([proposals.to(dtype)]), dtype))


def main(work: Path):
    run = REAL_RUNS / "ppdet_mask_rcnn_r50_fpn_gn_2x_seed40"
    meta = json.loads((run / "meta.json").read_text())
    src = work / "mask_rcnn_r50_fpn_gn_2x_coco_seed40.pdparams"
    if not (work / "m").exists():
        paddle_pdparams(src, detweights.paddle_arrays(detweights.read_key_list(run / "keys.txt"), meta["seed"],
                                                       paddle.LINEAR))
        convert(src, work / "m", verify=False)
    rgb = dict(images_for(None))["square.png"]
    with ThreadPoolExecutor(1) as pool:
        source = open_source(src, "auto", True, pool)
    python, ppdet, _ = paddle_setup()
    with scratch_dir() as scratch:
        ref = PaddleFramework(source.tensors, source.settings, python, ppdet, "mask_rcnn_r50_fpn_gn_2x_coco",
                              scratch, paddle.LINEAR)(rgb)
    g32 = run_model(load(work / "m"), rgb)
    m64 = load(work / "m").double()
    g64 = run_model(m64, rgb)
    for title, got, want in (("gnhub float32 vs gnhub float64", g32, g64),
                             ("PaddleDetection vs gnhub float64", ref, g64),
                             ("gnhub float32 vs PaddleDetection", g32, ref)):
        checks = {c.stage: c.max_rel for c in compare("square.png", got, want, "float32")}
        print(f"{title}, end to end: " + ", ".join(f"{s} {checks[s]:.3g}" for s in ROI))
    maps = [ref[f"fpn.p{i}"] for i in range(2, 6)]
    h32, h64 = head(m64, maps, ref["proposals"], torch.float32), head(m64, maps, ref["proposals"], torch.float64)
    print("the box head on PaddleDetection's maps and proposals, float32 vs float64: "
          + ", ".join(f"{s} {rel(a, b):.3g}" for s, a, b in zip(ROI, h32, h64)))
    print("the same, PaddleDetection vs float64 / vs float32: "
          + ", ".join(f"{s} {rel(ref[s], b):.3g} / {rel(ref[s], a):.3g}" for s, a, b in zip(ROI, h32, h64)))
    own = head(m64, [g64[f"fpn.p{i}"] for i in range(2, 6)], ref["proposals"], torch.float64)
    print("float64 head on PaddleDetection's proposals with gnhub float64's maps vs PaddleDetection: "
          f"roi.cls_logits {rel(ref['roi.cls_logits'], own[0]):.3g}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
