"""The embedded default: an UNTRAINED GN Mask R-CNN written as a real mmdetection checkpoint.

Its weights are deterministic random numbers (not trained: detections on the sample images are
meaningless), scaled so that a few classes clear the score threshold and every stage runs.
"""
from __future__ import annotations

import hashlib
import io
import math
import zlib
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from .config import COCO_CLASSES, DETECTRON_BGR_MEAN, UNIT_STD, ModelConfig
from .converters import RenameTable, mmdet
from .files import write_file
from .modeling import GNMaskRCNN

__all__ = ["DEMO_NAME", "deterministic_weights", "run_demo", "write_demo_checkpoint"]

DEMO_NAME = "mask_rcnn_r50_fpn_gn-all_untrained_demo"
_CONFIG_TEXT = f"""# gnhub demo: an UNTRAINED model with deterministic random weights
model = dict(
    type='MaskRCNN',
    data_preprocessor=dict(type='DetDataPreprocessor', mean={list(DETECTRON_BGR_MEAN)},
                           std={list(UNIT_STD)}, bgr_to_rgb=False, pad_size_divisor=32),
    # 300 proposals instead of the zoo's 1000, and half its (1333, 800) test scale below: a quick demo
    test_cfg=dict(rpn=dict(nms_pre=1000, max_per_img=300, nms=dict(type='nms', iou_threshold=0.7),
                           min_bbox_size=0)))
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(666, 400), keep_ratio=True)]
"""


def deterministic_weights(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """He-style random tensors for `model` that depend only on (seed, name, shape)."""
    norms = {
        f"{name}.{p}" for name, m in model.named_modules() if isinstance(m, nn.GroupNorm) for p in ("weight", "bias")
    }
    out = {}
    for name, t in model.state_dict().items():
        g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        noise = torch.randn(t.shape, generator=g)
        if name in norms:
            out[name] = (1.0 if name.endswith("weight") else 0.0) + 0.1 * noise
        elif t.ndim in (2, 4):
            std = math.sqrt((2.0 if t.ndim == 4 else 1.0) / math.prod(t.shape[1:]))
            out[name] = noise * std * (4.0 if "cls_score" in name else 1.0)  # some scores > 0.05
        else:
            out[name] = 0.05 * noise
    return out


def write_demo_checkpoint(dest_dir: str | Path) -> Path:
    """Writes `<DEMO_NAME>-<sha256[:8]>.pth` (meta + state_dict, as mmdetection publishes)."""
    config = ModelConfig(name=DEMO_NAME)
    table = RenameTable(mmdet)
    weights = deterministic_weights(GNMaskRCNN(config))
    state_dict = OrderedDict((table.to_source(k), v) for k, v in weights.items())
    meta = {
        "mmdet_version": "3.3.0",
        "dataset_meta": {"classes": COCO_CLASSES},
        "config": _CONFIG_TEXT,
        "note": "UNTRAINED gnhub demo weights: deterministic random numbers",
    }
    buf = io.BytesIO()
    torch.save({"meta": meta, "state_dict": state_dict}, buf)
    data = buf.getbuffer()
    return write_file(Path(dest_dir) / f"{DEMO_NAME}-{hashlib.sha256(data).hexdigest()[:8]}.pth", data)


def run_demo(out: str | Path = "gnhub-demo", log=print) -> dict:
    """The whole pipeline on the embedded untrained model, nothing downloaded: checkpoint ->
    convert and verify -> card -> publish to a directory hub under `out` -> load by name ->
    predict on the sample images. Reports each step through `log`; returns where each went."""
    # torch: `gnhub demo --help` loads none of the demo's steps
    from .api import load
    from .cards import write_card
    from .convert import convert
    from .predict import predict_files
    from .publish import publish_model
    from .samples import sample_images
    from .settings import HubSettings

    out = Path(out)
    ckpt = write_demo_checkpoint(out)
    log(f"1. checkpoint (mmdetection format, UNTRAINED weights): {ckpt}")
    s = convert(ckpt, out / DEMO_NAME, force=True, log=lambda m: log(f"   {m}"))
    log(f"2. converted and verified: {s['output']} ({s['tensors']} tensors, {s['seconds']:.0f} s)")
    log(f"3. model card: {write_card(s['output'])}")
    hub = HubSettings(hub_dir=str(out / "hub"))
    published = publish_model(s["output"], f"demo/{DEMO_NAME}", settings=hub)
    log(f"4. published to a directory hub: {published['url']}")
    model = load(f"demo/{DEMO_NAME}", hub_dir=hub.hub_dir)
    log(f"5. loaded by name: gnhub.load('demo/{DEMO_NAME}', hub_dir='{hub.hub_dir}')")
    summary = predict_files(model, sample_images(), out / "predictions")
    log(f"6. predictions on {summary['images']} sample images: {summary['out']}/ (*.png, *.json)")
    return {"checkpoint": str(ckpt), "model": s["output"], "hub": published["url"], "predictions": summary["out"]}
