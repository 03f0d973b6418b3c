"""The registry of known GN models: every published fact about each, in one place."""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from .config import DETECTRON_BGR_MEAN, IMAGENET_RGB_MEAN, IMAGENET_RGB_STD, PreprocessConfig

MMDET_URL = "https://download.openmmlab.com/mmdetection/v2.0/gn/{name}/{file}"

# The preprocessing of mmdetection 3.3's packaged configs for the two backbone families.
DETECTRON_PREPROCESS = PreprocessConfig("BGR", DETECTRON_BGR_MEAN, (1.0, 1.0, 1.0))
CONTRIB_PREPROCESS = PreprocessConfig("RGB", IMAGENET_RGB_MEAN, IMAGENET_RGB_STD)


@dataclass(frozen=True)
class ZooEntry:
    name: str
    source_format: str
    depth: int
    pretrain: str  # "(d)" Detectron backbone, "(c)" contributed backbone
    schedule: str
    file: str
    box_ap: float
    mask_ap: float

    @property
    def url(self) -> str:
        return MMDET_URL.format(name=self.name, file=self.file)

    @property
    def sha256_prefix(self) -> str:
        return re.search(r"-([0-9a-f]{8})\.pth$", self.file).group(1)

    @property
    def preprocess(self) -> PreprocessConfig:
        return DETECTRON_PREPROCESS if self.pretrain == "(d)" else CONTRIB_PREPROCESS


_MMDET = [
    ("mask_rcnn_r50_fpn_gn-all_2x_coco", 50, "(d)", "2x", "20200206-8eee02a6", 40.2, 36.4),
    ("mask_rcnn_r50_fpn_gn-all_3x_coco", 50, "(d)", "3x", "20200214-8b23b1e5", 40.5, 36.7),
    ("mask_rcnn_r101_fpn_gn-all_2x_coco", 101, "(d)", "2x", "20200205-d96b1b50", 41.9, 37.6),
    ("mask_rcnn_r101_fpn_gn-all_3x_coco", 101, "(d)", "3x", "20200513_181609-0df864f4", 42.1, 38.0),
    ("mask_rcnn_r50_fpn_gn-all_contrib_2x_coco", 50, "(c)", "2x", "20200207-20d3e849", 40.0, 36.1),
    ("mask_rcnn_r50_fpn_gn-all_contrib_3x_coco", 50, "(c)", "3x", "20200225-542aefbc", 40.1, 36.2),
]

MODELS: dict[str, ZooEntry] = {
    name: ZooEntry(name, "mmdet", depth, pre, sched, f"{name}_{stamp}.pth", box, mask)
    for name, depth, pre, sched, stamp, box, mask in _MMDET
}


def list_models(pattern: str | None = None) -> list[str]:
    """Names of the zoo models, optionally filtered by an fnmatch pattern."""
    return sorted(n for n in MODELS if pattern is None or fnmatch.fnmatch(n, pattern))


def find_by_file(file_name: str) -> ZooEntry | None:
    """The zoo entry whose published file this is (by name, before any hash suffix)."""
    return next((e for e in MODELS.values() if file_name == e.file), None) or next(
        (e for e in sorted(MODELS.values(), key=lambda e: -len(e.name)) if file_name.startswith(e.name + "_")),
        None,
    )
