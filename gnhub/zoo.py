"""The registry of known GN models: one entry per published checkpoint, built from the upstream
tables in gnhub/published.py, plus the user's own (GNHUB_ZOO_FILE, register())."""
from __future__ import annotations

import difflib
import fnmatch
import json
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from . import published as P
from .config import BGR_CAFFE, D2_CASCADE, RGB_IMAGENET, ConfigPatch, backbone_words
from .errors import GnhubError
from .frameworks.paddle import CASCADE as PADDLE_CASCADE
from .settings import DEFAULT_ORG, zoo_file

__all__ = ["FORMAT_NAMES", "MODELS", "NAME_PATTERN", "WS_EVERYWHERE", "ZooEntry", "find_by_file", "get",
    "is_file_name", "is_name", "list_models", "models", "register", "suggest"]

WS_EVERYWHERE = ConfigPatch({"backbone.weight_std": True, "fpn.weight_std": True, "roi_heads.box_weight_std": True,
                             "roi_heads.mask_weight_std": True})
FORMAT_NAMES = ("mmdet", "detectron", "detectron2", "paddle")


@dataclass(frozen=True)
class ZooEntry:
    """Every published fact about one checkpoint, and the conventions its upstream config states."""

    name: str
    source_format: str  # the converter: mmdet, detectron, detectron2 or paddle
    family: str  # "gn", "gn+ws", "scratch" (trained without ImageNet), "imagenet" (a backbone)
    detector: str  # "mask-rcnn", "faster-rcnn", "panoptic-fpn" (a Mask R-CNN with a semantic head) or "classifier"
    backbone: str  # "R-50", "R-101", "X-50-32x4d", "X-101-32x4d" (None for a user's entry: "?")
    pretrain: str  # "(d)" Detectron backbone, "(c)" contributed, "ws" JHU's GN+WS, "imagenet", "scratch", "none"
    schedule: str
    epochs: int | None
    file: str  # the file name gnhub expects (Detectron's detectors are all model_final.pkl upstream)
    url: str | None  # the upstream download (None: none published)
    box_ap: float | None
    mask_ap: float | None
    train_memory_gb: float | None = None  # per GPU, as published
    inference_fps: float | None = None  # as published (mmdetection's GN table, Detectron's s/image)
    inference_ms: float | None = None  # as published (mmdetection's metafiles, detectron2's s/im)
    train_s_per_iter: float | None = None  # as published (detectron2)
    pq: float | None = None  # panoptic quality (COCO panoptic val2017), as published (detectron2's Panoptic FPN)
    dataset: str = "COCO 2017 (train2017; metrics on val2017)"
    hardware: str = "not published"
    license: str = "apache-2.0"
    results_source: str | None = None
    top1_error: float | None = None  # ImageNet classifiers, centre crop, as published
    sha256: str | None = None  # the source file's full sha256, where pinned (registered entries)
    citations: tuple[str, ...] = ("gn",)  # keys of published.CITATIONS, the family's framework added by cards
    conventions: ConfigPatch = field(default_factory=ConfigPatch)  # where the upstream config says more

    @property
    def backbone_norm(self) -> str:
        """The backbone's norm: "GN", or "FrozenBN" (GN in the FPN and heads only)."""
        return self.conventions.get("backbone.norm", "GN")

    @property
    def depth(self) -> int | None:
        m = re.search(r"-(\d+)", self.backbone)
        return int(m.group(1)) if m else None

    @property
    def task(self) -> str:
        return {"mask-rcnn": "instance-segmentation", "panoptic-fpn": "instance-segmentation",
                "faster-rcnn": "object-detection"}.get(
            self.detector, "image-classification")

    @property
    def architecture(self) -> str:
        if self.detector == "classifier":
            return f"{backbone_words(self.backbone)} with GroupNorm (32 groups), ImageNet classifier"
        c = self.conventions
        stages = len(c.get("roi_heads.box_stds", ())) // 4
        if self.detector == "panoptic-fpn":  # detectron2's: cascade 2fc heads, deformable GN backbone
            return (f"Panoptic FPN, {backbone_words(self.backbone)}-FPN with GroupNorm in the backbone, FPN, mask "
                    f"and semantic heads, deformable convolutions, Cascade R-CNN ({stages} x 2fc"
                    f" box head without norm, {c.get('roi_heads.mask_num_convs', 4)}-conv mask head)")
        detector = {"mask-rcnn": "Mask R-CNN", "faster-rcnn": "Faster R-CNN"}[self.detector]
        if c.get("fpn.norm") == "none":  # GN in the heads only (detectron2's X152)
            return (f"{'Cascade ' if stages > 1 else ''}{detector}, {backbone_words(self.backbone)}-FPN: FrozenBN "
                    f"backbone{' with deformable convolutions' if any(c.get('backbone.deform_stages', ())) else ''}"
                    f", FPN without norm, GroupNorm heads ({stages} x 4conv1fc box head, "
                    f"{c.get('roi_heads.mask_num_convs', 4)}-conv mask head)")
        norm = "GroupNorm and Weight Standardization in every conv layer" if self.family == "gn+ws" else \
            "GroupNorm everywhere" if self.backbone_norm == "GN" else \
            "frozen BatchNorm backbone, GroupNorm in FPN and heads"
        return (f"{'Cascade ' if stages > 1 else ''}{detector}, {backbone_words(self.backbone)}-FPN with {norm} "
                f"({f'{stages} x 4conv1fc box heads' if stages > 1 else '4conv1fc box head'})")

    @property
    def sha256_prefix(self) -> str | None:
        m = re.search(r"-([0-9a-f]{8})\.pth$", self.file)
        return m.group(1) if m else None

    @property
    def settings(self) -> ConfigPatch:
        """The conventions the entry's upstream config states: a file's own config, where it has
        one, overrides them."""
        if self.source_format == "mmdet":
            return (BGR_CAFFE if self.pretrain == "(d)" else RGB_IMAGENET) | self.conventions
        if self.source_format == "detectron2":
            return BGR_CAFFE | self.conventions  # detectron2's PIXEL_MEAN / PIXEL_STD defaults
        return self.conventions

    @property
    def pretrain_text(self) -> str:
        return {"(d)": "ImageNet {b}-GN backbone converted from Detectron (d)",
                "(c)": "ImageNet {b}-GN backbone contributed to mmdetection (c)",
                "ws": "ImageNet {b} GN+WS backbone from JHU (open-mmlab://jhu)",
                "imagenet": "Detectron's ImageNet {b}-GN backbone",
                "paddle": "PaddleDetection's ImageNet {b} backbone (ResNet50_cos_pretrained, BatchNorm)",
                "in5k": "FAIR's ImageNet-5k {b} backbone (FrozenBN; catalog://ImageNetPretrained/FAIR/X-152-32x8d-IN5k)",
                "scratch": "none: trained from scratch",
                "none": "trained on ImageNet-1k from scratch",
                "unknown": "not stated"}[self.pretrain].format(b=self.backbone)

    @property
    def results_text(self) -> str:
        if self.top1_error is not None:
            return f"top-1 error {self.top1_error}%"
        return (f"box AP {self.box_ap}" + (f"  mask AP {self.mask_ap}" if self.mask_ap is not None else "")
                + (f"  PQ {self.pq}" if self.pq is not None else ""))

    def hub_repo(self, org: str = DEFAULT_ORG) -> str:
        return f"{org}/{self.name}"

    @property
    def expected_sha256(self) -> str | None:
        """What the source file's sha256 must be (or start with): the pinned one, else the
        prefix published in the file name (mmdetection's); None where nothing is published."""
        return self.sha256 or self.sha256_prefix


def _mmdet_gn() -> list[ZooEntry]:
    return [ZooEntry(name, "mmdet", "gn", "mask-rcnn", f"R-{depth}", pre, sched, epochs, f"{name}_{stamp}.pth",
                     P.MMDET_GN_URL.format(name=name, file=f"{name}_{stamp}.pth"), box, mask, mem, fps,
                     hardware="NVIDIA V100 (mmdetection v2.0 benchmark; upstream marks memory and speed as outdated)",
                     results_source=P.MMDET_GN_RESULTS)
            for name, depth, pre, sched, epochs, stamp, box, mask, mem, fps in P.MMDET_GN]


def _mmdet_gn_ws() -> list[ZooEntry]:
    return [ZooEntry(name, "mmdet", "gn+ws", name.split("_rcnn")[0].replace("_", "-") + "-rcnn", backbone, "ws",
                     name.split("ws-all_")[1].removesuffix("_coco"), epochs, f"{name}_{stamp}.pth",
                     P.MMDET_GN_WS_URL.format(name=name, file=f"{name}_{stamp}.pth"), box, mask, mem,
                     inference_ms=ms, hardware="8x NVIDIA V100 (mmdetection metafile)",
                     results_source=P.MMDET_GN_WS_RESULTS, citations=("gn", "ws"), conventions=WS_EVERYWHERE)
            for name, backbone, epochs, stamp, box, mask, mem, ms in P.MMDET_GN_WS]


def _mmdet_scratch() -> list[ZooEntry]:
    return [ZooEntry(name, "mmdet", "scratch", name.split("_rcnn")[0].replace("_", "-") + "-rcnn", "R-50", "scratch",
                     "6x", epochs, file, P.MMDET_SCRATCH_URL.format(name=name, file=file), box, mask,
                     hardware="8x NVIDIA V100 (mmdetection metafile; no memory or speed published)",
                     results_source=P.MMDET_SCRATCH_RESULTS, citations=("gn", "rethinking"),
                     conventions=ConfigPatch({"train.frozen_stages": 0, "train.norm_decay_mult": 0.0}))
            for name, epochs, file, box, mask in P.MMDET_SCRATCH]


def _detectron() -> list[ZooEntry]:
    home = dict(dataset="COCO 2014 train + valminusminival (= 2017 train; metrics on minival = val2017)",
                hardware="NVIDIA Tesla P100 (Detectron model zoo)", results_source=P.DETECTRON_RESULTS)
    detectors = [
        ZooEntry(name, "detectron", "scratch" if pre == "scratch" else "gn", "mask-rcnn", f"R-{depth}", pre,
                 f"{sched} (model id {mid})", None, f"{name}.pkl",
                 P.DETECTRON_URL + P.DETECTRON_RUN.format(id=mid, run=run) if run else None, box, mask, mem,
                 round(1 / seconds, 1), citations=("gn", "rethinking") if pre == "scratch" else ("gn",), **home)
        for name, depth, pre, sched, box, mask, mem, seconds, mid, run in P.DETECTRON]
    backbones = [
        ZooEntry(name, "detectron", "imagenet", "classifier", f"R-{depth}", "none", f"ImageNet-1k (model id {mid})",
                 None, f"{name}.pkl", f"{P.DETECTRON_URL}ImageNetPretrained/{mid}/{name}.pkl", None, None,
                 top1_error=err, dataset="ImageNet-1k (metrics: validation set, centre crop)",
                 results_source=P.DETECTRON_RESULTS)
        for name, depth, mid, err in P.DETECTRON_IMAGENET]
    return detectors + backbones


def _detectron2() -> list[ZooEntry]:
    return [ZooEntry(name, "detectron2", "scratch" if name.startswith("scratch") else "gn", "mask-rcnn", "R-50",
                     "scratch" if name.startswith("scratch") else "imagenet", f"{sched} (model id {mid})", None, file,
                     P.DETECTRON2_URL.format(name=name, id=mid, file=file), box, mask, mem,
                     inference_ms=round(1000 * seconds, 1), train_s_per_iter=train,
                     hardware="8 NVIDIA V100 GPUs with NVLink (Big Basin servers, detectron2 MODEL_ZOO.md)",
                     results_source=P.DETECTRON2_RESULTS,
                     citations=("gn", "rethinking") if name.startswith("scratch") else ("gn",),
                     conventions=ConfigPatch(changes))
            for name, sched, train, seconds, mem, box, mask, mid, file, changes in P.DETECTRON2] + [
        _detectron2_x152(), _detectron2_panoptic()]


def _detectron2_x152() -> ZooEntry:
    name, seconds, mem, box, mask, mid, file = P.DETECTRON2_X152
    return ZooEntry(name, "detectron2", "gn", "mask-rcnn", "X-152-32x8d", "in5k", f"40k-iter (model id {mid})",
                    None, file, P.DETECTRON2_URL.format(name=name, id=mid, file=file), box, mask, mem,
                    inference_ms=round(1000 * seconds, 1),
                    hardware="8 NVIDIA V100 GPUs with NVLink (Big Basin servers, detectron2 MODEL_ZOO.md)",
                    results_source=P.DETECTRON2_RESULTS, citations=("gn", "cascade", "dcn"),
                    conventions=D2_CASCADE | ConfigPatch({
                        "backbone.norm": "FrozenBN", "backbone.deform_stages": (False, True, True, True),
                        "fpn.norm": "none", "roi_heads.mask_num_convs": 8}))


def _detectron2_panoptic() -> ZooEntry:
    name, seconds, mem, box, mask, pq, mid, file = P.DETECTRON2_PANOPTIC
    return ZooEntry(name, "detectron2", "gn", "panoptic-fpn", "R-101", "imagenet", f"3x (model id {mid})", None,
                    file, P.DETECTRON2_URL.format(name=name, id=mid, file=file), box, mask, mem, pq=pq,
                    inference_ms=round(1000 * seconds, 1),
                    dataset="COCO 2017 panoptic (train2017; metrics on val2017)",
                    hardware="8 NVIDIA V100 GPUs with NVLink (Big Basin servers, detectron2 MODEL_ZOO.md)",
                    results_source=P.DETECTRON2_RESULTS, citations=("gn", "cascade", "dcn"),
                    conventions=D2_CASCADE | ConfigPatch({
                        "backbone.deform_stages": (False, True, True, True), "roi_heads.num_convs": 0,
                        "roi_heads.num_fcs": 2}))


def _paddle() -> list[ZooEntry]:
    return [ZooEntry(name, "paddle", "gn", detector, "R-50", "paddle", "2x", 24, f"{name}.pdparams",
                     P.PADDLE_URL.format(name=name), box, mask, results_source=P.PADDLE_RESULTS,
                     citations=("gn", "cascade") if name.startswith("cascade") else ("gn",),
                     conventions=ConfigPatch({"backbone.norm": "FrozenBN",
                                              **(PADDLE_CASCADE if name.startswith("cascade") else {})}))
            for name, detector, box, mask in P.PADDLE]


MODELS: dict[str, ZooEntry] = {e.name: e for e in (*_mmdet_gn(), *_mmdet_gn_ws(), *_mmdet_scratch(), *_detectron(),
                                                    *_detectron2(), *_paddle())}


# -- entries of the user's: GNHUB_ZOO_FILE and register() ------------------------------------

_REGISTERED: dict[str, ZooEntry] = {}
_FILE_CACHE: dict[tuple, dict[str, ZooEntry]] = {}
_OPTIONAL = {"backbone": str, "box_ap": float, "mask_ap": float, "schedule": str, "epochs": int, "license": str,
             "train_memory_gb": float, "inference_fps": float, "inference_ms": float, "detector": str,
             "pretrain": str, "dataset": str, "hardware": str, "results_source": str, "top1_error": float,
             "file": str, "family": str}


def register(name: str, url: str, sha256: str, format: str | None = None, **published) -> ZooEntry:
    """Adds a checkpoint of your own to the registry under `name`: `gnhub.load(name)`, `list`,
    `info` and `fetch` then treat it like a built-in entry. `sha256` is the file's full sha256;
    `format` is "mmdet", "detectron" or "detectron2" (default: mmdet for .pth, detectron for
    .pkl); `published` takes the facts cards show (box_ap, mask_ap, backbone, schedule, ...) and
    `settings`, config fields by path ({"preprocess.std": ...}) its conversion uses."""
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
    fmt = data.get("format") or {".pkl": "detectron", ".pdparams": "paddle"}.get(Path(file).suffix, "mmdet")
    if fmt not in FORMAT_NAMES:
        raise GnhubError(f"{label}: format must be one of {', '.join(FORMAT_NAMES)}, not {fmt!r}")
    if "depth" in data and "backbone" not in data:  # the older way to say it
        data = {**{k: v for k, v in data.items() if k != "depth"},
                "backbone": f"R-{data['depth']}" if isinstance(data["depth"], int) else data["depth"]}
    unknown = sorted(set(data) - {"name", "url", "sha256", "format", "settings", *_OPTIONAL})
    if unknown:
        raise GnhubError(f"{label}: unknown fields {unknown}; known: name, url, sha256, format, settings, "
                         f"{', '.join(_OPTIONAL)}")
    settings = data.get("settings") or {}
    if not isinstance(settings, dict):
        raise GnhubError(f'{label}: settings must be an object of config fields, e.g. {{"rpn.nms_iou": 0.7}}')
    extra = {}
    for key, kind in _OPTIONAL.items():
        value = data.get(key)
        if value is None:
            continue
        if kind is str and not isinstance(value, str) or kind is not str and (
                isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int)):
            raise GnhubError(f"{label}: {key} must be {'text' if kind is str else 'a number'}, not {value!r}")
        extra[key] = kind(value)
    for key, choices in (("pretrain", ("(d)", "(c)", "ws", "imagenet", "scratch", "none", "unknown")),
                         ("detector", ("mask-rcnn", "faster-rcnn", "classifier")),
                         ("family", ("gn", "gn+ws", "scratch", "imagenet"))):
        if key in extra and extra[key] not in choices:
            raise GnhubError(f"{label}: {key} must be one of {', '.join(choices)}")
    defaults = dict(family="gn", detector="mask-rcnn", backbone="?", pretrain="unknown", schedule="custom",
                    epochs=None, file=file, box_ap=None, mask_ap=None, license="other", dataset="not stated")
    return ZooEntry(name=name, source_format=fmt, url=url, sha256=sha.lower(),
                    conventions=ConfigPatch(settings, f"{label}: settings"), **{**defaults, **extra})


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


def list_models(pattern: str | None = None, family: str | None = None, detector: str | None = None,
                backbone: str | None = None, source_format: str | None = None) -> list[str]:
    """Names of the zoo models, optionally filtered by an fnmatch pattern (in any case, with or
    without '-' and '_': '*r101*' finds mmdetection's r101 and Detectron's R-101 alike), family
    (gn, gn+ws, scratch, imagenet), detector (mask, faster, classifier), backbone (R-50, R-101,
    X-50-32x4d, X-101-32x4d) and source format (mmdet, detectron, detectron2)."""
    def plain(text: str) -> str:
        return re.sub(r"[-_]", "", text.lower())

    def chosen(e: ZooEntry) -> bool:
        return ((pattern is None or fnmatch.fnmatchcase(e.name.lower(), pattern.lower())
                 or fnmatch.fnmatchcase(plain(e.name), plain(pattern)))
                and (family is None or e.family == family.lower())
                and (detector is None or e.detector.startswith(detector.lower()))
                and (backbone is None or plain(e.backbone) == plain(backbone))
                and (source_format is None or e.source_format == source_format))

    return sorted(n for n, e in models().items() if chosen(e))


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
