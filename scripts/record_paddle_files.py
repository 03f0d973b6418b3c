"""Records what the tests hold gnhub's `.pdparams` reading to, with real PaddlePaddle and
PaddleDetection (see docs/paddle.md for the environment):

- tests/data/paddle/ppdet_CONFIG.txt: `name<TAB>shape` of every tensor in the state dict of
  PaddleDetection's configs/gn/CONFIG.yml, for mask_rcnn_r50_fpn_gn_2x_coco and the two cascade
  models (each built in a process of its own: ppdet's load_config merges every config it reads
  into one global config, so a second one would inherit the first one's mask head);
- tests/data/paddle/tiny.pdparams: `paddle.save` of a small state dict named as PaddleDetection
  names its layers (a Linear, a frozen BatchNorm2D, a GroupNorm), and tiny.json: an input and
  what paddle computes from it with each layer (the Linear's [in, out] weight, the frozen
  BatchNorm's formula and eps).

    PYTHONPATH=PaddleDetection python scripts/record_paddle_files.py
"""
import json
import subprocess
import sys
import types
from pathlib import Path

import pycocotools.coco  # noqa: F401 - before paddle: paddle's bundled zlib crashes it otherwise

ROOT = Path(__file__).resolve().parents[1]


def _without_imgaug() -> None:
    """ppdet imports imgaug for its lane-dataset transforms only; a stand-in spares installing it."""
    for name in ("imgaug", "imgaug.augmenters", "imgaug.augmentables", "imgaug.augmentables.lines",
                 "imgaug.augmentables.segmaps"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["imgaug.augmentables.lines"].LineStringsOnImage = object
    sys.modules["imgaug.augmentables.lines"].LineString = object
    sys.modules["imgaug.augmentables.segmaps"].SegmentationMapsOnImage = object


def key_list(config: str) -> None:
    import ppdet
    from ppdet.core.workspace import create, load_config

    cfg = load_config(str(Path(ppdet.__file__).parents[1] / "configs" / "gn" / f"{config}.yml"))
    state = create(cfg.architecture).state_dict()
    lines = [f"# state_dict of PaddleDetection's {config}: name<TAB>shape"]
    lines += [f"{k}\t{','.join(map(str, v.shape))}" for k, v in state.items()]
    (ROOT / "tests/data/paddle" / f"ppdet_{config}.txt").write_text("\n".join(lines) + "\n")


def tiny() -> None:
    import numpy as np
    import paddle

    paddle.seed(7)
    linear = paddle.nn.Linear(6, 3)
    bn = paddle.nn.BatchNorm2D(4, use_global_stats=True)  # ppdet's ResNet with freeze_norm
    bn._mean.set_value(paddle.to_tensor([0.5, -1.0, 2.0, 0.0]))
    bn._variance.set_value(paddle.to_tensor([0.25, 4.0, 1e-6, 1.0]))
    bn.weight.set_value(paddle.to_tensor([1.0, 2.0, -0.5, 3.0]))
    bn.bias.set_value(paddle.to_tensor([0.1, 0.0, -0.2, 0.3]))
    gn = paddle.nn.GroupNorm(2, 4)
    bn.eval()
    state = {**{f"bbox_head.bbox_score.{k}": v for k, v in linear.state_dict().items()},
             **{f"backbone.conv1.conv1.norm.{k}": v for k, v in bn.state_dict().items()},
             **{f"neck.fpn_res2_sum.norm.{k}": v for k, v in gn.state_dict().items()}}
    out = ROOT / "tests/data/paddle"
    out.mkdir(parents=True, exist_ok=True)
    paddle.save(state, str(out / "tiny.pdparams"))
    rng = np.random.default_rng(7)
    x_fc, x_bn = rng.standard_normal((2, 6), np.float32), rng.standard_normal((1, 4, 2, 2), np.float32)
    record = {"paddle": paddle.__version__, "numpy": np.__version__,
              "x_linear": x_fc.tolist(), "linear": linear(paddle.to_tensor(x_fc)).numpy().tolist(),
              "x_bn": x_bn.tolist(), "frozen_bn": bn(paddle.to_tensor(x_bn)).numpy().tolist()}
    (out / "tiny.json").write_text(json.dumps(record) + "\n")


CONFIGS = ("mask_rcnn_r50_fpn_gn_2x_coco", "cascade_rcnn_r50_fpn_gn_2x_coco", "cascade_mask_rcnn_r50_fpn_gn_2x_coco")

if __name__ == "__main__":
    _without_imgaug()
    if sys.argv[1:2] == ["--keys"]:
        key_list(sys.argv[2])
    else:
        for config in CONFIGS:
            subprocess.run([sys.executable, __file__, "--keys", config], check=True)
        tiny()
