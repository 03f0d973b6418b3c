"""The registry of known GN models: every published fact about each, in one place."""
from __future__ import annotations

import difflib
import fnmatch
import json
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .config import DETECTRON_BGR_MEAN, IMAGENET_RGB_MEAN, IMAGENET_RGB_STD, PreprocessConfig
from .errors import GnhubError
from .settings import DEFAULT_ORG, zoo_file

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
DETECTRON_CITATION = """@misc{Detectron2018,
  author = {Ross Girshick and Ilija Radosavovic and Georgia Gkioxari and Piotr Doll\\'{a}r and Kaiming He},
  title = {Detectron},
  howpublished = {\\url{https://github.com/facebookresearch/detectron}},
  year = {2018}
}"""
DETECTRON_RESULTS = "https://github.com/facebookresearch/Detectron/blob/main/projects/GN/README.md"
DETECTRON_URL = "https://dl.fbaipublicfiles.com/detectron/"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    source_format: str
    depth: int
    pretrain: str  # "(d)" Detectron backbone, "(c)" contributed backbone, "imagenet", "scratch", "none"
    schedule: str
    epochs: int | None
    file: str  # the file name gnhub expects (Detectron's detectors are all model_final.pkl upstream)
    box_ap: float | None
    mask_ap: float | None
    train_memory_gb: float | None  # per GPU, as published
    inference_fps: float | None  # as published
    architecture: str = "Mask R-CNN, ResNet-FPN with GroupNorm everywhere (4conv1fc box head)"
    dataset: str = "COCO 2017 (train2017; metrics on val2017)"
    hardware: str = "NVIDIA V100 (mmdetection v2.0 benchmark; upstream marks memory and speed as outdated)"
    license: str = "apache-2.0"
    results_source: str = MMDET_RESULTS
    source_url: str | None = ""  # "": mmdetection's URL pattern; None: no published download
    top1_error: float | None = None  # ImageNet classifiers, centre crop, as published
    task: str = "instance-segmentation"
    sha256: str | None = None  # the source file's full sha256, where pinned (registered entries)

    @property
    def url(self) -> str | None:
        return MMDET_URL.format(name=self.name, file=self.file) if self.source_url == "" else self.source_url

    @property
    def sha256_prefix(self) -> str | None:
        m = re.search(r"-([0-9a-f]{8})\.pth$", self.file)
        return m.group(1) if m else None

    @property
    def preprocess(self) -> PreprocessConfig:
        return DETECTRON_PREPROCESS if self.pretrain == "(d)" else CONTRIB_PREPROCESS

    @property
    def pretrain_text(self) -> str:
        return {"(d)": "ImageNet R-{d}-GN backbone converted from Detectron (d)",
                "(c)": "ImageNet R-{d}-GN backbone contributed to mmdetection (c)",
                "imagenet": "Detectron's ImageNet R-{d}-GN backbone",
                "scratch": "none: trained from scratch",
                "none": "trained on ImageNet-1k from scratch",
                "unknown": "not stated"}[self.pretrain].format(d=self.depth)

    @property
    def results_text(self) -> str:
        if self.top1_error is not None:
            return f"top-1 error {self.top1_error}%"
        return f"box AP {self.box_ap}  mask AP {self.mask_ap}"

    def hub_repo(self, org: str = DEFAULT_ORG) -> str:
        return f"{org}/{self.name}"

    @property
    def expected_sha256(self) -> str | None:
        """What the source file's sha256 must be (or start with): the pinned one, else the
        prefix published in the file name."""
        return self.sha256 or self.sha256_prefix


_MMDET = [
    ("mask_rcnn_r50_fpn_gn-all_2x_coco", 50, "(d)", "2x", 24, "20200206-8eee02a6", 40.2, 36.4, 7.1, 11.0),
    ("mask_rcnn_r50_fpn_gn-all_3x_coco", 50, "(d)", "3x", 36, "20200214-8b23b1e5", 40.5, 36.7, 7.1, None),
    ("mask_rcnn_r101_fpn_gn-all_2x_coco", 101, "(d)", "2x", 24, "20200205-d96b1b50", 41.9, 37.6, 9.9, 9.0),
    ("mask_rcnn_r101_fpn_gn-all_3x_coco", 101, "(d)", "3x", 36, "20200513_181609-0df864f4", 42.1, 38.0, 9.9, None),
    ("mask_rcnn_r50_fpn_gn-all_contrib_2x_coco", 50, "(c)", "2x", 24, "20200207-20d3e849", 40.0, 36.1, 7.1, 10.9),
    ("mask_rcnn_r50_fpn_gn-all_contrib_3x_coco", 50, "(c)", "3x", 36, "20200225-542aefbc", 40.1, 36.2, 7.1, None),
]  # configs/gn/README.md of mmdetection: memory per GPU, inference fps ("-" or empty for the 3x models)

# Detectron's GN models (projects/GN/README.md): detectors trained on coco_2014_train +
# valminusminival (= COCO 2017 train), scored on minival (= val2017); 2x = 180k, 3x = 270k
# iterations of 16 images. Inference speed is the published s/image on one P100, as fps.
_DETECTRON_HOME = dict(
    source_format="detectron", results_source=DETECTRON_RESULTS, epochs=None,
    dataset="COCO 2014 train + valminusminival (= 2017 train; metrics on minival = val2017)",
    hardware="NVIDIA Tesla P100 (Detectron model zoo)",
)
_DETECTRON_RUN = "GN/{id}/04_2018_gn_baselines/{run}/output/train/coco_2014_train%3Acoco_2014_valminusminival/" \
    "generalized_rcnn/model_final.pkl"
_DETECTRON = [
    ("e2e_mask_rcnn_R-50-FPN_2x_gn", 50, "imagenet", "2x", 40.3, 35.7, 10.5, 0.146 + 0.017,
     "48616381", "e2e_mask_rcnn_R-50-FPN_2x_gn_0416.13_23_38.bTlTI97Q"),
    ("e2e_mask_rcnn_R-101-FPN_2x_gn", 101, "imagenet", "2x", 41.8, 36.8, 12.4, 0.180 + 0.015,
     "48616724", "e2e_mask_rcnn_R-101-FPN_2x_gn_0416.13_26_34.GLnri4GR"),
    ("e2e_mask_rcnn_R-50-FPN_3x_gn", 50, "imagenet", "3x", 40.8, 36.1, 10.5, 0.145 + 0.015,
     "48734751", "e2e_mask_rcnn_R-50-FPN_3x_gn_0417.09_54_59.nwCTtPVk"),
    ("e2e_mask_rcnn_R-101-FPN_3x_gn", 101, "imagenet", "3x", 42.3, 37.2, 12.4, 0.180 + 0.014,
     "48734779", "e2e_mask_rcnn_R-101-FPN_3x_gn_0417.09_55_23.HMtcR8wg"),
    ("scratch_e2e_mask_rcnn_R-50-FPN_3x_gn", 50, "scratch", "3x", 39.5, 35.2, 10.8, 0.140 + 0.019, "56421872", None),
    ("scratch_e2e_mask_rcnn_R-101-FPN_3x_gn", 101, "scratch", "3x", 41.0, 36.4, 12.7, 0.177 + 0.019, "56421911", None),
]

MODELS: dict[str, ZooEntry] = {
    **{name: ZooEntry(name, "mmdet", depth, pre, sched, epochs, f"{name}_{stamp}.pth", box, mask, mem, fps)
       for name, depth, pre, sched, epochs, stamp, box, mask, mem, fps in _MMDET},
    **{name: ZooEntry(name=name, depth=depth, pretrain=pre, schedule=f"{sched} (model id {mid})", file=f"{name}.pkl",
                      box_ap=box, mask_ap=mask, train_memory_gb=mem, inference_fps=round(1 / seconds, 1),
                      source_url=DETECTRON_URL + _DETECTRON_RUN.format(id=mid, run=run) if run else None,
                      **_DETECTRON_HOME)
       for name, depth, pre, sched, box, mask, mem, seconds, mid, run in _DETECTRON},
    **{name: ZooEntry(name=name, depth=depth, pretrain="none", schedule=f"ImageNet-1k (model id {mid})",
                      file=f"{name}.pkl", box_ap=None, mask_ap=None, train_memory_gb=None, inference_fps=None,
                      source_url=f"{DETECTRON_URL}ImageNetPretrained/{mid}/{name}.pkl", top1_error=err,
                      task="image-classification",
                      architecture="ResNet with GroupNorm (32 groups), ImageNet classifier",
                      dataset="ImageNet-1k (metrics: validation set, centre crop)", hardware="not published",
                      source_format="detectron", results_source=DETECTRON_RESULTS, epochs=None)
       for name, depth, mid, err in (("R-50-GN", 50, "47261647", 24.0), ("R-101-GN", 101, "47592356", 22.6))},
}


# -- entries of the user's: GNHUB_ZOO_FILE and register() ------------------------------------

_REGISTERED: dict[str, ZooEntry] = {}
_FILE_CACHE: dict[tuple, dict[str, ZooEntry]] = {}
_OPTIONAL = {"depth": int, "box_ap": float, "mask_ap": float, "schedule": str, "epochs": int, "license": str,
             "train_memory_gb": float, "inference_fps": float, "task": str, "pretrain": str, "dataset": str,
             "architecture": str, "hardware": str, "results_source": str, "top1_error": float, "file": str}


def register(name: str, url: str, sha256: str, format: str | None = None, **published) -> ZooEntry:
    """Adds a checkpoint of your own to the registry under `name`: `gnhub.load(name)`, `list`,
    `info` and `fetch` then treat it like a built-in entry. `sha256` is the file's full sha256;
    `format` is "mmdet" or "detectron" (default: by the file's extension); `published` takes
    the facts cards show (box_ap, mask_ap, depth, schedule, license, ...)."""
    entry = _entry({"name": name, "url": url, "sha256": sha256, "format": format, **published}, "register()")
    _REGISTERED[name] = entry
    return entry


def _entry(data, where: str) -> ZooEntry:
    if not isinstance(data, dict):
        raise GnhubError(f"{where}: an entry must be an object with name, url and sha256")
    name = data.get("name")
    label = f"{where}: entry {name!r}" if isinstance(name, str) else f"{where}: an entry"
    if not is_name(name):
        raise GnhubError(f"{label}: name must be 1-96 letters, digits, '.', '_' or '-'")
    if name in MODELS:
        raise GnhubError(f"{label}: is a built-in zoo name; choose another")
    url, sha = data.get("url"), data.get("sha256")
    if not isinstance(url, str) or not re.match(r"https?://[^/]+/.+", url):
        raise GnhubError(f"{label}: url must be an http(s) URL of the checkpoint file")
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha.lower()):
        raise GnhubError(f"{label}: sha256 must be the file's full sha256 (64 hex digits)")
    file = data.get("file", urllib.parse.unquote(urllib.parse.urlparse(url).path.rsplit("/", 1)[-1]))
    if not is_file_name(file):
        raise GnhubError(f"{label}: the file name {file!r} (from {'file' if 'file' in data else 'the url'}) must be a "
                         "plain file name: no folders, no '..', not hidden")
    fmt = data.get("format") or ("detectron" if file.endswith(".pkl") else "mmdet")
    if fmt not in ("mmdet", "detectron"):
        raise GnhubError(f"{label}: format must be mmdet or detectron, not {fmt!r}")
    unknown = sorted(set(data) - {"name", "url", "sha256", "format", *_OPTIONAL})
    if unknown:
        raise GnhubError(f"{label}: unknown fields {unknown}; known: name, url, sha256, format, {', '.join(_OPTIONAL)}")
    extra = {}
    for key, kind in _OPTIONAL.items():
        value = data.get(key)
        if value is None:
            continue
        if kind is str and not isinstance(value, str) or kind is not str and (
                isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int)):
            raise GnhubError(f"{label}: {key} must be {'text' if kind is str else 'a number'}, not {value!r}")
        extra[key] = kind(value)
    if extra.get("pretrain", "unknown") not in ("(d)", "(c)", "imagenet", "scratch", "none", "unknown"):
        raise GnhubError(f"{label}: pretrain must be one of (d), (c), imagenet, scratch, none, unknown")
    defaults = dict(depth=None, pretrain="unknown", schedule="custom", epochs=None, file=file,
                    box_ap=None, mask_ap=None, train_memory_gb=None, inference_fps=None, license="other",
                    results_source=None, dataset="not stated", architecture=ZooEntry.architecture,
                    hardware="not stated")
    return ZooEntry(name=name, source_format=fmt, source_url=url, sha256=sha.lower(), **{**defaults, **extra})


NAME_PATTERN = r"[A-Za-z0-9][\w.\-]{0,95}"  # a zoo name: also a folder name in the cache


def is_name(text: str) -> bool:
    return isinstance(text, str) and re.fullmatch(NAME_PATTERN, text) is not None


def is_file_name(text) -> bool:
    """A plain file name: no folder, no '..', not hidden, nothing a path could escape with."""
    return isinstance(text, str) and re.fullmatch(r"[A-Za-z0-9][\w.\-+=@,]{0,254}", text) is not None


def _file_entries() -> dict[str, ZooEntry]:
    path = zoo_file()
    if not path:
        return {}
    try:
        key = (path, os.stat(path).st_mtime_ns)
    except OSError as e:
        raise GnhubError(f"{path}: cannot read GNHUB_ZOO_FILE ({e.strerror})") from None
    if key not in _FILE_CACHE:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise GnhubError(f"{path}: GNHUB_ZOO_FILE is not readable JSON ({e})") from None
        if not isinstance(data, list):
            raise GnhubError(f"{path}: GNHUB_ZOO_FILE must hold a list of entries")
        entries = [_entry(d, f"{path} (entry {i})") for i, d in enumerate(data)]
        _FILE_CACHE[key] = {e.name: e for e in entries}
    return _FILE_CACHE[key]


def models() -> dict[str, ZooEntry]:
    """Every known model: the built-in zoo, then GNHUB_ZOO_FILE's entries, then register()ed ones."""
    return {**MODELS, **_file_entries(), **_REGISTERED}


def get(name: str) -> ZooEntry | None:
    return models().get(name)


def list_models(pattern: str | None = None) -> list[str]:
    """Names of the zoo models, optionally filtered by an fnmatch pattern, in any case and with or
    without '-' and '_' (so '*r101*' finds mmdetection's r101 and Detectron's R-101 alike)."""
    def plain(text: str) -> str:
        return re.sub(r"[-_]", "", text.lower())

    return sorted(n for n in models() if pattern is None or fnmatch.fnmatchcase(n.lower(), pattern.lower())
                  or fnmatch.fnmatchcase(plain(n), plain(pattern)))


def find_by_file(file_name: str) -> ZooEntry | None:
    """The zoo entry whose published file this is (by name, before any hash suffix)."""
    known = models().values()
    return next((e for e in known if file_name == e.file), None) or next(
        (e for e in sorted(known, key=lambda e: -len(e.name)) if file_name.startswith(e.name + "_")),
        None,
    )


def suggest(name: str) -> list[str]:
    """The zoo names closest to a misspelt one."""
    return difflib.get_close_matches(name, list(models()), n=3, cutoff=0.5)
