"""The conversion engine: read safely -> pick a converter -> map every tensor -> write the layout."""
from __future__ import annotations

import datetime
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from . import __version__, zoo
from .config import COCO_CLASSES, COCO_PANOPTIC_STUFF, IMAGENET_CLASSES, ModelConfig, backbone_words
from .converters import RenameTable
from .errors import GnhubError
from .layout import new_model_dir
from .modeling import DTYPES, with_weights
from .modeling.resnet import STAGE_BLOCKS
from .source import HASH_IN_NAME, open_source
from .verify import verify_conversion
from .weights import write_model_files, write_results

__all__ = ["convert", "infer_config", "map_tensors"]


def map_tensors(source: dict[str, torch.Tensor], converter, where: str, layout: str | None = None):
    """Renames every source tensor by the converter's table: (mapped, dropped names).

    Every tensor (each one checked by `open_source`) is either matched by the converter's DROPPED
    patterns (or those of `layout`), empty (None), or renamed; anything else, or two tensors mapped
    to one name, stops the conversion.
    """
    table = RenameTable(converter, layout)
    mapped, dropped, unknown = {}, [], []
    for key, tensor in source.items():
        if tensor is None or table.is_dropped(key):
            dropped.append(key)
            continue
        new = table.to_gnhub(key)
        if new is None:
            unknown.append(key)
            continue
        if new in mapped:
            raise GnhubError(f"{where}: two source tensors map to {new}")
        mapped[new] = tensor
    if unknown:
        more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
        raise GnhubError(
            f"{where}: {len(unknown)} tensors {converter.NAME} conversion does not know: "
            f"{unknown[:8]}{more}; is this a GN Mask R-CNN checkpoint?"
        )
    return mapped, dropped


def infer_config(tensors: dict[str, torch.Tensor], where: str) -> ModelConfig:
    """What the mapped tensors say: depth, ResNeXt groups and width, the backbone's and FPN's norms,
    its deformable stages, the task (a mask head or none, or an ImageNet classifier), the convs, fcs
    and fc width of the box head, the mask head's convs, the number of classes and a semantic head's labels."""
    blocks = len({k.split(".")[2] for k in tensors if k.startswith("backbone.layer3.")})
    depth = next((d for d, b in STAGE_BLOCKS.items() if b[2] == blocks), None)
    if depth is None:
        raise GnhubError(f"{where}: backbone has {blocks} blocks in stage 4; expected ResNet-50 (6), -101 (23) or "
                         "-152 (36)")
    config = ModelConfig()
    config.backbone.depth = depth
    if "backbone.gn1.running_var" in tensors:  # batch statistics: a FrozenBatchNorm backbone
        config.backbone.norm = "FrozenBN"
    config.backbone.deform_stages = tuple(f"backbone.layer{i}.0.conv2_offset.weight" in tensors for i in range(1, 5))
    if "fpn.lateral.0.conv.bias" in tensors:  # FPN convs with biases have no norm after them
        config.fpn.norm = "none"
    conv2 = tensors.get("backbone.layer1.0.conv2.weight")
    if conv2 is not None and conv2.ndim == 4 and conv2.shape[1] and conv2.shape[0] % conv2.shape[1] == 0:
        groups = conv2.shape[0] // conv2.shape[1]  # (width, width / groups, 3, 3)
        if groups > 1:  # ResNeXt: width = 64 * base_width / 64 * groups at the first stage
            config.backbone.groups, config.backbone.base_width = groups, conv2.shape[0] // groups
    if "fc.weight" in tensors:  # a backbone with its ImageNet classifier
        config.task = "image-classification"
        num_classes, known = tensors["fc.weight"].shape[0], IMAGENET_CLASSES
    elif "roi_heads.box_head.cls_score.weight" in tensors:
        for field, head in (("num_convs", "box_head"), ("mask_num_convs", "mask_head")):
            convs = len({k.split(".")[3] for k in tensors if k.startswith(f"roi_heads.{head}.convs.")})
            setattr(config.roi_heads, field, convs if head == "box_head" else convs or config.roi_heads.mask_num_convs)
        config.roi_heads.num_fcs = 2 if "roi_heads.box_head.fc2.weight" in tensors else 1
        config.roi_heads.fc_channels = tensors["roi_heads.box_head.cls_score.weight"].shape[1]  # FC_DIM
        semantic = tensors.get("sem_seg_head.predictor.weight")
        if semantic is not None:  # Panoptic FPN: label 0 gathers the things
            n = semantic.shape[0]
            config.semantic.classes = COCO_PANOPTIC_STUFF if n == len(COCO_PANOPTIC_STUFF) else (
                "things", *(f"stuff_{i}" for i in range(1, n)))
            config.semantic.channels = semantic.shape[1]
            if "sem_seg_head.branches.0.0.conv.bias" in tensors:
                config.semantic.norm = "none"
        num_classes, known = tensors["roi_heads.box_head.cls_score.weight"].shape[0] - 1, COCO_CLASSES
        if not any(k.startswith("roi_heads.mask_head.") for k in tensors):
            config.task = "object-detection"  # a Faster R-CNN
    else:
        raise GnhubError(f"{where}: no box classifier or ImageNet classifier found; is this a GN Mask R-CNN "
                         "or a GN ResNet checkpoint?")
    config.classes = known if num_classes == len(known) else tuple(f"class_{i}" for i in range(num_classes))
    return config


def convert(
    src: str | Path,
    out: str | Path | None = None,
    *,
    fmt: str = "auto",
    name: str | None = None,
    dtype: str = "float32",
    check_hash: bool = True,
    force: bool = False,
    verify: bool = True,
    strict: bool = False,
    log=lambda msg: None,
    source_sha256: str | None = None,
    owned=None,
) -> dict:
    """Converts checkpoint `src` into a gnhub model directory; returns a summary dict.

    With `verify`, the converted model is compared stage by stage with an independent forward
    of the source on the built-in images; the directory gets verification.json and
    golden.safetensors, and a failed comparison writes nothing and raises. NaN or Inf weights
    are refused (a corrupt file), or only reported through `log` without `verify` or `strict`.
    `source_sha256`: the source's digest where already known (not hashed again); `owned(dest)`:
    what `force` may replace (default: a gnhub model directory).
    """
    start = time.perf_counter()
    if dtype not in DTYPES:
        raise GnhubError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    with ThreadPoolExecutor(1) as pool:  # the source's sha256, while it is read and converted
        source = open_source(src, fmt, check_hash, pool, source_sha256, name)
        where, converter = str(source.path), source.converter
        for note in source.notes:
            log(f"warning: {where}: {note}")
        version = source.layout
        mapped, dropped = map_tensors(source.tensors, converter, where, version)
        converter.reorder_classes(mapped, version)
        classes = converter.meta_classes(source.obj)
        source_version = converter.meta_version(source.obj) or version
        config = infer_config(mapped, where)
        entry = source.entry
        if entry and (entry.backbone not in ("?", config.backbone.name)  # "?": a registered entry may not say
                      or (entry.name in zoo.MODELS and entry.task != config.task)):
            raise GnhubError(f"{where}: named like zoo model {entry.name} ({backbone_words(entry.backbone)}, "
                             f"{entry.task}) but holds a {config.backbone.words} {config.task} model; wrong or "
                             "renamed file")
        corrupt = f"{where}: corrupt: NaN or Inf values in"
        bad: list[str] = []
        if (strict or verify) and (bad := sorted(k for k, v in mapped.items() if not _finite(v))):  # refused
            why = " (refused because of `strict=True`)" if strict else (
                "; such a checkpoint cannot verify: download it again, or convert it with `verify=False` to keep them")
            raise GnhubError(f"{corrupt} {len(bad)} tensors: {bad[:5]}{why}")
        source.settings.apply(config)
        if classes and len(classes) == config.num_classes:
            config.classes = tuple(classes)
        config.name = name or (entry.name if entry else HASH_IN_NAME.sub("", source.path.name).rsplit(".", 1)[0])
        config.provenance = {
            "source_file": source.path.name,
            "source_sha256": None,
            "source_format": converter.NAME,
            "source_version": source_version,
            "source_layout": version,
            "preprocess_from": source.preprocess_from,
            "dropped_tensors": dropped,
            "converter": f"gnhub {__version__}",
            "torch": torch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        }
        model = with_weights(config, {k: v.to(DTYPES[dtype]) for k, v in mapped.items()}, where)
        dest = Path(out) if out else Path(config.name)
        with new_model_dir(dest, force, owned) as tmp:  # checks the output first
            if verify:
                report, golden = verify_conversion(source, model, log)
                write_results(tmp, report, golden)
            scan = None if verify or strict else lambda k: _finite(mapped[k]) or bad.append(k)  # while hashing
            write_model_files(tmp, config, model.state_dict(), each=scan,
                              before_config=lambda: config.provenance.update(source_sha256=source.checked_sha256()))
        if bad:
            bad.sort()
            log(f"warning: {corrupt} {len(bad)} tensors: {bad[:5]}")
    state = model.state_dict()
    return {
        "name": config.name,
        "output": str(dest),
        "format": converter.NAME,
        "source_version": config.provenance["source_version"],
        "architecture": config.architecture,
        "task": config.task,
        "backbone": config.backbone.name,
        "depth": config.backbone.depth,
        "classes": config.num_classes,
        "tensors": len(state),
        "dropped": dropped,
        "parameters": sum(t.numel() for t in state.values()),
        "bytes": (dest / "model.safetensors").stat().st_size,
        "preprocess_from": source.preprocess_from,
        "verified": report.passed if verify else None,
        "nonfinite": bad,
        "seconds": round(time.perf_counter() - start, 2),
    }


def _finite(t: torch.Tensor) -> bool:
    """No NaN or Inf. A sum (one pass, no temporary) propagates both; only when it is not finite
    (or overflows) are the elements checked, in chunks. numpy sums where it can: it runs on one
    thread, so no OpenMP worker spins beside the writer and the hasher (torch's sum cost 4x more)."""
    if not t.is_floating_point():
        return True
    if np.isfinite(t.numpy().sum()) if t.dtype != torch.bfloat16 else torch.isfinite(t.sum()):
        return True
    return all(bool(torch.isfinite(c).all()) for c in t.reshape(-1).split(1 << 20))

