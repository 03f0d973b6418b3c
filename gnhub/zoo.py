"""The registry of known GN models: every published fact about each, in one place."""
from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass

from .config import DETECTRON_BGR_MEAN, IMAGENET_RGB_MEAN, IMAGENET_RGB_STD, PreprocessConfig

MMDET_URL = "https://download.openmmlab.com/mmdetection/v2.0/gn/{name}/{file}"

# The preprocessing of mmdetection 3.3's packaged configs for the two backbone families.
DETECTRON_PREPROCESS = PreprocessConfig("BGR", DETECTRON_BGR_MEAN, (1.0, 1.0, 1.0))
CONTRIB_PREPROCESS = PreprocessConfig("RGB", IMAGENET_RGB_MEAN, IMAGENET_RGB_STD)


GN_PAPER = "Group Normalization (Yuxin Wu, Kaiming He), ECCV 2018, https://arxiv.org/abs/1803.08494"
GN_CITATION = """@inproceedings{wu2018group,
  title={Group Normalization},
  author={Wu, Yuxin and He, Kaiming},
  booktitle={Proceedings of the European Conference on Computer Vision (ECCV)},
  year={2018}
}"""
MMDET_CITATION = """@article{mmdetection,
  title={{MMDetection}: Open MMLab Detection Toolbox and Benchmark},
  author={Chen, Kai and Wang, Jiaqi and Pang, Jiangmiao and others},
  journal={arXiv preprint arXiv:1906.07155},
  year={2019}
}"""
MMDET_RESULTS = "https://github.com/open-mmlab/mmdetection/blob/main/configs/gn/README.md"
DEFAULT_ORG = "gnhub"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    source_format: str
    depth: int
    pretrain: str  # "(d)" Detectron backbone, "(c)" contributed backbone
    schedule: str
    epochs: int
    file: str
    box_ap: float
    mask_ap: float
    train_memory_gb: float | None  # per GPU, as published
    inference_fps: float | None  # as published
    architecture: str = "Mask R-CNN, ResNet-FPN with GroupNorm everywhere (4conv1fc box head)"
    dataset: str = "COCO 2017 (train2017; metrics on val2017)"
    hardware: str = "NVIDIA V100 (mmdetection v2.0 benchmark; upstream marks memory and speed as outdated)"
    license: str = "apache-2.0"
    results_source: str = MMDET_RESULTS

    @property
    def url(self) -> str:
        return MMDET_URL.format(name=self.name, file=self.file)

    @property
    def sha256_prefix(self) -> str:
        return re.search(r"-([0-9a-f]{8})\.pth$", self.file).group(1)

    @property
    def preprocess(self) -> PreprocessConfig:
        return DETECTRON_PREPROCESS if self.pretrain == "(d)" else CONTRIB_PREPROCESS

    @property
    def pretrain_text(self) -> str:
        return {"(d)": "ImageNet R-{d}-GN backbone converted from Detectron (d)",
                "(c)": "ImageNet R-{d}-GN backbone contributed to mmdetection (c)"}[self.pretrain].format(d=self.depth)

    def hub_repo(self, org: str = DEFAULT_ORG) -> str:
        return f"{org}/{self.name}"


_MMDET = [
    ("mask_rcnn_r50_fpn_gn-all_2x_coco", 50, "(d)", "2x", 24, "20200206-8eee02a6", 40.2, 36.4, 7.1, 9.6),
    ("mask_rcnn_r50_fpn_gn-all_3x_coco", 50, "(d)", "3x", 36, "20200214-8b23b1e5", 40.5, 36.7, 7.1, 9.6),
    ("mask_rcnn_r101_fpn_gn-all_2x_coco", 101, "(d)", "2x", 24, "20200205-d96b1b50", 41.9, 37.6, 9.9, 8.1),
    ("mask_rcnn_r101_fpn_gn-all_3x_coco", 101, "(d)", "3x", 36, "20200513_181609-0df864f4", 42.1, 38.0, None, None),
    ("mask_rcnn_r50_fpn_gn-all_contrib_2x_coco", 50, "(c)", "2x", 24, "20200207-20d3e849", 40.0, 36.1, 7.1, 9.7),
    ("mask_rcnn_r50_fpn_gn-all_contrib_3x_coco", 50, "(c)", "3x", 36, "20200225-542aefbc", 40.1, 36.2, 7.1, 9.6),
]

MODELS: dict[str, ZooEntry] = {
    name: ZooEntry(name, "mmdet", depth, pre, sched, epochs, f"{name}_{stamp}.pth", box, mask, mem, fps)
    for name, depth, pre, sched, epochs, stamp, box, mask, mem, fps in _MMDET
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


def suggest(name: str) -> list[str]:
    """The zoo names closest to a misspelt one."""
    return difflib.get_close_matches(name, list(MODELS), n=3, cutoff=0.5)
