"""PaddleDetection GN checkpoints (.pdparams): what `paddle.save(model.state_dict())` writes, a
pickle (protocol 4 by default) of {parameter name: numpy array, "StructuredToParameterName@@":
{parameter name: paddle's internal name}} (paddle/framework/io.py `_build_saved_state_dict`),
of configs/gn/{faster,mask,cascade,cascade_mask}_rcnn_r50_fpn_gn_2x_coco.yml: a ResNet with frozen
BatchNorm (ppdet/modeling/backbones/resnet.py, `norm_type: bn`, `freeze_norm`), an FPN with GN, the
`XConvNormHead` box head (4 GN convs, one fc; `CascadeHead`'s `CascadeXConvNormHead`: one per
stage, `bbox_head.head.{s}.stage{s}_bbox_head_conv*`, `bbox_score_stage{s}`, `bbox_delta_stage{s}`)
and the 4-conv GN `MaskFeat` mask head.

A table of names. PaddleDetection keeps background last in `bbox_score` and none in
`bbox_delta` and `mask_fcn_logits`, as gnhub does; paddle's `Linear` keeps its weight as
[in, out], so `source_tensors` gives each transposed (a view: nothing is copied).
No I/O: the engine reads, checks and writes.
"""
from __future__ import annotations

from gnhub.config import ConfigPatch
from gnhub.frameworks.paddle import CASCADE

from .arrays import as_tensors
from .file_settings import FileSettings

__all__ = ["DEFAULTS", "DESCRIPTION", "DROPPED", "LINEAR", "NAME", "PLACEHOLDERS", "RENAMES", "SETTINGS", "TABLE",
    "UNUSED", "detect", "layout_version", "meta_classes", "meta_version", "read_settings", "reorder_classes",
    "source_tensors"]

NAME = "paddle"
DESCRIPTION = "PaddleDetection state dict (.pdparams: paddle.save of numpy arrays)"
TABLE = "StructuredToParameterName@@"  # paddle.save's table of paddle's internal parameter names


def _conv_norm(src: str, dst_conv: str, dst_norm: str):
    """A ConvNormLayer: `conv` (no bias) and its `norm` (GroupNorm, or a frozen BatchNorm whose
    statistics paddle names `_mean` and `_variance`)."""
    return [(f"{src}.conv.weight", f"{dst_conv}.weight"), (f"{src}.norm.{{p}}", f"{dst_norm}.{{p}}"),
            (f"{src}.norm._mean", f"{dst_norm}.running_mean"), (f"{src}.norm._variance", f"{dst_norm}.running_var")]


def _block_names(stage: int, blocks: int):
    """ppdet's NameAdapter.fix_layer_warp_name: res4a, res4b1.. res4b22 where a stage has more than
    10 blocks (res4 of R-101), else res2a, res2b, ..."""
    for i in range(blocks):
        if blocks > 10 and stage == 4:
            yield i, f"res4{'a' if i == 0 else f'b{i}'}"
        else:
            yield i, f"res{stage}{chr(ord('a') + i)}"


def _backbone():
    yield from _conv_norm("backbone.conv1.conv1", "backbone.conv1", "backbone.gn1")
    names = {}  # R-50's names, then R-101's other ones (writing a source name, R-50's are meant)
    for depth in ((3, 4, 6, 3), (3, 4, 23, 3)):
        names.update(dict.fromkeys((stage, i, block) for stage, blocks in zip(range(2, 6), depth)
                                   for i, block in _block_names(stage, blocks)))
    for stage, i, block in names:
        src, dst = f"backbone.res{stage}.{block}", f"backbone.layer{stage - 1}.{i}"
        for n, branch in enumerate("abc", 1):
            yield from _conv_norm(f"{src}.branch2{branch}", f"{dst}.conv{n}", f"{dst}.gn{n}")
        if i == 0:
            yield from _conv_norm(f"{src}.short", f"{dst}.downsample.0", f"{dst}.downsample.1")


def _fpn():
    for level in range(2, 6):  # ppdet's FPN names C5's lateral conv apart from the others
        lateral = "fpn_inner_res5_sum" if level == 5 else f"fpn_inner_res{level}_sum_lateral"
        for src, dst in ((lateral, "lateral"), (f"fpn_res{level}_sum", "output")):
            name = f"fpn.{dst}.{level - 2}"
            yield from _conv_norm(f"neck.{src}", f"{name}.conv", f"{name}.norm")


def _convs(src: str, dst: str, first: int):
    for n in range(4):
        yield from _conv_norm(f"{src}{n + first}", f"roi_heads.{dst}.convs.{n}.conv", f"roi_heads.{dst}.convs.{n}.norm")


def _cascade_heads():
    """CascadeHead: CascadeXConvNormHead's XConvNormHead per stage (sublayer "{s}", its convs named
    "stage{s}_bbox_head_conv{n}") and per stage one Linear each for the scores and the
    class-agnostic deltas; stage 0 is gnhub's box_head, the others its cascade_heads."""
    for s in range(CASCADE_STAGES):
        dst = "box_head" if s == 0 else f"cascade_heads.{s - 1}"
        yield from _convs(f"bbox_head.head.{s}.stage{s}_bbox_head_conv", dst, 0)
        yield f"bbox_head.head.{s}.fc6.{{p}}", f"roi_heads.{dst}.fc.{{p}}"
        yield f"bbox_head.bbox_score_stage{s}.{{p}}", f"roi_heads.{dst}.cls_score.{{p}}"
        yield f"bbox_head.bbox_delta_stage{s}.{{p}}", f"roi_heads.{dst}.bbox_pred.{{p}}"


CASCADE_STAGES = 3  # CascadeHead's num_cascade_stages
RENAMES = [
    *_backbone(),
    *_fpn(),
    ("rpn_head.rpn_feat.rpn_conv.{p}", "rpn.conv.{p}"),
    ("rpn_head.rpn_rois_score.{p}", "rpn.objectness.{p}"),
    ("rpn_head.rpn_rois_delta.{p}", "rpn.deltas.{p}"),
    *_convs("bbox_head.head.bbox_head_conv", "box_head", 0),
    ("bbox_head.head.fc6.{p}", "roi_heads.box_head.fc.{p}"),
    ("bbox_head.bbox_score.{p}", "roi_heads.box_head.cls_score.{p}"),
    ("bbox_head.bbox_delta.{p}", "roi_heads.box_head.bbox_pred.{p}"),
    *_cascade_heads(),
    *_convs("mask_head.head.upsample.mask_inter_feat_", "mask_head", 1),
    ("mask_head.head.upsample.conv5_mask.{p}", "roi_heads.mask_head.upsample.{p}"),  # Conv2DTranspose: torch's layout
    ("mask_head.mask_fcn_logits.{p}", "roi_heads.mask_head.logits.{p}"),
]
PLACEHOLDERS: dict = {}
LINEAR = ("bbox_head.head.fc6.weight", "bbox_head.bbox_score.weight", "bbox_head.bbox_delta.weight",  # [in, out]
          *(f"bbox_head.{n}.weight" for s in range(CASCADE_STAGES)
            for n in (f"head.{s}.fc6", f"bbox_score_stage{s}", f"bbox_delta_stage{s}")))
DROPPED: list[str] = []
UNUSED: dict = {}

# PaddleDetection's test settings of configs/gn (faster_fpn_reader.yml and mask_fpn_reader.yml
# TestReader; faster_rcnn_r50_fpn.yml, mask_rcnn_r50_fpn.yml): RGB, NormalizeImage's ImageNet mean
# and std in [0, 1] units (here times 255: arrays.rescale divides them back exactly), Resize to
# 800 x 1333 (keep_ratio), PadBatch to 32; test_proposal; BBoxPostProcess; MaskPostProcess.
# roi_heads.aligned: the configs say True, but ppdet's RoIAlign has ignored it since abeaad770e
# (2024-08) and pools unaligned, which is what PaddleDetection computes today (docs/paddle.md).
_PPDET = ConfigPatch({
    "preprocess.channel_order": "RGB", "preprocess.mean": tuple(255 * m for m in (0.485, 0.456, 0.406)),
    "preprocess.std": tuple(255 * s for s in (0.229, 0.224, 0.225)), "preprocess.max_size": (1333, 800),
    "preprocess.size_divisor": 32,
    "rpn.pre_nms_top_n": 1000, "rpn.post_nms_top_n": 1000, "rpn.nms_iou": 0.7, "rpn.min_size": 0.0,
    "roi_heads.score_thresh": 0.05, "roi_heads.nms_iou": 0.5, "roi_heads.detections_per_image": 100,
    "roi_heads.mask_threshold": 0.5, "roi_heads.box_stds": (0.1, 0.1, 0.2, 0.2), "roi_heads.sampling_ratio": 0,
    "roi_heads.aligned": False, "roi_heads.finest_scale": 56.0, "convention": "paddle",
    "train.norm_decay_mult": 0.0,  # ConvNormLayer's and ResNet's norm_decay 0: no weight decay on norms
})
SETTINGS = {"ppdet": _PPDET, "ppdet-cascade": _PPDET | ConfigPatch(CASCADE)}  # configs/gn/cascade_*
DEFAULTS = "PaddleDetection test settings of configs/gn"


def detect(obj) -> bool:
    return isinstance(obj, dict) and (isinstance(obj.get(TABLE), dict) or any(
        isinstance(k, str) and k.startswith(("backbone.res2.", "rpn_head.rpn_feat.")) for k in obj))


def source_tensors(obj) -> dict:
    """Parameter name -> tensor, sharing each numpy array's memory; Linear weights transposed to
    torch's [out, in]. The name table is not a tensor (the engine is never given it)."""
    tensors = as_tensors((k, v) for k, v in obj.items() if k != TABLE)
    for key in LINEAR:
        value = tensors.get(key)
        if getattr(value, "ndim", 0) == 2:
            tensors[key] = value.t()
    return tensors


def layout_version(keys) -> str:
    """"ppdet-cascade" for CascadeHead (one bbox_score per stage), else "ppdet"."""
    return "ppdet-cascade" if any(k.startswith("bbox_head.bbox_score_stage0.") for k in keys) else "ppdet"


def reorder_classes(tensors: dict, layout: str) -> None:
    """PaddleDetection's class order is gnhub's: nothing to move."""


def meta_classes(obj) -> list[str] | None:
    return None  # a state dict holds no class names; COCO order is the default


def meta_version(obj) -> str | None:
    return None  # nor the version of paddle that wrote it


def read_settings(obj) -> FileSettings:
    return FileSettings()  # a state dict says nothing of its settings: its zoo entry or SETTINGS do
