"""Detectron (Caffe2) GN checkpoints (.pkl): ImageNet backbones (R-50-GN.pkl, R-101-GN.pkl) and
end-to-end Mask R-CNN models (model_final.pkl).

A table of blob names, the class-order rule, and what a file may say about its test settings
(the `cfg` YAML Detectron saves beside the blobs). No I/O: the engine reads, checks and writes.
"""
from __future__ import annotations

import torch
import yaml

from gnhub.config import DETECTRON_PIXEL_MEANS, UNIT_STD, ConfigPatch
from gnhub.errors import GnhubError

from .arrays import as_tensors
from .background import move_background_last
from .file_settings import FileSettings

__all__ = ["CLASSIFIER_SETTINGS", "DEFAULTS", "DESCRIPTION", "DETECTOR_SETTINGS", "DROPPED", "MAX_CFG_CHARS",
    "MAX_CFG_NODES", "NAME", "PLACEHOLDERS", "RENAMES", "SETTINGS", "UNUSED", "detect", "layout_version",
    "meta_classes", "meta_version", "read_settings", "reorder_classes", "source_tensors"]

NAME = "detectron"
DESCRIPTION = "Detectron (Caffe2) pickle (.pkl: blobs of numpy arrays)"


def _conv_gn(src: str, conv: str, norm: str):
    return [(f"{src}_w", f"{conv}.weight"), (f"{src}_gn_s", f"{norm}.weight"), (f"{src}_gn_b", f"{norm}.bias")]


# (blob name, gnhub name) templates. Detectron's stages res2-res5 are gnhub's layer1-layer4, its
# blocks are numbered alike ({i}); the FPN names the last block of each stage: {last} (R-50: 5,
# 22) in stage 4, fixed elsewhere. Caffe2 and PyTorch store conv, deconv and FC weights alike.
_BRANCHES = {"2a": "1", "2b": "2", "2c": "3"}
_LAST_BLOCK = {2: "2", 3: "3", 4: "{last}", 5: "2"}


def _backbone():
    for stage in range(2, 6):
        layer = f"backbone.layer{stage - 1}.{{i}}"
        for branch, n in _BRANCHES.items():
            yield from _conv_gn(f"res{stage}_{{i}}_branch{branch}", f"{layer}.conv{n}", f"{layer}.gn{n}")
        yield from _conv_gn(f"res{stage}_0_branch1", *(f"backbone.layer{stage - 1}.0.downsample.{j}" for j in (0, 1)))


def _fpn():
    yield from _conv_gn("fpn_inner_res5_2_sum", "fpn.lateral.3.conv", "fpn.lateral.3.norm")
    for stage in (2, 3, 4):
        lateral = f"fpn.lateral.{stage - 2}"
        src = f"fpn_inner_res{stage}_{_LAST_BLOCK[stage]}_sum_lateral"
        yield from _conv_gn(src, f"{lateral}.conv", f"{lateral}.norm")
    for stage in (2, 3, 4, 5):
        output = f"fpn.output.{stage - 2}"
        yield from _conv_gn(f"fpn_res{stage}_{_LAST_BLOCK[stage]}_sum", f"{output}.conv", f"{output}.norm")


def _four_convs(src: str, dst: str):
    for n in range(1, 5):
        yield from _conv_gn(f"{src}{n}", f"{dst}.convs.{n - 1}.conv", f"{dst}.convs.{n - 1}.norm")


def _with_bias(src: str, dst: str):
    return [(f"{src}_w", f"{dst}.weight"), (f"{src}_b", f"{dst}.bias")]


RENAMES = [
    *_conv_gn("conv1", "backbone.conv1", "backbone.gn1"),
    *_backbone(),
    *_with_bias("pred", "fc"),
    *_fpn(),
    *_with_bias("conv_rpn_fpn2", "rpn.conv"),
    *_with_bias("rpn_cls_logits_fpn2", "rpn.objectness"),
    *_with_bias("rpn_bbox_pred_fpn2", "rpn.deltas"),
    *_four_convs("head_conv", "roi_heads.box_head"),
    *_with_bias("fc6", "roi_heads.box_head.fc"),
    *_with_bias("cls_score", "roi_heads.box_head.cls_score"),
    *_with_bias("bbox_pred", "roi_heads.box_head.bbox_pred"),
    *_four_convs("_mask_fcn", "roi_heads.mask_head"),  # the GN mask head's names
    *_four_convs("_[mask]_fcn", "roi_heads.mask_head"),  # the names of Detectron's other mask heads
    *_with_bias("conv5_mask", "roi_heads.mask_head.upsample"),
    *_with_bias("mask_fcn_logits", "roi_heads.mask_head.logits"),
]
PLACEHOLDERS = {"last": (r"\d+", "5")}  # when writing an R-101 name, pass last="22"

# Optimizer state: no inference weights.
DROPPED = [r".*_momentum"]
# Blobs a layout carries without using them: a detector trained from an ImageNet backbone keeps
# its classifier (Detectron "preserves" unused blobs of the initial weights file and saves them).
UNUSED = {"e2e": [r"pred_[wb]"]}

# Detectron's test conventions (core/config.py defaults and the GN configs), by config path.
_PIXELS = {"preprocess.channel_order": "BGR", "preprocess.mean": DETECTRON_PIXEL_MEANS, "preprocess.std": UNIT_STD,
           "convention": "detectron"}
DETECTOR_SETTINGS = ConfigPatch({
    **_PIXELS, "preprocess.max_size": (1333, 800), "preprocess.size_divisor": 32,
    "rpn.pre_nms_top_n": 1000, "rpn.post_nms_top_n": 1000, "rpn.nms_iou": 0.7, "rpn.min_size": 0.0,
    "roi_heads.score_thresh": 0.05, "roi_heads.nms_iou": 0.5, "roi_heads.detections_per_image": 100,
    "roi_heads.mask_threshold": 0.5, "roi_heads.box_stds": (0.1, 0.1, 0.2, 0.2), "roi_heads.sampling_ratio": 2,
    "roi_heads.aligned": False,
})
# ImageNet classification with a Detectron backbone: the same BGR means, the centre 224 crop of
# the image resized to a shorter side of 256.
CLASSIFIER_SETTINGS = ConfigPatch({
    **_PIXELS, "preprocess.max_size": (256, 256), "preprocess.crop_size": 224, "preprocess.size_divisor": 1,
})
SETTINGS = {"e2e": DETECTOR_SETTINGS, "imagenet": CLASSIFIER_SETTINGS}
DEFAULTS = "Detectron defaults"


def _blobs(obj):
    return obj["blobs"] if isinstance(obj, dict) and isinstance(obj.get("blobs"), dict) else obj


def detect(obj) -> bool:
    blobs = _blobs(obj)
    return isinstance(blobs, dict) and any(
        isinstance(k, str) and k.startswith(("conv1_", "res2_", "fpn_")) for k in blobs
    )


def source_tensors(obj) -> dict:
    """Blob name -> tensor (numpy arrays are shared, not copied); other entries as they are."""
    return as_tensors(_blobs(obj).items())


def layout_version(keys) -> str:
    """'e2e' for a detector, 'imagenet' for a backbone with its classifier."""
    return "e2e" if any(k.startswith("fpn_") for k in keys) else "imagenet"


def reorder_classes(tensors: dict[str, torch.Tensor], version: str) -> None:
    """Detectron puts background first in cls_score and keeps a background box and mask: gnhub
    moves the first class score last and drops the background box deltas and mask logits."""
    if version == "e2e":
        move_background_last(tensors)


def meta_classes(obj) -> list[str] | None:
    return None  # Detectron files hold no class names; COCO order is the default


def meta_version(obj) -> str | None:
    return None


def read_settings(obj) -> FileSettings:
    """A detector's test settings from the `cfg` YAML Detectron saves with a trained model (read
    with a safe loader, bounded; Python tags in it are read as plain data)."""
    out = {}
    cfg = _read_cfg(obj.get("cfg") if isinstance(obj, dict) else None)
    test, mrcnn = cfg.get("TEST") or {}, cfg.get("MRCNN") or {}
    scale = test.get("SCALE", (test.get("SCALES") or [None])[0])
    if isinstance(scale, (int, float)) and isinstance(test.get("MAX_SIZE"), (int, float)):
        out["preprocess.max_size"] = (int(test["MAX_SIZE"]), int(scale))
    means = _numbers(cfg.get("PIXEL_MEANS"))
    if len(means) == 3:
        out["preprocess.mean"] = tuple(means)
    for key, name, kind in (
        ("RPN_PRE_NMS_TOP_N", "rpn.pre_nms_top_n", int), ("RPN_POST_NMS_TOP_N", "rpn.post_nms_top_n", int),
        ("RPN_NMS_THRESH", "rpn.nms_iou", float), ("RPN_MIN_SIZE", "rpn.min_size", float),
        ("SCORE_THRESH", "roi_heads.score_thresh", float), ("NMS", "roi_heads.nms_iou", float),
        ("DETECTIONS_PER_IM", "roi_heads.detections_per_image", int),
    ):
        if isinstance(test.get(key), (int, float)) and not isinstance(test.get(key), bool):
            out[name] = kind(test[key])
    weights = _numbers((cfg.get("MODEL") or {}).get("BBOX_REG_WEIGHTS"))
    if len(weights) == 4 and all(weights):
        out["roi_heads.box_stds"] = tuple(1.0 / w for w in weights)  # gnhub multiplies, Detectron divides
    if isinstance(mrcnn.get("THRESH_BINARIZE"), (int, float)):
        out["roi_heads.mask_threshold"] = float(mrcnn["THRESH_BINARIZE"])
    return FileSettings(out, origin=f"{DEFAULTS}, test settings of the checkpoint's cfg" if cfg.get("TEST") else None)


class _PlainLoader(yaml.SafeLoader):
    """A safe YAML loader that reads `!!python/...` tagged nodes as plain lists, dicts or strings."""


def _plain(loader, suffix, node):
    if isinstance(node, yaml.MappingNode):
        data = loader.construct_mapping(node, deep=True)
        return data.get("dictitems", data)  # AttrDict: its items
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_PlainLoader.add_multi_constructor("tag:yaml.org,2002:python/", _plain)


MAX_CFG_CHARS = 1 << 20  # Detectron's cfg dumps are about 10 kB
MAX_CFG_NODES = 100_000  # YAML nodes, counting each use of an alias (real cfgs: about 1000)


def _read_cfg(text) -> dict:
    """The cfg YAML, bounded: longer than MAX_CFG_CHARS or expanding (aliases of aliases) to more
    than MAX_CFG_NODES nodes is refused; what does not parse is no cfg."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not isinstance(text, str):
        return {}
    if len(text) > MAX_CFG_CHARS:
        raise GnhubError(f"refused: its cfg YAML is {len(text):,} characters (more than {MAX_CFG_CHARS:,})")
    loader = _PlainLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}
        if _expanded(node) > MAX_CFG_NODES:
            raise GnhubError(f"refused: its cfg YAML expands to more than {MAX_CFG_NODES:,} nodes through aliases (an "
                             "alias bomb?)")
        cfg = loader.construct_document(node)
    except (yaml.YAMLError, RecursionError):
        return {}
    finally:
        loader.dispose()
    return cfg if isinstance(cfg, dict) else {}


def _expanded(root) -> int:
    """Nodes of a composed YAML document, an alias counted as often as it is used (memoised, so
    linear in the distinct nodes); a node that holds itself counts as too many."""
    size: dict[int, int] = {}
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        if not done and id(node) in size:
            continue
        children = [x for pair in node.value for x in pair] if isinstance(node, yaml.MappingNode) else \
            node.value if isinstance(node, yaml.SequenceNode) else []
        if not done and children:
            size[id(node)] = -1  # open: meeting it again below is a cycle
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in size)
        elif any(size.get(id(c), -1) < 0 for c in children):
            return MAX_CFG_NODES + 1
        else:
            size[id(node)] = min(1 + sum(size[id(c)] for c in children), MAX_CFG_NODES + 1)
    return size[id(root)]


def _numbers(value) -> list[float]:
    """The numbers of a possibly nested list ([[[102.98, 115.95, 122.77]]] in Detectron's cfg)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _numbers(v)]
    return []

