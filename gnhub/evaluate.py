"""COCO evaluation: predictions over a COCO-format dataset, box and mask AP with pycocotools.

Resumable (results are appended to a JSON-lines file per image) and data-parallel under
`torchrun`: each rank takes every WORLD_SIZE-th image, rank 0 merges the parts and scores them.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import time
from pathlib import Path

from . import zoo
from .errors import GnhubError
from .layout import check_output_file, write_atomic
from .modeling import GNMaskRCNN
from .predict import detections_json

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _coco(annotations: str | Path):
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise GnhubError("COCO evaluation needs pycocotools: pip install 'gnhub[coco]'") from None
    path = Path(annotations)
    if not path.is_file():
        raise GnhubError(f"{path}: no such annotation file")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(path))
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise GnhubError(f"{path}: not a COCO-format annotation file ({e})") from None


def category_ids(classes: tuple[str, ...], coco) -> list[int | None]:
    """COCO category id of each model label, matched by name (spaces and underscores alike);
    None for classes the annotations do not have (their detections are not scored)."""
    norm = {c["name"].replace("_", " ").lower(): c["id"] for c in coco.loadCats(coco.getCatIds())}
    ids = [norm.get(c.replace("_", " ").lower()) for c in classes]
    if all(i is None for i in ids):
        raise GnhubError(f"the annotations name none of the model's classes ({', '.join(classes[:5])}, ...); "
                         "are they for this model?")
    return ids


def score(coco, results: list[dict]) -> dict:
    """Box and mask AP (AP, AP50, AP75, small/medium/large) of COCO-format results."""
    from pycocotools.cocoeval import COCOeval

    metrics = {}
    for iou_type, key in (("bbox", "box"), ("segm", "mask")):
        if not results:
            metrics[key] = dict.fromkeys(METRICS, 0.0)
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            dets = coco.loadRes([dict(r) for r in results])
            e = COCOeval(coco, dets, iou_type)
            e.evaluate()
            e.accumulate()
            e.summarize()
        metrics[key] = {m: round(float(v), 4) for m, v in zip(METRICS, e.stats[:6])}
    return metrics


def evaluate(model: GNMaskRCNN, images: str | Path, annotations: str | Path, results: str | Path | None = None,
             batch_size: int = 1, progress=None) -> dict:
    """Runs `model` on every annotated image and returns {"box": {...}, "mask": {...}, ...}.

    With `results` (a .json path), detections are also written there; per-image progress is
    kept in `<results>.parts/` so an interrupted run resumes where it stopped.
    """
    if model.task != "instance-segmentation":
        raise GnhubError(f"{model.config.name}: is an ImageNet classifier; COCO evaluation needs a Mask R-CNN")
    coco = _coco(annotations)
    cat_ids = category_ids(model.config.classes, coco)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    results_path = check_results(results) if results else None
    parts = results_path.with_name(results_path.name + ".parts") if results_path else None
    if parts:
        parts.mkdir(parents=True, exist_ok=True)
    part = parts / f"rank{rank}.jsonl" if parts else None
    done = _read_parts([part]) if part and part.exists() else {}
    if done:  # rewrite with complete rows only, so appends never follow a line cut by an interrupt
        part.write_text("".join(json.dumps({"image_id": i, "detections": d}) + "\n" for i, d in done.items()),
                        encoding="utf-8")
    image_ids = sorted(coco.getImgIds())[rank::world]
    todo = [i for i in image_ids if i not in done]
    start, n = time.perf_counter(), 0
    for k in range(0, len(todo), batch_size):
        chunk = todo[k:k + batch_size]
        paths = [Path(images) / coco.imgs[i]["file_name"] for i in chunk]
        preds = model.predict(paths, batch_size=batch_size)
        for image_id, pred in zip(chunk, preds):
            dets = []
            for d in detections_json(pred, model.config.classes, image_id):
                d.pop("category")
                d["category_id"] = cat_ids[d["category_id"]]
                if d["category_id"] is not None:
                    dets.append(d)
            done[image_id] = dets
            if part:
                with open(part, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"image_id": image_id, "detections": dets}) + "\n")
        n += len(chunk)
        if progress:
            progress(len(chunk))
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        if rank != 0:
            return {}
        done = _read_parts(sorted(parts.glob("rank*.jsonl")))
    all_results = [d for i in sorted(done) for d in done[i]]
    if results_path:
        write_atomic(results_path, lambda t: t.write_text(json.dumps(all_results), encoding="utf-8"), "--results")
    metrics = score(coco, all_results)
    metrics["images"] = len(done)
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    metrics["images_per_second"] = round(n / metrics["seconds"], 3) if n and metrics["seconds"] else None
    entry = zoo.get(model.config.name)
    if entry and entry.box_ap is not None and entry.mask_ap is not None:
        metrics["published"] = {"box": {"AP": entry.box_ap / 100}, "mask": {"AP": entry.mask_ap / 100}}
    return metrics


def check_results(results: str | Path) -> Path:
    """The results path, checked before any work: writable, and where it or its `.parts/`
    folder exist, gnhub's own (a JSON list; rank*.jsonl files), never a user's file replaced."""
    path = check_output_file(results, "--results")
    parts = path.with_name(path.name + ".parts")
    if path.is_file():
        try:
            ours = isinstance(json.loads(path.read_text(encoding="utf-8")), list)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            ours = False
        if not ours:
            raise GnhubError(f"{path}: exists and is not a COCO results file gnhub wrote; choose another --results")
    if parts.exists() and not (parts.is_dir() and all(p.is_file() and p.match("rank*.jsonl")
                                                      for p in parts.iterdir())):
        raise GnhubError(f"{parts}: exists and is not gnhub's resume folder; choose another --results")
    return path


def _read_parts(paths) -> dict[int, list[dict]]:
    done = {}
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by an interrupt: redo that image
                continue
            done[row["image_id"]] = row["detections"]
    return done
