"""ModelConfig: everything about a model except its weights, stored as config.json."""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import GnhubError
from .frameworks import NAMES as CONVENTIONS

__all__ = ["BGR_CAFFE", "BackboneConfig", "CASCADE_WEIGHTS", "CHOICES", "COCO_CLASSES", "ConfigPatch", "D2_CASCADE",
    "DETECTRON_BGR_MEAN",
    "DETECTRON_PIXEL_MEANS", "FORMAT_VERSION", "FPNConfig", "IMAGENET_BGR_STD", "IMAGENET_CLASSES",
    "IMAGENET_RGB_MEAN", "IMAGENET_RGB_STD", "ModelConfig", "PreprocessConfig", "RGB_IMAGENET", "RPNConfig", "RULES",
    "RoIHeadsConfig", "SETTING_PATHS", "SemanticConfig", "COCO_PANOPTIC_STUFF", "TrainConfig", "UNIT_STD",
    "backbone_words", "check_value", "unknown_path_message"]

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1 named a framework's conventions in six fields (see LEGACY_CONVENTIONS)

COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

# The semantic labels of detectron2's COCO panoptic models ("coco_2017_*_panoptic_separated",
# datasets/builtin_meta.py): 0 gathers every thing class, then the 53 stuff classes by COCO id.
COCO_PANOPTIC_STUFF = (
    "things", "banner", "blanket", "bridge", "cardboard", "counter", "curtain", "door-stuff", "floor-wood", "flower",
    "fruit", "gravel", "house", "light", "mirror-stuff", "net", "pillow", "platform", "playingfield", "railroad",
    "river", "road", "roof", "sand", "sea", "shelf", "snow", "stairs", "tent", "towel", "wall-brick", "wall-stone",
    "wall-tile", "wall-wood", "water-other", "window-blind", "window-other", "tree-merged", "fence-merged",
    "ceiling-merged", "sky-other-merged", "cabinet-merged", "table-merged", "floor-other-merged", "pavement-merged",
    "mountain-merged", "grass-merged", "dirt-merged", "paper-merged", "food-other-merged", "building-other-merged",
    "rock-merged", "wall-other-merged", "rug-merged",
)

# ImageNet-1k class names in class-index order (torchvision's list).
IMAGENET_CLASSES = tuple(
    (Path(__file__).parent / "data" / "imagenet_classes.txt").read_text(encoding="utf-8").splitlines()
)

# The pixel statistics of the zoo's preprocessing, each written once (the ConfigPatches at the
# end of this file combine them).
DETECTRON_PIXEL_MEANS = (102.9801, 115.9465, 122.7717)  # Detectron's own PIXEL_MEANS (BGR)
DETECTRON_BGR_MEAN = (103.53, 116.28, 123.675)  # mmdetection's "(d)" configs and detectron2 round them so
IMAGENET_RGB_MEAN = (123.675, 116.28, 103.53)
IMAGENET_RGB_STD = (58.395, 57.12, 57.375)
IMAGENET_BGR_STD = IMAGENET_RGB_STD[::-1]  # detectron2's PIXEL_STD where it divides (the 9x scratch model)
UNIT_STD = (1.0, 1.0, 1.0)  # no division


CHOICES = {
    "task": ("instance-segmentation", "object-detection", "image-classification"),
    "convention": CONVENTIONS,
    "preprocess.channel_order": ("RGB", "BGR"),
    "backbone.norm": ("GN", "FrozenBN"),
    "fpn.norm": ("GN", "none"),
    "semantic.norm": ("GN", "none"),
}

# format_version 1's six convention fields (box_convention, preprocess.resize, rpn.anchor_generator,
# rpn.clip_to, roi_heads.detect_in, roi_heads.paste) as each framework set them; a classifier set
# only the resize.
LEGACY_FIELDS = ("box_convention", "preprocess.resize", "rpn.anchor_generator", "rpn.clip_to", "roi_heads.detect_in",
                 "roi_heads.paste")
LEGACY_CONVENTIONS = {
    ("mmdet", "mmcv", "mmdet", "image", "network", "mmdet"): "mmdet",
    ("detectron", "detectron", "detectron", "padded", "original", "detectron"): "detectron",
    ("detectron2", "pil", "detectron2", "image", "network", "mmdet"): "detectron2",
}
LEGACY_RESIZE = {"mmcv": "mmdet", "detectron": "detectron", "pil": "detectron2"}


@dataclass
class BackboneConfig:
    depth: int = 50  # 50, 101 or 152
    norm: str = "GN"  # after every conv: "GN" (GroupNorm) or "FrozenBN" (detectron2's FrozenBatchNorm2d)
    num_groups: int = 32  # of GroupNorm
    norm_eps: float = 1e-5
    groups: int = 1  # of the 3x3 convs: 1 for ResNet, 32 for ResNeXt 32x4d
    base_width: int = 64  # per group, at the first stage: 64 for ResNet, 4 for ResNeXt 32x4d
    weight_std: bool = False  # every conv's filters standardised before use (mmcv's ConvWS2d)
    # per stage (C2-C5): its 3x3 convs deformable (v1, offsets from a 3x3 conv; detectron2's DEFORM_ON_PER_STAGE)
    deform_stages: tuple[bool, ...] = (False, False, False, False)

    @property
    def name(self) -> str:
        """As the zoos spell it: R-50, X-101-32x4d."""
        return f"X-{self.depth}-{self.groups}x{self.base_width}d" if self.groups > 1 else f"R-{self.depth}"

    @property
    def words(self) -> str:
        """As a sentence says it: ResNet-50, ResNeXt-101 32x4d."""
        return backbone_words(self.name)


def backbone_words(name: str) -> str:
    """R-50 -> ResNet-50, X-101-32x4d -> ResNeXt-101 32x4d."""
    return re.sub(r"-(\d+x\d+d)$", r" \1", name.replace("R-", "ResNet-").replace("X-", "ResNeXt-"))


@dataclass
class FPNConfig:
    channels: int = 256
    norm: str = "GN"  # after the lateral and output convs: "GN", or "none" (the convs have biases)
    num_groups: int = 32
    norm_eps: float = 1e-5
    weight_std: bool = False  # lateral and output convs standardised (mmcv's ConvWS2d)


@dataclass
class PreprocessConfig:
    channel_order: str = "BGR"  # order of the channels the network sees: "RGB" or "BGR"
    mean: tuple[float, ...] = DETECTRON_BGR_MEAN  # in network channel order
    std: tuple[float, ...] = UNIT_STD
    max_size: tuple[int, int] = (1333, 800)  # (long side, short side) the resized image fits in
    size_divisor: int = 32  # the batch is zero-padded (after normalisation) to a multiple of this
    crop_size: int = 0  # > 0: shorter side resized to min(max_size), then this centre square


@dataclass
class RPNConfig:
    strides: tuple[int, ...] = (4, 8, 16, 32, 64)
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # height / width
    scales: tuple[float, ...] = (8.0,)  # anchor side = scale * stride
    pre_nms_top_n: int = 1000  # per level
    nms_iou: float = 0.7
    post_nms_top_n: int = 1000  # per image, over all levels
    min_size: float = 0.0  # proposals need width and height > min_size
    box_stds: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)


@dataclass
class RoIHeadsConfig:
    box_pool_size: int = 7
    mask_pool_size: int = 14
    sampling_ratio: int = 0
    aligned: bool = True
    finest_scale: float = 56.0  # RoIs of sqrt(area) < 2 * finest_scale go to the finest level
    num_convs: int = 4  # of the box head (each cascade stage's)
    num_fcs: int = 1  # fc layers of the box head after its convs: 1 (4conv1fc) or 2 (detectron2's 2fc)
    mask_num_convs: int = 4
    fc_channels: int = 1024
    num_groups: int = 32
    norm_eps: float = 1e-5
    # 4 per stage: one stage, or a cascade (Cai & Vasconcelos, CVPR 2018; detectron2's CascadeROIHeads) of several,
    # each with its own box head refining the previous stage's boxes; scores averaged over the stages
    box_stds: tuple[float, ...] = (0.1, 0.1, 0.2, 0.2)
    class_agnostic: bool = False  # one box regression for all classes (4 deltas, not 4 per class)
    score_thresh: float = 0.05
    nms_iou: float = 0.5
    detections_per_image: int = 100
    mask_threshold: float = 0.5
    box_weight_std: bool = False  # the box head's convs standardised (mmcv's ConvWS2d)
    mask_weight_std: bool = False  # the mask head's convs standardised

    @property
    def stages(self) -> int:
        """1, or the number of cascade stages."""
        return len(self.box_stds) // 4


@dataclass
class SemanticConfig:
    """detectron2's SemSegFPNHead and PanopticFPN's merge of its labels with the instances
    (combine_semantic_and_instance_outputs): a panoptic model where `classes` is not empty."""

    classes: tuple[str, ...] = ()  # semantic labels; 0 gathers every thing class ("things"), then the stuff classes
    channels: int = 128  # of the 3x3 convs of each level's branch
    common_stride: int = 4  # each level's branch upsamples to this stride (P2's), the logits then to the input's
    norm: str = "GN"  # after each 3x3 conv: "GN" or "none" (the convs have biases)
    num_groups: int = 32
    norm_eps: float = 1e-5
    overlap_thresh: float = 0.5  # an instance is dropped where more than this part of its mask is taken
    stuff_area: int = 4096  # stuff regions of fewer pixels (original image) are dropped
    instance_score_thresh: float = 0.5  # instances scoring less are left out of the panoptic result
    loss_weight: float = 0.5  # of the semantic loss (Base-Panoptic-FPN's SEM_SEG_HEAD.LOSS_WEIGHT)


@dataclass
class TrainConfig:
    """Training settings of `GNMaskRCNN`'s losses (its forward, given targets): mmdetection 3.3's
    train_cfg for these models; a cascade's RoI stages take detectron2's (cascade_ious, and
    box_batch_size_per_image and box_positive_fraction, which detectron2's defaults share)."""

    rpn_pos_iou: float = 0.7  # MaxIoUAssigner of the anchors
    rpn_neg_iou: float = 0.3
    rpn_min_pos_iou: float = 0.3
    rpn_batch_size_per_image: int = 256  # RandomSampler of the anchors
    rpn_positive_fraction: float = 0.5
    rpn_pre_nms_top_n: int = 2000  # training proposals, per level
    rpn_post_nms_top_n: int = 1000  # per image
    rpn_nms_iou: float = 0.7
    box_pos_iou: float = 0.5  # MaxIoUAssigner of the proposals (ground truth added as RoIs)
    box_neg_iou: float = 0.5
    box_min_pos_iou: float = 0.5
    box_batch_size_per_image: int = 512  # RandomSampler of the RoIs
    box_positive_fraction: float = 0.25
    # a cascade's RoI stages (detectron2's ROI_BOX_CASCADE_HEAD.IOUS): per stage, the IoU from which a
    # box is foreground (no low-quality matches); a cascade uses these, not box_pos_iou .. box_min_pos_iou
    cascade_ious: tuple[float, ...] = (0.5, 0.6, 0.7)
    mask_size: int = 28
    frozen_stages: int = 1  # 0: none; 1: stem and first stage get no gradient; up to 4
    norm_decay_mult: float = 1.0  # weight decay of GroupNorm weights and biases, x the recipe's


@dataclass
class ModelConfig:
    """Architecture, classes, preprocessing, test settings and provenance of a GN Mask R-CNN (a
    Faster R-CNN where task is object-detection: no mask head; a ResNet classifier for
    image-classification).

    Classes: `classes[i]` is label i; the box classifier has len(classes) + 1 outputs with
    background LAST; box deltas and mask logits are per class, without background.
    """

    name: str = "gn_mask_rcnn"
    task: str = "instance-segmentation"  # "object-detection" (no mask head), "image-classification" (a backbone)
    classes: tuple[str, ...] = COCO_CLASSES
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: RoIHeadsConfig = field(default_factory=RoIHeadsConfig)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)  # no semantic head unless semantic.classes
    train: TrainConfig = field(default_factory=TrainConfig)
    # the framework whose rules the model follows: resize, anchors, box coding, proposal selection,
    # RoI level mapping, detection, postprocess, mask paste (gnhub/frameworks/NAME/convention.py)
    convention: str = "mmdet"
    provenance: dict = field(default_factory=dict)  # source file, sha256, format, converter, date
    weights_sha256: str = ""  # of model.safetensors, written with it
    format_version: int = FORMAT_VERSION

    @property
    def architecture(self) -> str:
        """In a few words: Mask R-CNN, ResNeXt-50 32x4d-FPN, GN+WS."""
        norm = "GN+WS" if self.backbone.weight_std else "GN"
        if self.backbone.norm != "GN":
            norm = self.backbone.norm
        if self.task == "image-classification":
            return f"{self.backbone.words} classifier, {norm}"
        if self.backbone.norm != "GN":
            norm += " backbone, GN heads"
        detector = "Mask R-CNN" if self.task == "instance-segmentation" else "Faster R-CNN"
        if self.panoptic:
            detector = "Panoptic FPN (Mask R-CNN + semantic FPN head)"
        return f"{detector}, {self.backbone.words}-FPN, {norm}"

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def panoptic(self) -> bool:
        """A semantic head beside the instances, merged into a panoptic result (semantic.classes)."""
        return bool(self.semantic.classes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """A config from untrusted data (config.json): names checked as it is built, every value
        checked once, by `check`. format_version 1's six convention fields become `convention`."""
        config = _build(cls, _legacy(data) if isinstance(data, dict) and data.get("format_version") == 1 else data,
                        "config")
        config.check()
        return config

    def check(self) -> None:
        """Every field holds a value a real model can have (lists become tuples, whole numbers in
        float fields floats); one clear error otherwise."""
        for obj, name, path, value in _walk(self):
            setattr(obj, name, check_value(path, value))
        stds, roi = len(self.roi_heads.box_stds), self.roi_heads
        if stds % 4 or (roi.stages > 1 and not roi.class_agnostic):
            raise GnhubError(f"config: roi_heads.box_stds holds {stds} values; expected 4 per stage, and a cascade of "
                             "stages regresses class-agnostic boxes (roi_heads.class_agnostic true)")
        if roi.stages > 1 and len(self.train.cascade_ious) != roi.stages:
            raise GnhubError(f"config: train.cascade_ious holds {len(self.train.cascade_ious)} values; expected one "
                             f"per cascade stage ({roi.stages}, from roi_heads.box_stds)")
        if self.semantic.classes and self.task != "instance-segmentation":
            raise GnhubError(f"config: semantic.classes makes a panoptic model, whose merge needs instance masks; "
                             f"task is {self.task!r}, expected 'instance-segmentation'")
        crop, short = self.preprocess.crop_size, min(self.preprocess.max_size)
        if crop > short:
            raise GnhubError(f"config: preprocess.crop_size {crop} is larger than the shorter side images are "
                             f"resized to (min of max_size, {short})")


# Bounds of the numeric and text fields: (type, low, high, length). Length None: a scalar;
# an int: a tuple of exactly that many; 0: a tuple of any length >= 1; -1: of any length, empty too.
_F, _I = float, int
RULES = {
    "name": (str, 1, 200, None),
    "classes": (str, 1, 200, 0),
    "backbone.depth": (_I, 50, 152, None), "backbone.num_groups": (_I, 1, 1024, None),
    "backbone.norm_eps": (_F, 1e-12, 1.0, None), "backbone.groups": (_I, 1, 64, None),
    "backbone.base_width": (_I, 1, 1024, None), "backbone.deform_stages": (bool, 0, 1, 4),
    **{f"{k}weight_std": (bool, 0, 1, None) for k in ("backbone.", "fpn.", "roi_heads.box_", "roi_heads.mask_")},
    "fpn.channels": (_I, 1, 4096, None), "fpn.num_groups": (_I, 1, 1024, None), "fpn.norm_eps": (_F, 1e-12, 1.0, None),
    "preprocess.mean": (_F, -1e4, 1e4, 3), "preprocess.std": (_F, 1e-6, 1e4, 3),
    "preprocess.max_size": (_I, 16, 8192, 2), "preprocess.size_divisor": (_I, 1, 1024, None),
    "preprocess.crop_size": (_I, 0, 8192, None),
    "rpn.strides": (_I, 1, 1024, 5), "rpn.ratios": (_F, 1e-3, 1e3, 0), "rpn.scales": (_F, 1e-3, 1e3, 0),
    "rpn.pre_nms_top_n": (_I, 0, 1_000_000, None), "rpn.nms_iou": (_F, 0.0, 1.0, None),
    "rpn.post_nms_top_n": (_I, 1, 100_000, None), "rpn.min_size": (_F, 0.0, 1e4, None),
    "rpn.box_stds": (_F, 1e-6, 1e3, 4),
    "roi_heads.box_pool_size": (_I, 1, 64, None), "roi_heads.mask_pool_size": (_I, 1, 64, None),
    "roi_heads.sampling_ratio": (_I, 0, 64, None), "roi_heads.aligned": (bool, 0, 1, None),
    "roi_heads.finest_scale": (_F, 1e-3, 1e5, None), "roi_heads.num_convs": (_I, 0, 16, None),
    "roi_heads.fc_channels": (_I, 1, 65536, None), "roi_heads.num_groups": (_I, 1, 1024, None),
    "roi_heads.norm_eps": (_F, 1e-12, 1.0, None), "roi_heads.box_stds": (_F, 1e-6, 1e3, 0),
    "roi_heads.mask_num_convs": (_I, 0, 16, None), "roi_heads.num_fcs": (_I, 1, 2, None),
    "roi_heads.class_agnostic": (bool, 0, 1, None),
    "roi_heads.score_thresh": (_F, 0.0, 1.0, None), "roi_heads.nms_iou": (_F, 0.0, 1.0, None),
    "roi_heads.detections_per_image": (_I, 1, 10_000, None), "roi_heads.mask_threshold": (_F, 0.0, 1.0, None),
    "semantic.classes": (str, 1, 200, -1), "semantic.channels": (_I, 1, 4096, None),
    "semantic.common_stride": (_I, 4, 4, None), "semantic.num_groups": (_I, 1, 1024, None),
    "semantic.norm_eps": (_F, 1e-12, 1.0, None), "semantic.overlap_thresh": (_F, 0.0, 1.0, None),
    "semantic.stuff_area": (_I, 0, 10**9, None), "semantic.instance_score_thresh": (_F, 0.0, 1.0, None),
    "semantic.loss_weight": (_F, 0.0, 1e3, None),
    "weights_sha256": (str, 0, 64, None), "format_version": (_I, 1, 1000, None),
    **{f"train.{k}_iou": (_F, 0.0, 1.0, None) for k in ("rpn_pos", "rpn_neg", "rpn_min_pos", "rpn_nms", "box_pos",
                                                        "box_neg", "box_min_pos")},
    "train.rpn_batch_size_per_image": (_I, 1, 10**12, None), "train.box_batch_size_per_image": (_I, 1, 10**12, None),
    "train.rpn_positive_fraction": (_F, 0.0, 1.0, None), "train.box_positive_fraction": (_F, 0.0, 1.0, None),
    "train.rpn_pre_nms_top_n": (_I, 0, 1_000_000, None), "train.rpn_post_nms_top_n": (_I, 1, 100_000, None),
    "train.cascade_ious": (_F, 0.0, 1.0, 0), "train.mask_size": (_I, 1, 256, None),
    "train.frozen_stages": (_I, 0, 4, None), "train.norm_decay_mult": (_F, 0.0, 1e3, None),
}


def check_value(path: str, value):
    """`value` for config field `path` (e.g. "preprocess.mean"), checked against its bounds or
    choices; lists become tuples, ints widen to floats. One clear error otherwise."""
    if path in CHOICES:
        if value not in CHOICES[path]:
            raise GnhubError(f"config: {path} is {_short(value)}; expected one of {list(CHOICES[path])}")
        return value
    if path == "provenance":
        if not isinstance(value, dict):
            raise GnhubError(f"config: provenance is {_short(value)}; expected an object")
        return value
    if path not in RULES:
        return value
    kind, low, high, length = RULES[path]
    if length is None:
        return _scalar(path, value, kind, low, high)
    if (not isinstance(value, (list, tuple)) or (length > 0 and len(value) != length) or (not value and length == 0)
            or len(value) > 100_000):
        count = f"{length}" if length > 0 else "one or more" if length == 0 else "any number of"
        raise GnhubError(f"config: {path} is {_short(value)}; expected a list of {count} {kind.__name__} values")
    try:
        return tuple(_scalar(path, v, kind, low, high) for v in value)
    except GnhubError as e:
        raise GnhubError(f"config: {path} is {_short(value)}; {str(e).split('; ', 1)[1]} each") from None


def _scalar(path: str, value, kind, low, high):
    where = f"config: {path} is {_short(value)}"
    if kind is str:
        if not isinstance(value, str) or not low <= len(value) <= high:
            raise GnhubError(f"{where}; expected text of {low} to {high} characters")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise GnhubError(f"{where}; expected true or false")
        return value
    ok_types = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types) or not math.isfinite(value):
        raise GnhubError(f"{where}; expected {'a whole' if kind is int else 'a'} number from {low:g} to {high:g}")
    if not low <= value <= high:
        raise GnhubError(f"{where}; expected a number from {low:g} to {high:g}")
    return kind(value)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _walk(obj, prefix: str = ""):
    """(dataclass, field name, dotted path, value) of every field of a (nested) config dataclass."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _walk(value, f"{prefix}{f.name}.")
        else:
            yield obj, f.name, f"{prefix}{f.name}", value


def _legacy(data: dict) -> dict:
    """A format_version 1 config as format_version 2 has it: the framework its six convention
    fields name (any left out had their default), one clear error for a set no framework has."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    values = []
    for path, default in zip(LEGACY_FIELDS, next(iter(LEGACY_CONVENTIONS))):
        section, _, name = path.rpartition(".")
        holder = data.get(section) if section else data
        values.append(holder.pop(name, default) if isinstance(holder, dict) else default)
    if data.get("task") == "image-classification":  # a classifier's only convention was its resize
        name = LEGACY_RESIZE.get(values[1]) if isinstance(values[1], str) else None
    else:
        name = LEGACY_CONVENTIONS.get(tuple(v if isinstance(v, str) else repr(v) for v in values))
    if name is None:
        fields = ", ".join(f"{p} {v!r}" for p, v in zip(LEGACY_FIELDS, values))
        raise GnhubError(f"config: format_version 1 conventions ({fields}) are no framework's; convert the model "
                         "again")
    data["convention"] = name
    data["format_version"] = FORMAT_VERSION
    return data


def _build(cls, data, where: str):
    """Dataclass `cls` from a dict, its field names checked (the values are `check`'s)."""
    if not isinstance(data, dict):
        raise GnhubError(f"{where}: expected an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise GnhubError(f"{where}: unknown fields {unknown}")
    kwargs = {}
    for name, value in data.items():
        default = getattr(cls(), name)
        kwargs[name] = _build(type(default), value, f"{where}.{name}") if dataclasses.is_dataclass(default) else value
    return cls(**kwargs)


# -- settings: a typed patch of ModelConfig ---------------------------------------------------

# Every field a setting may change, by dotted path ("rpn.nms_iou"): the leaves of the dataclass
# tree, without what the writer records (provenance, weights_sha256, format_version).
SETTING_PATHS = tuple(path for _, _, path, _ in _walk(ModelConfig())
                      if path not in ("provenance", "weights_sha256", "format_version"))


def unknown_path_message(path) -> str | None:
    """Why `path` is not a setting's path (with the closest ones), or None where it is."""
    if path in SETTING_PATHS:
        return None
    close = difflib.get_close_matches(str(path), SETTING_PATHS, n=2, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else "; a setting names a config.json field (rpn.nms_iou)"
    return f"{_short(path)} is not a config field{hint}"


class ConfigPatch(Mapping):
    """Settings: values for ModelConfig's fields by dotted path ("preprocess.mean",
    "rpn.nms_iou"), every path a field of the schema and every value checked by config.json's
    rules when the patch is made. Immutable; `a | b` is `a` with `b`'s values over it;
    `apply(config)` sets them."""

    def __init__(self, values: Mapping | None = None, where: str | None = None):
        """`where` names user data (a registry file, ...): an unknown path or a bad value is a
        GnhubError naming it. Without `where` the values are a built-in table, and either is a
        programming error (ValueError) when the table is defined."""
        checked = {}
        for path, value in (values or {}).items():
            try:
                problem = unknown_path_message(path)
                if problem:
                    raise GnhubError(f"config: {problem}")
                checked[path] = check_value(path, value)
            except GnhubError as e:
                text = str(e).removeprefix("config: ")
                if where is None:
                    raise ValueError(f"a built-in settings table: {text}") from None
                raise GnhubError(f"{where}: {text}") from None
        self._values = checked

    def __getitem__(self, path: str):
        return self._values[path]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __or__(self, other: ConfigPatch) -> ConfigPatch:
        if not isinstance(other, ConfigPatch):
            return NotImplemented
        merged = ConfigPatch()
        merged._values = {**self._values, **other._values}
        return merged

    def __repr__(self) -> str:
        return f"ConfigPatch({self._values!r})"

    def apply(self, config: ModelConfig) -> None:
        """Sets every value on `config`, then checks the whole config once."""
        for path, value in self._values.items():
            *sections, name = path.split(".")
            obj = config
            for section in sections:
                obj = getattr(obj, section)
            setattr(obj, name, value)
        config.check()


# mmdetection's preprocessing for backbones from Detectron ("(d)"; also detectron2's defaults)
# and for every other ImageNet backbone.
BGR_CAFFE = ConfigPatch({"preprocess.channel_order": "BGR", "preprocess.mean": DETECTRON_BGR_MEAN,
                         "preprocess.std": UNIT_STD})
RGB_IMAGENET = ConfigPatch({"preprocess.channel_order": "RGB", "preprocess.mean": IMAGENET_RGB_MEAN,
                            "preprocess.std": IMAGENET_RGB_STD})
# detectron2's CascadeROIHeads (configs/Misc/cascade_*.yaml): ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS
# (10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15) as gnhub's stds, class-agnostic boxes.
CASCADE_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))
D2_CASCADE = ConfigPatch({"roi_heads.box_stds": tuple(1.0 / w for weights in CASCADE_WEIGHTS for w in weights),
                          "roi_heads.class_agnostic": True})
