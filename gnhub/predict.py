"""Batch prediction over files, folders and globs: overlay PNGs and COCO-format results."""
from __future__ import annotations

import glob
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import rle
from .draw import overlay, panoptic_overlay
from .errors import GnhubError
from .files import LEDGER, TMP_PREFIX, Folder
from .images import load_image
from .panoptic_format import id_png, segments_json

__all__ = ["above", "detections_json", "expand_inputs", "IMAGE_SUFFIXES", "load_predictor", "PANOPTIC_FILE", "predict",
    "predict_files", "RESULTS_FILE", "SCORE_THRESHOLD"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns -> image paths, in order."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            paths += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            paths.append(p)
        elif glob.has_magic(item):
            paths += sorted(Path(f) for f in glob.glob(item, recursive=True) if Path(f).is_file())
        else:
            raise GnhubError(f"{item}: no such image, folder or matching pattern")
    if not paths:
        raise GnhubError(f"no images found in {' '.join(inputs)}")
    return paths


RESULTS_FILE = "results.json"
PANOPTIC_FILE = "panoptic.json"  # a panoptic model's: COCO panoptic predictions, {"annotations": [...]}
WHOLE_IMAGE = ("sem_seg", "panoptic_seg", "segments")  # a panoptic result's parts that are not per detection


def check_out_dir(out_dir: Path) -> None:
    """Checks `--out` before any work, creating nothing: a new folder (its parent writable), an
    empty one, or an earlier `gnhub predict` output (a folder with gnhub's ledger of what it wrote;
    files.py). Nothing gnhub did not write there is ever replaced."""
    out_dir = Path(out_dir)
    if not os.path.lexists(out_dir):
        parent = next((p for p in out_dir.absolute().parents if p.exists()), None)
        if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise GnhubError(f"{out_dir}: cannot be created (its folder is missing or not writable); choose another "
                             "--out")
        return
    if out_dir.is_symlink() or not out_dir.is_dir():
        raise GnhubError(f"{out_dir}: exists and is not a folder; choose another --out")
    try:
        tempfile.TemporaryFile(dir=out_dir).close()
    except OSError as e:
        raise GnhubError(f"{out_dir}: cannot write there ({e.strerror}); choose another --out") from None
    names = {n for n in os.listdir(out_dir) if not n.startswith(TMP_PREFIX)}
    if names and LEDGER not in names:
        raise GnhubError(f"{out_dir}: exists and is not an empty folder or an earlier gnhub predict output; "
                         "choose another --out")


def above(result: dict, threshold: float) -> dict:
    """The detections of a result scoring at least `threshold` (torch or numpy alike); a panoptic
    result's whole-image parts as they are."""
    keep = [i for i, s in enumerate(result["scores"].tolist()) if s >= threshold]
    return {k: v[keep] if len(keep) < len(v) and k not in WHOLE_IMAGE else v for k, v in result.items()}


def detections_json(result: dict, classes: tuple[str, ...], image_id) -> list[dict]:
    """COCO results format: bbox as [x, y, w, h], segmentation (where there are masks) as
    compressed RLE."""
    out = []
    masks = np.asarray(result["masks"]) if "masks" in result else [None] * len(result["boxes"])
    for box, score, label, mask in zip(
        result["boxes"].tolist(), result["scores"].tolist(), result["labels"].tolist(), masks
    ):
        x0, y0, x1, y1 = box
        row = {"image_id": image_id, "category_id": label, "category": classes[label],
               "bbox": [round(v, 3) for v in (x0, y0, x1 - x0, y1 - y0)], "score": round(score, 5)}
        if mask is not None:
            row["segmentation"] = rle.encode(mask)
        out.append(row)
    return out


SCORE_THRESHOLD = 0.3  # what predict draws and writes by default: mmdetection's demo (--pred-score-thr)


def load_predictor(model: str | Path, device: str = "cpu", dtype: str = "float32", runtime: str = "torch",
                   settings=None):
    """What `predict` and `evaluate` run: a GNModel in `dtype` on `device`, or (`runtime="onnx"`)
    an exported model on onnxruntime, which imports no torch (float32; "auto" is float32 there).
    float16 on a CPU is refused: with no half-precision CPU kernels it ran 12x slower than float32
    here. "auto": see gnhub.precision."""
    if runtime == "onnx":
        if device not in (None, "cpu") or dtype not in ("float32", "auto"):
            raise GnhubError("`runtime=onnx` runs float32 on onnxruntime's CPU provider; drop `device` and `dtype`")
        # onnxruntime, no torch: `runtime="onnx"` runs without it
        from .runtime import load

        return load(model, settings=settings)
    # torch only for the PyTorch runtime
    from .api import check_device, load

    if dtype == "float16" and check_device(device or "cpu").type == "cpu":
        raise GnhubError("`dtype=float16` on the CPU runs about 12x slower than float32 (no half-precision CPU "
                         "kernels); use float32 there, or bfloat16 on CPUs with AVX512-BF16 or AMX")
    return load(model, device=device or "cpu", settings=settings, dtype=dtype)


def predict(model: str | Path, inputs: list[str], *, out: str | Path = "predictions", batch_size: int = 1,
            device: str = "cpu", dtype: str = "float32", runtime: str = "torch",
            score_threshold: float = SCORE_THRESHOLD, settings=None, progress=None) -> dict:
    """`gnhub predict`: the images of `inputs` (files, folders, glob patterns) through `model`
    (anything gnhub.load takes, or an export with runtime "onnx"), written to `out` (see
    predict_files). Inputs and `out` are checked before the model loads."""
    if not 0 <= score_threshold <= 1:
        raise GnhubError(f"`score_threshold={score_threshold}`: expected a score from 0 to 1")
    paths = expand_inputs(inputs)
    check_out_dir(Path(out))
    predictor = load_predictor(model, device, dtype, runtime, settings)
    summary = predict_files(predictor, paths, Path(out), batch_size, progress, score_threshold)
    return {**summary, "dtype": dtype_of(predictor)}


def dtype_of(predictor) -> str:
    """The dtype a predictor computes in: a GNModel's, float32 for an ONNX export."""
    dtype = getattr(predictor, "dtype", None)
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def predict_files(
    model,
    paths: list[Path],
    out_dir: Path,
    batch_size: int = 1,
    progress: Callable[[int, float, int], None] | None = None,
    score_threshold: float = SCORE_THRESHOLD,
) -> dict:
    """`model`: a GNModel or a gnhub.runtime.OnnxPredictor. Writes <stem>.png (overlay) and
    <stem>.json per image and results.json for all: the detections scoring at least
    `score_threshold`. A panoptic model also writes <stem>_panoptic.png (segment ids as
    panopticapi's RGB) and panoptic.json (COCO panoptic predictions of all images); its overlay
    shows the panoptic segments and <stem>.json holds its record under "panoptic".
    For a classifier, <stem>.json and results.json hold the top classes and
    their scores. `image_id` is the file name, made unique like the output files (a second x.png
    is x_2.png). Files gnhub did not write in `out_dir`, and the input images, are never
    replaced: their names are skipped as a second x.png is, and so are gnhub's own (an image
    results.png is written as results_2.png). One predict at a time writes into a folder.

    Unreadable images are skipped and listed; `progress(images done, images/s, images in all)` is
    called after each batch; returns a summary.
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    with Folder(out_dir, "--out", hold=True) as folder:  # one predict at a time in a folder
        return _predict_into(folder, model, paths, batch_size, progress, score_threshold)


def _predict_into(folder: Folder, model, paths, batch_size, progress, score_threshold) -> dict:
    out_dir = folder.path
    panoptic = getattr(model.config, "panoptic", False)
    for name in (RESULTS_FILE, PANOPTIC_FILE) if panoptic else (RESULTS_FILE,):
        if not folder.owns(name):
            raise GnhubError(f"{out_dir / name}: not gnhub's (or changed since gnhub wrote it); choose another "
                             "--out")
    inputs = {p.resolve() for p in paths}

    def taken(stem: str) -> bool:  # a name gnhub may not write: not its own, an input, or one of its own names
        outputs = [out_dir / f"{stem}{ext}" for ext in (".png", ".json", "_panoptic.png")[:3 if panoptic else 2]]
        return (f"{stem}.json" in (RESULTS_FILE, PANOPTIC_FILE) or any(p.name == LEDGER or p.resolve() in inputs
                                                      or not folder.owns(p.name) for p in outputs))

    used: set[str] = set()
    # every output name decided before any is written; a name like gnhub's temporaries gets a "_" first
    stems = [_unique("_" + p.stem if p.stem.startswith(TMP_PREFIX) else p.stem, used, taken) for p in paths]
    classes = model.config.classes
    results, skipped, written, records = [], [], [], []
    start = time.perf_counter()
    for i in range(0, len(paths), batch_size):
        chunk, images = [], []
        for p, stem in zip(paths[i : i + batch_size], stems[i : i + batch_size]):
            try:
                images.append(load_image(p))
                chunk.append((p, stem))
            except GnhubError as e:
                skipped.append(str(e))
        preds = model.predict(images, batch_size=batch_size) if images else []
        for (p, stem), rgb, pred in zip(chunk, images, preds):
            image_id = stem + p.suffix  # unique: a second x.png (from another folder) is x_2.png
            extra = {}
            if model.task == "image-classification":
                dets = [{"image_id": image_id, "category_id": label, "category": classes[label], "score": round(s, 5)}
                        for label, s in zip(pred["labels"].tolist(), pred["scores"].tolist())]
            else:
                if panoptic:  # before the score threshold: segments name detections by their index
                    seg = np.asarray(pred["panoptic_seg"])
                    extra["panoptic"] = segments_json(seg, pred["segments"], classes, model.config.semantic.classes,
                                                      image_id, f"{stem}_panoptic.png", pred["scores"].tolist())
                    records.append(extra["panoptic"])
                    folder.write(f"{stem}_panoptic.png", id_png(seg))
                    picture = panoptic_overlay(rgb, pred, classes, model.config.semantic.classes)
                pred = above(pred, score_threshold)
                dets = detections_json(pred, classes, image_id)
                picture = picture if panoptic else overlay(rgb, pred, classes)
                folder.write(f"{stem}.png", lambda f, picture=picture: picture.save(f, format="PNG"))
            text = json.dumps({"image": str(p), "image_id": image_id, "detections": dets, **extra}, indent=1)
            folder.write(f"{stem}.json", text.encode("utf-8"))
            results += dets
            written.append(stem)
        if progress:
            progress(len(paths[i : i + batch_size]), len(written) / (time.perf_counter() - start), len(paths))
    if not written:
        raise GnhubError(f"nothing was predicted: all {len(paths)} images were skipped ({skipped[0]})")
    folder.write(RESULTS_FILE, json.dumps(results).encode("utf-8"))
    if panoptic:
        folder.write(PANOPTIC_FILE, json.dumps({"annotations": records}).encode("utf-8"))
    seconds = time.perf_counter() - start
    return {
        "task": model.task,
        "images": len(written),
        "skipped": skipped,
        "detections": len(results),
        "out": str(out_dir),
        "images_per_second": round(len(written) / seconds, 3) if seconds else None,
    }


def _unique(stem: str, used: set[str], taken=lambda name: False) -> str:
    """`stem`, or `stem_2`, `stem_3`, ...: the first not used yet and not `taken`."""
    name, n = stem, 1
    while name in used or taken(name):
        n += 1
        name = f"{stem}_{n}"
    used.add(name)
    return name
