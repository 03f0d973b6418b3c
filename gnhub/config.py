"""ModelConfig: everything about a model except its weights, stored as config.json."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import GnhubError

FORMAT_VERSION = 1

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

# ImageNet-1k class names in class-index order (torchvision's list).
IMAGENET_CLASSES = tuple(
    (Path(__file__).parent / "data" / "imagenet_classes.txt").read_text(encoding="utf-8").splitlines()
)

# mmdetection's data preprocessors for the two GN families, and Detectron's own PIXEL_MEANS.
DETECTRON_BGR_MEAN = (103.53, 116.28, 123.675)
DETECTRON_PIXEL_MEANS = (102.9801, 115.9465, 122.7717)
IMAGENET_RGB_MEAN = (123.675, 116.28, 103.53)
IMAGENET_RGB_STD = (58.395, 57.12, 57.375)


CHOICES = {
    "task": ("instance-segmentation", "image-classification"),
    "box_convention": ("mmdet", "detectron"),
    "preprocess.channel_order": ("RGB", "BGR"),
    "preprocess.resize": ("mmcv", "detectron"),
    "rpn.anchor_generator": ("mmdet", "detectron"),
    "rpn.clip_to": ("image", "padded"),
    "roi_heads.detect_in": ("network", "original"),
    "roi_heads.paste": ("mmdet", "detectron"),
}


@dataclass
class BackboneConfig:
    depth: int = 50  # 50 or 101
    num_groups: int = 32
    norm_eps: float = 1e-5


@dataclass
class FPNConfig:
    channels: int = 256
    num_groups: int = 32
    norm_eps: float = 1e-5


@dataclass
class PreprocessConfig:
    channel_order: str = "BGR"  # order of the channels the network sees: "RGB" or "BGR"
    mean: tuple[float, ...] = DETECTRON_BGR_MEAN  # in network channel order
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    max_size: tuple[int, int] = (1333, 800)  # (long side, short side) the resized image fits in
    size_divisor: int = 32  # the batch is zero-padded (after normalisation) to a multiple of this
    # "mmcv": uint8 resize to the size mmcv's imrescale picks, then normalise; "detectron":
    # subtract the mean in float32, then cv2.resize(fx=fy=scale), scale as Detectron picks it
    resize: str = "mmcv"
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
    anchor_generator: str = "mmdet"  # "mmdet" (centred on 0, unrounded) or "detectron" (rounded, +1)
    clip_to: str = "image"  # proposals clipped to the resized "image" or to the "padded" batch


@dataclass
class RoIHeadsConfig:
    box_pool_size: int = 7
    mask_pool_size: int = 14
    sampling_ratio: int = 0
    aligned: bool = True
    finest_scale: float = 56.0  # RoIs of sqrt(area) < 2 * finest_scale go to the finest level
    num_convs: int = 4
    fc_channels: int = 1024
    num_groups: int = 32
    norm_eps: float = 1e-5
    box_stds: tuple[float, ...] = (0.1, 0.1, 0.2, 0.2)
    score_thresh: float = 0.05
    nms_iou: float = 0.5
    detections_per_image: int = 100
    mask_threshold: float = 0.5
    detect_in: str = "network"  # boxes decoded in "network" (resized) or "original" image pixels
    paste: str = "mmdet"  # "mmdet" (grid_sample, >= threshold) or "detectron" (cv2.resize, > threshold)


@dataclass
class ModelConfig:
    """Architecture, classes, preprocessing, test settings and provenance of a GN Mask R-CNN.

    Classes: `classes[i]` is label i; the box classifier has len(classes) + 1 outputs with
    background LAST; box deltas and mask logits are per class, without background.
    """

    name: str = "gn_mask_rcnn"
    task: str = "instance-segmentation"  # or "image-classification" for a bare backbone
    classes: tuple[str, ...] = COCO_CLASSES
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: RoIHeadsConfig = field(default_factory=RoIHeadsConfig)
    # "mmdet": widths x2 - x1; "detectron": widths x2 - x1 + 1 in decoding, NMS (IoU >= thr),
    # proposal filtering and level mapping, and the limit of detections by a score threshold
    box_convention: str = "mmdet"
    provenance: dict = field(default_factory=dict)  # source file, sha256, format, converter, date
    weights_sha256: str = ""  # of model.safetensors, written with it
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        config = _build(cls, data, "config")
        config.check()
        return config

    def check(self) -> None:
        """Every convention field holds one of its known values."""
        for where, value in (
            ("task", self.task), ("box_convention", self.box_convention),
            ("preprocess.channel_order", self.preprocess.channel_order), ("preprocess.resize", self.preprocess.resize),
            ("rpn.anchor_generator", self.rpn.anchor_generator), ("rpn.clip_to", self.rpn.clip_to),
            ("roi_heads.detect_in", self.roi_heads.detect_in), ("roi_heads.paste", self.roi_heads.paste),
        ):
            if value not in CHOICES[where]:
                raise GnhubError(f"config: {where} is {value!r}; expected one of {list(CHOICES[where])}")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise GnhubError(f"{path}: not a readable config.json ({e})") from None
        version = data.get("format_version") if isinstance(data, dict) else None
        if version != FORMAT_VERSION:
            raise GnhubError(
                f"{path}: format_version {version!r} is not {FORMAT_VERSION}; "
                "convert the model again with this gnhub version"
            )
        return cls.from_dict(data)


def _build(cls, data, where: str):
    """Builds dataclass `cls` from a dict, checking names; lists become tuples."""
    if not isinstance(data, dict):
        raise GnhubError(f"{where}: expected an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise GnhubError(f"{where}: unknown fields {unknown}")
    kwargs = {}
    for name, value in data.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default):
            value = _build(type(default), value, f"{where}.{name}")
        elif isinstance(default, tuple):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)
