"""detectron2 GN checkpoints (.pkl): the model zoo's pickles, {"model": name -> numpy array,
"__author__": ...}, of GeneralizedRCNN with a GN ResNet-FPN backbone (configs/Misc/*_gn.yaml), or
with a FrozenBN, deformable ResNeXt-152, a plain FPN and cascade GN heads
(configs/Misc/cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv.yaml), or PanopticFPN (a GN ResNet-101
with deformable stages, GN FPN, cascade 2fc heads and a semantic FPN head:
configs/Misc/panoptic_fpn_R_101_dconv_cascade_gn_3x.yaml).

A table of names (the class order is gnhub's already: background last in cls_score, none in
bbox_pred and the mask predictor) and detectron2's test conventions. A pickle carries no config,
so the settings come from the zoo entry of its file name, else from mask_rcnn_R_50_FPN_3x_gn's
(detectron2/config/defaults.py, configs/Base-RCNN-FPN.yaml, configs/Misc/*gn*.yaml).
No I/O: the engine reads, checks and writes.
"""
from __future__ import annotations

from gnhub.config import BGR_CAFFE, D2_CASCADE, ConfigPatch

from .arrays import as_tensors
from .file_settings import FileSettings

__all__ = ["DEFAULTS", "DESCRIPTION", "DROPPED", "NAME", "PLACEHOLDERS", "RENAMES", "SETTINGS", "UNUSED", "detect",
    "layout_version", "meta_classes", "meta_version", "read_settings", "reorder_classes", "source_tensors"]

NAME = "detectron2"
DESCRIPTION = "detectron2 model-zoo pickle (.pkl: {\"model\": numpy arrays})"


def _conv_gn(src: str, dst_conv: str, dst_norm: str):
    """detectron2's Conv2d: its weight, its bias where it has no norm, its `norm` submodule (GN, or
    FrozenBN with running statistics) where it has one."""
    return [(f"{src}.{{p}}", f"{dst_conv}.{{p}}"), (f"{src}.norm.{{n}}", f"{dst_norm}.{{n}}")]


def _backbone():
    yield from _conv_gn("backbone.bottom_up.stem.conv1", "backbone.conv1", "backbone.gn1")
    for stage in range(2, 6):  # res2-res5 are gnhub's layer1-layer4; blocks numbered alike ({i})
        src, dst = f"backbone.bottom_up.res{stage}.{{i}}", f"backbone.layer{stage - 1}.{{i}}"
        for n in (1, 2, 3):
            yield from _conv_gn(f"{src}.conv{n}", f"{dst}.conv{n}", f"{dst}.gn{n}")
        yield from _conv_gn(f"{src}.shortcut", f"{dst}.downsample.0", f"{dst}.downsample.1")
        yield f"{src}.conv2_offset.{{p}}", f"{dst}.conv2_offset.{{p}}"  # DeformBottleneckBlock


def _fpn():
    for level in range(2, 6):
        for src, dst in (("lateral", "lateral"), ("output", "output")):
            name = f"fpn.{dst}.{level - 2}"
            yield from _conv_gn(f"backbone.fpn_{src}{level}", f"{name}.conv", f"{name}.norm")


def _head(src: str, dst: str, prefix: str, convs: int):
    for n in range(1, convs + 1):
        yield from _conv_gn(f"{src}.{prefix}{n}", f"{dst}.convs.{n - 1}.conv", f"{dst}.convs.{n - 1}.norm")


def _box_heads():
    """StandardROIHeads' box head and predictor; CascadeROIHeads' per stage (box_head.0, ...), the
    first as gnhub's box_head, the others as its cascade_heads."""
    for src, predictor, dst in [("roi_heads.box_head", "roi_heads.box_predictor", "roi_heads.box_head")] + [
            (f"roi_heads.box_head.{s}", f"roi_heads.box_predictor.{s}",
             "roi_heads.box_head" if s == 0 else f"roi_heads.cascade_heads.{s - 1}") for s in range(CASCADE_STAGES)]:
        yield from _head(src, dst, "conv", MAX_CONVS)
        yield f"{src}.fc1.{{p}}", f"{dst}.fc.{{p}}"
        yield f"{src}.fc2.{{p}}", f"{dst}.fc2.{{p}}"  # the 2fc heads (Base-RCNN-FPN's NUM_FC 2)
        yield f"{predictor}.cls_score.{{p}}", f"{dst}.cls_score.{{p}}"
        yield f"{predictor}.bbox_pred.{{p}}", f"{dst}.bbox_pred.{{p}}"


def _semantic_head():
    """SemSegFPNHead: level pN's branch is an nn.Sequential of Conv2d and Upsample modules (convs at
    even indices; P2's one conv alone), gnhub's sem_seg_head.branches.{N - 2}.{k}."""
    for level in range(2, 6):
        for k in range(max(1, level - 2)):
            src, dst = f"sem_seg_head.p{level}.{2 * k}", f"sem_seg_head.branches.{level - 2}.{k}"
            yield from _conv_gn(src, f"{dst}.conv", f"{dst}.norm")
    yield "sem_seg_head.predictor.{p}", "sem_seg_head.predictor.{p}"


CASCADE_STAGES = 3  # configs/Misc/cascade_*: ROI_BOX_CASCADE_HEAD's three IOUS and BBOX_REG_WEIGHTS
MAX_CONVS = 8  # of a head (the X152 cascade's mask head has 8)
RENAMES = [
    *_backbone(),
    *_fpn(),
    ("proposal_generator.rpn_head.conv.{p}", "rpn.conv.{p}"),
    ("proposal_generator.rpn_head.objectness_logits.{p}", "rpn.objectness.{p}"),
    ("proposal_generator.rpn_head.anchor_deltas.{p}", "rpn.deltas.{p}"),
    *_box_heads(),
    *_head("roi_heads.mask_head", "roi_heads.mask_head", "mask_fcn", MAX_CONVS),
    ("roi_heads.mask_head.deconv.{p}", "roi_heads.mask_head.upsample.{p}"),
    ("roi_heads.mask_head.predictor.{p}", "roi_heads.mask_head.logits.{p}"),
    *_semantic_head(),
]
PLACEHOLDERS = {"n": ("weight|bias|running_mean|running_var", None)}  # of a norm: GN or FrozenBN
# Buffers older detectron2 versions saved with the weights; detectron2 itself no longer loads
# them (its normalisation comes from the config, its anchors from the anchor generator).
DROPPED = [r"pixel_mean", r"pixel_std", r"proposal_generator\.anchor_generator\.cell_anchors\.\d+"]
UNUSED: dict = {}

# detectron2's test conventions for these models (defaults.py, Base-RCNN-FPN.yaml, Misc/*gn*.yaml).
_D2 = BGR_CAFFE | ConfigPatch({
    "preprocess.max_size": (1333, 800), "preprocess.size_divisor": 32,
    "rpn.pre_nms_top_n": 1000, "rpn.post_nms_top_n": 1000, "rpn.nms_iou": 0.7, "rpn.min_size": 0.0,
    "roi_heads.score_thresh": 0.05, "roi_heads.nms_iou": 0.5, "roi_heads.detections_per_image": 100,
    "roi_heads.mask_threshold": 0.5, "roi_heads.box_stds": (0.1, 0.1, 0.2, 0.2), "roi_heads.sampling_ratio": 0,
    "roi_heads.aligned": True, "roi_heads.finest_scale": 56.0, "convention": "detectron2",
})
SETTINGS = {"d2": _D2, "d2-cascade": _D2 | D2_CASCADE}
DEFAULTS = ("detectron2 defaults of mask_rcnn_R_50_FPN_3x_gn, with cascade_mask_rcnn_*'s for cascade heads "
            "(not a zoo file)")


def _model(obj):
    return obj["model"] if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else None


def detect(obj) -> bool:
    model = _model(obj)
    return model is not None and any(
        isinstance(k, str) and k.startswith(("backbone.bottom_up.", "proposal_generator.")) for k in model)


def source_tensors(obj) -> dict:
    """Parameter name -> tensor (numpy arrays are shared, not copied); other entries as they are."""
    return as_tensors(_model(obj).items())


def layout_version(keys) -> str:
    """"d2-cascade" for CascadeROIHeads (one box predictor per stage), else "d2"."""
    return "d2-cascade" if any(k.startswith("roi_heads.box_predictor.0.") for k in keys) else "d2"


def reorder_classes(tensors: dict, layout: str) -> None:
    """detectron2's class order is gnhub's: nothing to move."""


def meta_classes(obj) -> list[str] | None:
    return None  # a zoo pickle holds no class names; COCO order is the default


def meta_version(obj) -> str | None:
    return None  # a zoo pickle says who wrote it ("__author__"), not which version


def read_settings(obj) -> FileSettings:
    return FileSettings()  # the file says nothing: its zoo entry or the defaults do
