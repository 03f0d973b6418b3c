"""The conversion engine: read safely -> pick a converter -> map every tensor -> write the layout."""
from __future__ import annotations

import dataclasses
import datetime
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from . import __version__, zoo
from .checkpoint import atomic_dir, check_input_file, read_torch_checkpoint, sha256_file, write_model_files
from .config import COCO_CLASSES, ModelConfig
from .converters import FORMATS
from .errors import GnhubError
from .modeling.mask_rcnn import with_weights
from .modeling.resnet import STAGE_BLOCKS

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z]+$")


_PLACEHOLDERS = {"i": (r"\d+", None), "p": ("weight|bias", None), "rest": (".+", None)}


class RenameTable:
    """A converter's (source, gnhub) name templates, usable in both directions."""

    def __init__(self, converter):
        holders = {**_PLACEHOLDERS, **getattr(converter, "PLACEHOLDERS", {})}
        self.defaults = {k: v for k, (_, v) in holders.items() if v is not None}
        self.rules = [
            (_compile(src, holders), src, _compile(dst, holders), dst) for src, dst in converter.RENAMES
        ]
        self.dropped = [re.compile(p) for p in converter.DROPPED]

    def to_gnhub(self, key: str) -> str | None:
        for src_re, _, _, dst in self.rules:
            m = src_re.fullmatch(key)
            if m:
                return dst.format(**m.groupdict())
        return None

    def to_source(self, key: str) -> str | None:
        for _, src, dst_re, _ in self.rules:
            m = dst_re.fullmatch(key)
            if m:
                return src.format(**{**self.defaults, **m.groupdict()})
        return None

    def is_dropped(self, key: str) -> bool:
        return any(p.fullmatch(key) for p in self.dropped)


def _compile(template: str, holders: dict) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)
    return re.compile(
        "".join(f"(?P<{p}>{holders[p][0]})" if i % 2 else re.escape(p) for i, p in enumerate(parts))
    )


def map_tensors(source: dict[str, torch.Tensor], converter, where: str):
    """Renames every source tensor by the converter's table: (mapped, dropped names).

    Every tensor is either matched by the converter's DROPPED patterns or renamed; anything
    else, a non-tensor, or two tensors mapped to one name stops the conversion.
    """
    table = RenameTable(converter)
    mapped, dropped, unknown = {}, [], []
    for key, tensor in source.items():
        if table.is_dropped(key):
            dropped.append(key)
            continue
        new = table.to_gnhub(key)
        if new is None:
            unknown.append(key)
            continue
        if new in mapped:
            raise GnhubError(f"{where}: two source tensors map to {new}")
        if not isinstance(tensor, torch.Tensor):
            raise GnhubError(f"{where}: {key} is a {type(tensor).__name__}, not a tensor")
        mapped[new] = tensor
    if unknown:
        more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
        raise GnhubError(
            f"{where}: {len(unknown)} tensors {converter.NAME} conversion does not know: "
            f"{unknown[:8]}{more}; is this a GN Mask R-CNN checkpoint?"
        )
    return mapped, dropped


def infer_config(tensors: dict[str, torch.Tensor], where: str) -> ModelConfig:
    """Depth and number of classes, read off the mapped tensors."""
    blocks = len({k.split(".")[2] for k in tensors if k.startswith("backbone.layer3.")})
    depth = next((d for d, b in STAGE_BLOCKS.items() if b[2] == blocks), None)
    if depth is None:
        raise GnhubError(f"{where}: backbone has {blocks} blocks in stage 4; expected ResNet-50 (6) or -101 (23)")
    cls = tensors.get("roi_heads.box_head.cls_score.weight")
    if cls is None:
        raise GnhubError(f"{where}: no box classifier found; is this a Mask R-CNN checkpoint?")
    config = ModelConfig()
    config.backbone.depth = depth
    num_classes = cls.shape[0] - 1
    if num_classes != len(COCO_CLASSES):
        config.classes = tuple(f"class_{i}" for i in range(num_classes))
    return config


def apply_settings(config: ModelConfig, settings: dict) -> None:
    """Sets preprocess fields and `rpn.*` / `roi.*` test settings from a converter's reading."""
    sections = {"rpn": config.rpn, "roi": config.roi_heads}
    for key, value in settings.items():
        section, _, field = key.rpartition(".")
        setattr(sections[section] if section else config.preprocess, field, value)


def convert(
    src: str | Path,
    out: str | Path | None = None,
    fmt: str = "auto",
    name: str | None = None,
    dtype: str = "float32",
    check_hash: bool = True,
    force: bool = False,
) -> dict:
    """Converts checkpoint `src` into a gnhub model directory; returns a summary dict."""
    start = time.perf_counter()
    path = check_input_file(src)
    if dtype not in DTYPES:
        raise GnhubError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    with ThreadPoolExecutor(1) as pool:  # the source's sha256, while it is read and converted
        source_sha = pool.submit(sha256_file, path)
        try:
            obj = read_torch_checkpoint(path)
        except GnhubError:
            _check_hash(path, source_sha.result(), check_hash)  # a corrupt download says so first
            raise
        return _convert(path, obj, source_sha, out, fmt, name, dtype, check_hash, force, start)


def _check_hash(path: Path, sha: str, check: bool) -> None:
    m = _HASH_IN_NAME.search(path.name)
    if check and m and not sha.startswith(m.group(1)):
        raise GnhubError(
            f"{path}: sha256 {sha[:8]}... does not match the {m.group(1)} in its name; the download "
            "is corrupt or renamed: download it again, or pass --no-check-hash"
        )


def _convert(path, obj, source_sha, out, fmt, name, dtype, check_hash, force, start) -> dict:
    where = str(path)
    converter = _pick(fmt, obj, where)
    source = converter.source_tensors(obj)
    mapped, dropped = map_tensors(source, converter, where)
    version = converter.layout_version(source.keys())
    converter.reorder_classes(mapped, version)
    config = infer_config(mapped, where)

    entry = zoo.find_by_file(path.name)
    settings = converter.meta_settings(obj)
    if "mean" in settings:
        preprocess_from = "checkpoint config"
    elif entry is not None:
        config.preprocess = dataclasses.replace(entry.preprocess)
        preprocess_from = f"gnhub zoo ({entry.name})"
    else:
        preprocess_from = "gnhub default (Detectron BGR means, std 1)"
    apply_settings(config, settings)
    classes = converter.meta_classes(obj)
    if classes and len(classes) == config.num_classes:
        config.classes = tuple(classes)

    config.name = name or (entry.name if entry else _HASH_IN_NAME.sub("", path.name).rsplit(".", 1)[0])
    config.provenance = {
        "source_file": path.name,
        "source_sha256": None,
        "source_format": converter.NAME,
        "source_version": converter.meta_version(obj) or version,
        "source_layout": version,
        "preprocess_from": preprocess_from,
        "dropped_tensors": dropped,
        "converter": f"gnhub {__version__}",
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
    }
    model = with_weights(config, {k: v.to(DTYPES[dtype]) for k, v in mapped.items()}, where)
    dest = Path(out) if out else Path(config.name)
    with atomic_dir(dest, force) as tmp:
        config.provenance["source_sha256"] = source_sha.result()
        _check_hash(path, config.provenance["source_sha256"], check_hash)
        write_model_files(tmp, config, model.state_dict())
    state = model.state_dict()
    return {
        "name": config.name,
        "output": str(dest),
        "format": converter.NAME,
        "source_version": config.provenance["source_version"],
        "depth": config.backbone.depth,
        "classes": config.num_classes,
        "tensors": len(state),
        "dropped": dropped,
        "parameters": sum(t.numel() for t in state.values()),
        "bytes": (dest / "model.safetensors").stat().st_size,
        "preprocess_from": preprocess_from,
        "seconds": round(time.perf_counter() - start, 2),
    }


def _pick(fmt: str, obj, where: str):
    if fmt != "auto":
        if fmt not in FORMATS:
            raise GnhubError(f"unknown format {fmt!r}; choose auto or one of {sorted(FORMATS)}")
        if not FORMATS[fmt].detect(obj):
            raise GnhubError(f"{where}: does not look like a {FORMATS[fmt].DESCRIPTION}")
        return FORMATS[fmt]
    for converter in FORMATS.values():
        if converter.detect(obj):
            return converter
    raise GnhubError(
        f"{where}: not a checkpoint format gnhub knows ({', '.join(c.DESCRIPTION for c in FORMATS.values())})"
    )
