"""mmdetection GN Mask R-CNN checkpoints (.pth): 1.x (heads at top level, background first)
and 2.x/3.x (heads under roi_head., background last).

A table of renames, the class-order rule, and where the checkpoint keeps classes and
preprocessing. No I/O: the engine (gnhub.convert) reads, checks and writes.
"""
from __future__ import annotations

import ast

import torch

from gnhub.config import ConfigPatch

from .background import move_background_last
from .file_settings import FileSettings

__all__ = ["DEFAULTS", "DESCRIPTION", "DROPPED", "MAX_CONFIG_CHARS", "NAME", "PLACEHOLDERS", "RENAMES", "SETTINGS",
    "UNUSED", "detect", "layout_version", "meta_classes", "meta_version", "read_settings", "reorder_classes",
    "source_tensors"]

NAME = "mmdet"
DESCRIPTION = "mmdetection 1.x/2.x/3.x checkpoint (.pth: meta + state_dict)"

# (source name, gnhub name) templates; {i}, {p} (weight|bias) and {rest} are the engine's
# placeholders, {roi} this format's own: the "roi_head." prefix of 2.x+, absent in 1.x.
RENAMES = [
    ("backbone.{rest}", "backbone.{rest}"),
    ("neck.lateral_convs.{i}.conv.weight", "fpn.lateral.{i}.conv.weight"),
    ("neck.lateral_convs.{i}.gn.{p}", "fpn.lateral.{i}.norm.{p}"),
    ("neck.fpn_convs.{i}.conv.weight", "fpn.output.{i}.conv.weight"),
    ("neck.fpn_convs.{i}.gn.{p}", "fpn.output.{i}.norm.{p}"),
    ("rpn_head.rpn_conv.{p}", "rpn.conv.{p}"),
    ("rpn_head.rpn_cls.{p}", "rpn.objectness.{p}"),
    ("rpn_head.rpn_reg.{p}", "rpn.deltas.{p}"),
    ("{roi}bbox_head.shared_convs.{i}.conv.weight", "roi_heads.box_head.convs.{i}.conv.weight"),
    ("{roi}bbox_head.shared_convs.{i}.gn.{p}", "roi_heads.box_head.convs.{i}.norm.{p}"),
    ("{roi}bbox_head.shared_fcs.0.{p}", "roi_heads.box_head.fc.{p}"),
    ("{roi}bbox_head.fc_cls.{p}", "roi_heads.box_head.cls_score.{p}"),
    ("{roi}bbox_head.fc_reg.{p}", "roi_heads.box_head.bbox_pred.{p}"),
    ("{roi}mask_head.convs.{i}.conv.weight", "roi_heads.mask_head.convs.{i}.conv.weight"),
    ("{roi}mask_head.convs.{i}.gn.{p}", "roi_heads.mask_head.convs.{i}.norm.{p}"),
    ("{roi}mask_head.upsample.{p}", "roi_heads.mask_head.upsample.{p}"),
    ("{roi}mask_head.conv_logits.{p}", "roi_heads.mask_head.logits.{p}"),
]
PLACEHOLDERS = {"roi": (r"(?:roi_head\.)?", "roi_head.")}  # name: (pattern, value when writing)

# Source tensors that carry no inference weights (regular expressions), reported as dropped.
DROPPED = [r".*\.num_batches_tracked"]
UNUSED: dict[str, list[str]] = {}


def detect(obj) -> bool:
    sd = obj.get("state_dict") if isinstance(obj, dict) else None
    return isinstance(sd, dict) and any(str(k).startswith(("backbone.", "neck.")) for k in sd)


def source_tensors(obj) -> dict[str, torch.Tensor]:
    return obj["state_dict"]


def layout_version(keys) -> str:
    """'1.x' when the heads sit at the top level (background first), else '2.x+'."""
    return "1.x" if any(k.startswith("bbox_head.") for k in keys) else "2.x+"


def reorder_classes(tensors: dict[str, torch.Tensor], version: str) -> None:
    """1.x put background first in fc_cls and kept a background row in fc_reg and conv_logits.

    gnhub keeps background last in cls_score and none in bbox_pred and logits: move it or drop
    it (mmdetection's own upgrade tool drops the last bias row of conv_logits instead of the
    first; gnhub drops the background row of weight and bias alike).
    """
    if version == "1.x":
        move_background_last(tensors)


def meta_classes(obj) -> list[str] | None:
    meta = obj.get("meta") or {}
    classes = (meta.get("dataset_meta") or {}).get("classes") or meta.get("CLASSES")
    return [str(c) for c in classes] if classes else None


def meta_version(obj) -> str | None:
    version = (obj.get("meta") or {}).get("mmdet_version")
    return str(version) if version else None


SETTINGS: dict[str, ConfigPatch] = {}  # ModelConfig's defaults are mmdetection's (with Detectron's BGR means)
DEFAULTS = "gnhub default (Detectron BGR means, std 1)"

MAX_CONFIG_CHARS = 1 << 20  # real configs are about 10 kB
_MAX_DEPTH = 20  # nesting of dict(...) calls read


def read_settings(obj) -> FileSettings:
    """Preprocessing, test, training and architecture settings read off the embedded config text
    (parsed, never run; names bound at its top level are followed): the data preprocessor (3.x)
    or img_norm_cfg (2.x), the test pipeline's scale, test_cfg and train_cfg, the backbone's
    frozen_stages and conv_cfg (ConvWS: weight standardisation), the neck's and heads' conv_cfg,
    and the optimizer's norm_decay_mult. The engine checks every value."""
    meta = obj.get("meta")
    text = meta.get("config") if isinstance(meta, dict) else None
    if not isinstance(text, str):
        return FileSettings()
    if len(text) > MAX_CONFIG_CHARS:
        return FileSettings(ignored=[f"the embedded config is {len(text)} characters (more than {MAX_CONFIG_CHARS})"])
    try:
        tree = ast.parse(text)
        names = _top_level(tree)
        calls = [_literal_kwargs(n, names) for n in ast.walk(tree) if isinstance(n, ast.Call)]
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError) as e:
        return FileSettings(ignored=[f"the embedded config does not parse ({type(e).__name__})"])
    out: dict = {}
    ignored: list[str] = []

    def read(what: str, fn) -> None:
        try:
            out.update(fn())
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as e:
            ignored.append(f"{what} ({type(e).__name__}: {str(e)[:80]})")

    def norm_settings(c):
        rgb = c.get("bgr_to_rgb", c.get("to_rgb", False))
        return {"preprocess.mean": tuple(map(float, c["mean"])), "preprocess.std": tuple(map(float, c["std"])),
                "preprocess.channel_order": "RGB" if rgb is True else "BGR"}

    def rpn_settings(c):
        nms = c.get("nms", {})
        return {"rpn.pre_nms_top_n": c["nms_pre"], "rpn.post_nms_top_n": c.get("max_per_img", c.get("max_num")),
                "rpn.nms_iou": nms.get("iou_threshold") if isinstance(nms, dict) else c.get("nms_thr", 0.7),
                "rpn.min_size": c.get("min_bbox_size", 0)}

    def rcnn_settings(c):
        values = {"roi_heads.score_thresh": c["score_thr"], "roi_heads.nms_iou": c["nms"]["iou_threshold"],
                  "roi_heads.detections_per_image": c["max_per_img"]}
        if "mask_thr_binary" in c:
            values["roi_heads.mask_threshold"] = c["mask_thr_binary"]
        return values

    norm = next((c for c in calls if "mean" in c and "std" in c), None)
    if norm:
        read("data preprocessor mean/std", lambda: norm_settings(norm))
    pad = next((c for c in calls if "pad_size_divisor" in c or "size_divisor" in c), None)
    if pad:
        out["preprocess.size_divisor"] = pad.get("pad_size_divisor", pad.get("size_divisor"))
    read("test pipeline scale", lambda: _test_pipeline_scale(tree, names))
    rpn = next((c for c in calls if "nms_pre" in c and ("max_per_img" in c or "max_num" in c)), None)
    if rpn:
        read("rpn test settings", lambda: rpn_settings(rpn))
    rcnn = next((c for c in calls if "score_thr" in c and "nms_pre" not in c), None)
    if rcnn:
        read("rcnn test settings", lambda: rcnn_settings(rcnn))
    train = next((c for c in calls if isinstance(c.get("rpn_proposal"), dict)), None)
    if train:
        read("train_cfg", lambda: _train_settings(train))
    model = names.get("model") if isinstance(names.get("model"), dict) else {}
    read("model architecture", lambda: _architecture(model))
    decay = next((c["norm_decay_mult"] for c in calls if "norm_decay_mult" in c), None)
    if decay is not None:
        out["train.norm_decay_mult"] = decay
    return FileSettings(out, ignored)


def _architecture(model: dict) -> dict:
    """What the model dict says beyond the tensors: which stages standardise their conv weights
    (conv_cfg=dict(type='ConvWS')) and the backbone's frozen stages (-1: none)."""
    def ws(part) -> bool:
        conv = part.get("conv_cfg") if isinstance(part, dict) else None
        return isinstance(conv, dict) and conv.get("type") == "ConvWS"

    roi = model.get("roi_head") if isinstance(model.get("roi_head"), dict) else model  # 1.x: heads at top level
    out = {"backbone.weight_std": ws(model.get("backbone")), "fpn.weight_std": ws(model.get("neck")),
           "roi_heads.box_weight_std": ws(roi.get("bbox_head")), "roi_heads.mask_weight_std": ws(roi.get("mask_head"))}
    backbone = model.get("backbone")
    if isinstance(backbone, dict) and "frozen_stages" in backbone:
        frozen = backbone["frozen_stages"]
        out["train.frozen_stages"] = 0 if frozen == -1 else frozen
    return out if model else {}


def _train_settings(t: dict) -> dict:
    """config.train fields from a train_cfg dict(rpn=..., rpn_proposal=..., rcnn=...)."""
    out = {}
    for stage, prefix in (("rpn", "rpn"), ("rcnn", "box")):
        part = t.get(stage) or {}
        a, s = part.get("assigner") or {}, part.get("sampler") or {}
        for key, field in (("pos_iou_thr", "pos_iou"), ("neg_iou_thr", "neg_iou"), ("min_pos_iou", "min_pos_iou")):
            if key in a:
                out[f"train.{prefix}_{field}"] = a[key]
        if "num" in s:
            out[f"train.{prefix}_batch_size_per_image"] = s["num"]
        if "pos_fraction" in s:
            out[f"train.{prefix}_positive_fraction"] = s["pos_fraction"]
    if "mask_size" in (t.get("rcnn") or {}):
        out["train.mask_size"] = t["rcnn"]["mask_size"]
    p = t["rpn_proposal"]
    for key, field in (("nms_pre", "rpn_pre_nms_top_n"), ("max_per_img", "rpn_post_nms_top_n")):
        if key in p:
            out[f"train.{field}"] = p[key]
    if isinstance(p.get("nms"), dict) and "iou_threshold" in p["nms"]:
        out["train.rpn_nms_iou"] = p["nms"]["iou_threshold"]
    return out


def _top_level(tree: ast.Module) -> dict:
    """Values of the names the config binds at its top level to literals or dict(...) calls."""
    names: dict = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = _literal(node.value, names, 0)
            if value is not _SKIP:
                names[node.targets[0].id] = value
    return names


_SKIP = object()


def _literal(node, names: dict, depth: int):
    """A literal, a dict(...) call of literals, or a name bound to one; else _SKIP."""
    if isinstance(node, ast.Call):
        return _literal_kwargs(node, names, depth + 1) if depth < _MAX_DEPTH else _SKIP
    if isinstance(node, ast.Name):
        return names.get(node.id, _SKIP)
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _SKIP


def _literal_kwargs(call: ast.Call, names: dict | None = None, depth: int = 0) -> dict:
    """The keyword arguments of a call whose values are literals (nested dict(...) and names
    bound at the top level included)."""
    out = {}
    for kw in call.keywords:
        if kw.arg is not None:
            value = _literal(kw.value, names or {}, depth)
            if value is not _SKIP:
                out[kw.arg] = value
    return out


def _test_pipeline_scale(tree: ast.Module, names: dict) -> dict:
    """{"preprocess.max_size": (long, short)}: the resize scale of the test pipeline (3.x
    `scale=`, 2.x `img_scale=`), or {}."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "test_pipeline" for t in node.targets
        ):
            for call in (n for n in ast.walk(node.value) if isinstance(n, ast.Call)):
                kw = _literal_kwargs(call, names)
                scale = kw.get("scale", kw.get("img_scale"))
                if isinstance(scale, (tuple, list)) and len(scale) == 2 and all(isinstance(s, int) for s in scale):
                    return {"preprocess.max_size": (max(scale), min(scale))}
    return {}
