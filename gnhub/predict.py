"""Batch prediction over files, folders and globs: overlay PNGs and COCO-format results."""
from __future__ import annotations

import glob
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from . import rle
from .draw import overlay
from .errors import GnhubError
from .modeling import GNModel
from .modeling.transform import load_image

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


def detections_json(result: dict, classes: tuple[str, ...], image_id) -> list[dict]:
    """COCO results format: bbox as [x, y, w, h], segmentation as compressed RLE."""
    out = []
    for box, score, label, mask in zip(
        result["boxes"].tolist(), result["scores"].tolist(), result["labels"].tolist(), result["masks"].numpy()
    ):
        x0, y0, x1, y1 = box
        out.append({
            "image_id": image_id,
            "category_id": label,
            "category": classes[label],
            "bbox": [round(v, 3) for v in (x0, y0, x1 - x0, y1 - y0)],
            "score": round(score, 5),
            "segmentation": rle.encode(mask),
        })
    return out


def predict_files(
    model: GNModel,
    paths: list[Path],
    out_dir: Path,
    batch_size: int = 1,
    progress: Callable[[int, float], None] | None = None,
) -> dict:
    """Writes <stem>.png (overlay) and <stem>.json per image and results.json for all; for a
    classifier, <stem>.json and results.json hold the top classes and their scores.

    Unreadable images are skipped and listed; `progress(images done, images/s)` is called after
    each batch; returns a summary.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GnhubError(f"{out_dir}: cannot create the output folder ({e.strerror})") from None
    classes = model.config.classes
    results, skipped, written = [], [], []
    used: set[str] = set()
    start = time.perf_counter()
    for i in range(0, len(paths), batch_size):
        chunk, images = [], []
        for p in paths[i : i + batch_size]:
            try:
                images.append(load_image(p))
                chunk.append(p)
            except GnhubError as e:
                skipped.append(str(e))
        preds = model.predict(images, batch_size=batch_size) if images else []
        for p, rgb, pred in zip(chunk, images, preds):
            stem = _unique(p.stem, used)
            if model.task == "image-classification":
                dets = [{"image_id": p.name, "category_id": label, "category": classes[label], "score": round(s, 5)}
                        for label, s in zip(pred["labels"].tolist(), pred["scores"].tolist())]
            else:
                dets = detections_json(pred, classes, p.name)
                picture = overlay(rgb, pred, classes)
                _atomic_write(out_dir / f"{stem}.png", lambda t, picture=picture: picture.save(t, format="PNG"))
            text = json.dumps({"image": str(p), "detections": dets}, indent=1)
            _atomic_write(out_dir / f"{stem}.json", lambda t, text=text: t.write_text(text, encoding="utf-8"))
            results += dets
            written.append(stem)
        if progress:
            progress(len(paths[i : i + batch_size]), len(written) / (time.perf_counter() - start))
    _atomic_write(out_dir / "results.json", lambda t: t.write_text(json.dumps(results), encoding="utf-8"))
    seconds = time.perf_counter() - start
    return {
        "images": len(written),
        "skipped": skipped,
        "detections": len(results),
        "out": str(out_dir),
        "images_per_second": round(len(written) / seconds, 3) if seconds else None,
    }


def _unique(stem: str, used: set[str]) -> str:
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}_{n}"
    used.add(name)
    return name


def _atomic_write(path: Path, write) -> None:
    """`write(tmp)` then rename; a failed write (disk full) leaves no partial file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise GnhubError(f"{path}: writing failed ({e.strerror}); free some space or choose another --out") from None
