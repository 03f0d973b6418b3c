"""The embedded default: an UNTRAINED GN Mask R-CNN written as a real mmdetection checkpoint.

Its weights are deterministic random numbers (not trained: detections on the sample images are
meaningless), scaled so that a few classes clear the score threshold and every stage runs.
"""
from __future__ import annotations

import math
import os
import zlib
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from .config import COCO_CLASSES, ModelConfig
from .converters import RenameTable, mmdet
from .layout import sha256_file
from .modeling import GNMaskRCNN

DEMO_NAME = "mask_rcnn_r50_fpn_gn-all_untrained_demo"
_CONFIG_TEXT = """# gnhub demo: an UNTRAINED model with deterministic random weights
model = dict(
    type='MaskRCNN',
    data_preprocessor=dict(type='DetDataPreprocessor', mean=[103.53, 116.28, 123.675],
                           std=[1.0, 1.0, 1.0], bgr_to_rgb=False, pad_size_divisor=32),
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
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = dest_dir / f".{DEMO_NAME}.tmp"
    torch.save({"meta": meta, "state_dict": state_dict}, tmp)
    digest = sha256_file(tmp)
    path = dest_dir / f"{DEMO_NAME}-{digest[:8]}.pth"
    os.replace(tmp, path)
    return path
