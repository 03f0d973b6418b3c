"""COCO evaluation: predictions over a COCO-format dataset, box and mask AP with pycocotools, and
a panoptic model's PQ where COCO panoptic annotations are given (gnhub.pq).

The annotations are checked completely before any model runs (a panoptic PNG's segment ids and
areas as its image is scored). Resumable: each rank appends its images' detections (and PQ counts)
to `<results>.parts/rankN.jsonl` beside `run.json`, which names the run (the model's fingerprint,
the annotations' sha256, the image folder, the panoptic annotations' sha256 and PNG folder); a
resume must be the same run, and an existing results file is replaced only where `run.json` says
gnhub wrote exactly it.
Data-parallel under torchrun: each rank takes every WORLD_SIZE-th image, rank 0 merges and scores.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import time
from pathlib import Path

import numpy as np

from . import distributed, zoo
from .coco import Instances, pycoco, read_instances
from .errors import GnhubError
from .files import append_line, check_output_file, is_owned_tree, new_dir, sha256_file, write_file
from .panoptic_format import categories, segments_json
from .pq import Panoptic, add_counts, category_map, image_counts, read_panoptic, summarize
from .predict import detections_json

__all__ = ["METRICS", "RUN_FILE", "category_ids", "check_results", "default_results", "evaluate", "evaluate_model",
    "score"]

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
RUN_FILE = "run.json"  # in <results>.parts/: which run the parts belong to


def category_ids(classes: tuple[str, ...], coco) -> list[int | None]:
    """COCO category id of each model label, matched by name (spaces and underscores alike);
    None for classes the annotations do not have (their detections are not scored)."""
    norm = {c["name"].replace("_", " ").lower(): c["id"] for c in coco.loadCats(coco.getCatIds())}
    ids = [norm.get(c.replace("_", " ").lower()) for c in classes]
    if all(i is None for i in ids):
        raise GnhubError(f"the annotations name none of the model's classes ({', '.join(classes[:5])}, ...); "
                         "are they for this model?")
    return ids


def score(coco, results: list[dict], masks: bool = True) -> dict:
    """Box AP (and, with `masks`, mask AP): AP, AP50, AP75 and small/medium/large of COCO-format
    results."""
    # pycocotools is optional: only scoring needs it
    from pycocotools.cocoeval import COCOeval

    metrics = {}
    for iou_type, key in (("bbox", "box"), ("segm", "mask"))[: 2 if masks else 1]:
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


def default_results(model) -> Path:
    """`NAME_coco_results.json` in the current directory, NAME the model's own."""
    return Path(re.sub(r"[^\w.\-]", "_", model.config.name) + "_coco_results.json")


def evaluate_model(model: str | Path, *, images: str | Path, annotations: str | Path, results: str | Path | None = None,
                   batch_size: int = 1, device: str | None = None, dtype: str = "float32", runtime: str = "torch",
                   settings=None, progress=None, panoptic_annotations: str | Path | None = None,
                   panoptic_images: str | Path | None = None) -> dict:
    """`gnhub eval`: the results path and the annotations (instances, and panoptic ones with their
    PNGs where given: read_panoptic) are checked before `model` (anything gnhub.load takes, or an
    export with runtime "onnx") loads, in `dtype` on `device` (under torchrun, each rank's), then
    `evaluate`; results default to `default_results(model)`."""
    # torch (the predictor, the process group) only when a model runs
    from .distributed import join
    from .predict import dtype_of, load_predictor

    if results:
        check_results(results)
    instances = read_instances(annotations, masks=False)  # masks are required once the model is known
    if panoptic_images is not None and panoptic_annotations is None:
        raise GnhubError("`panoptic_images` is the PNG folder of `panoptic_annotations`: give both, or neither")
    panoptic = read_panoptic(panoptic_annotations, panoptic_images, instances.images) if panoptic_annotations else None
    predictor = load_predictor(model, join(device) if runtime == "torch" else device, dtype, runtime, settings)
    metrics = evaluate(predictor, images=images, annotations=instances, results=results or default_results(predictor),
                       batch_size=batch_size, progress=progress, panoptic_annotations=panoptic)
    return metrics and {**metrics, "dtype": dtype_of(predictor)}


def evaluate(model, *, images: str | Path, annotations: str | Path | Instances, results: str | Path | None = None,
             batch_size: int = 1, progress=None, panoptic_annotations: str | Path | Panoptic | None = None,
             panoptic_images: str | Path | None = None) -> dict:
    """Runs `model` (a GNModel or a gnhub.runtime.OnnxPredictor) on every annotated image and
    returns {"box": {...}, "mask": {...}, ...}; with `panoptic_annotations` (COCO panoptic JSON,
    its PNGs in `panoptic_images`: read_panoptic) and a panoptic model, also "panoptic": {"All",
    "Things", "Stuff": {"PQ", "SQ", "RQ", "categories"}} of the images they annotate, of the
    segments `gnhub predict` writes.

    With `results` (a .json path), detections are also written there; per-image progress is
    kept in `<results>.parts/` so an interrupted run resumes where it stopped.
    """
    if model.task == "image-classification":
        raise GnhubError(f"{model.config.name}: is an ImageNet classifier; COCO evaluation needs a detector")
    masks = model.task == "instance-segmentation"
    instances = annotations if isinstance(annotations, Instances) else read_instances(annotations, masks)
    if masks:
        instances.require_masks()
    coco = pycoco(instances)
    cat_ids = category_ids(model.config.classes, coco)
    panoptic = panoptic_annotations
    if panoptic is not None and not isinstance(panoptic, Panoptic):
        panoptic = read_panoptic(panoptic, panoptic_images, instances.images)
    if panoptic is not None:
        if not getattr(model.config, "panoptic", False):
            raise GnhubError(f"{model.config.name}: is not a panoptic model (no semantic head); PQ "
                             "(`panoptic_annotations`) needs a Panoptic FPN")
        panoptic_cats = category_map(panoptic, categories(model.config.classes, model.config.semantic.classes))
    images = Path(images)
    missing = [im["file_name"] for im in instances.images.values() if not (images / im["file_name"]).is_file()]
    if missing:
        raise GnhubError(f"{images / missing[0]}: no such image ({len(missing)} of the {len(instances.images)} images "
                         f"of {instances.path} are missing); check --images")
    rank, world = distributed.rank_world()
    parts = _start(Path(results), _identity(model, instances, images, panoptic), rank) if results else None
    done = _resume(parts, rank, instances, panoptic is not None) if parts else {}
    todo = [i for i in sorted(instances.images)[rank::world] if i not in done]
    start, n = time.perf_counter(), 0
    for k in range(0, len(todo), batch_size):
        chunk = todo[k:k + batch_size]
        preds = model.predict([images / instances.images[i]["file_name"] for i in chunk], batch_size=batch_size)
        for image_id, pred in zip(chunk, preds):
            dets = []
            for d in detections_json(pred, model.config.classes, image_id):
                d.pop("category")
                d["category_id"] = cat_ids[d["category_id"]]
                if d["category_id"] is not None:
                    dets.append(d)
            done[image_id] = {"detections": dets}
            if panoptic is not None:
                done[image_id]["pq"] = _pq_counts(model, panoptic, panoptic_cats, image_id, pred)
            if parts:
                append_line(parts / f"rank{rank}.jsonl", json.dumps({"image_id": image_id, **done[image_id]}) + "\n",
                            "--results")
        n += len(chunk)
        if progress:
            progress(len(chunk))
    if world > 1:
        distributed.barrier()
        if rank != 0:
            return {}
        done = _read_parts(parts, instances, panoptic is not None)
    all_results = [d for i in sorted(done) for d in done[i]["detections"]]
    if results:
        _finish(Path(results), parts, all_results)
    metrics = score(coco, all_results, masks)
    if panoptic is not None:
        counts = {}
        for i in sorted(done):
            add_counts(counts, done[i].get("pq", {}))
        metrics["panoptic"] = {kind: {k: v if k == "categories" else round(v, 4) for k, v in row.items()}
                               for kind, row in summarize(panoptic, counts).items()}
    metrics["images"] = len(done)
    metrics["results"] = str(results) if results else None
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    metrics["images_per_second"] = round(n / metrics["seconds"], 3) if n and metrics["seconds"] else None
    entry = zoo.get(model.config.name)
    if entry and entry.box_ap is not None:
        metrics["published"] = {k: {"AP": ap / 100} for k, ap in (("box", entry.box_ap), ("mask", entry.mask_ap))
                                if ap is not None}
        if panoptic is not None and entry.pq is not None:
            metrics["published"]["panoptic"] = {"PQ": entry.pq / 100}
    return metrics


def _pq_counts(model, panoptic: Panoptic, cats: dict[int, int], image_id: int, pred: dict) -> dict:
    """The image's PQ counts (image_counts), of the segments `gnhub predict` writes; {} where the
    panoptic annotations leave the image out."""
    if image_id not in panoptic.annotations:
        return {}
    seg = np.asarray(pred["panoptic_seg"])
    record = segments_json(seg, pred["segments"], model.config.classes, model.config.semantic.classes, image_id, "")
    return image_counts(panoptic, image_id, seg, record["segments_info"], cats)


def check_results(results: str | Path) -> Path:
    """The results path, checked before any work: writable, and where it or its `.parts/` folder
    exist, gnhub's own, as the ledgers record them (files.py: the results file, run.json and
    rank*.jsonl files, by content); a user's file is never replaced."""
    path = check_output_file(results, "--results")
    parts = _parts_of(path)
    if os.path.lexists(parts):
        if not is_owned_tree(parts):
            raise GnhubError(f"{parts}: exists and is not gnhub's resume folder; choose another --results")
        _read_run(parts)
    return path


def _parts_of(path: Path) -> Path:
    return path.with_name(path.name + ".parts")


def _read_run(parts: Path) -> dict:
    try:
        run = json.loads((parts / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        run = None
    if not isinstance(run, dict) or run.get("gnhub_eval") != 1:
        raise GnhubError(f"{parts}: holds no readable {RUN_FILE}, so its results cannot be told apart from another "
                         "run's; choose another --results")
    return run


def _identity(model, instances: Instances, images: Path, panoptic: Panoptic | None) -> dict:
    """What makes two evaluations the same run (a run without PQ has no panoptic annotations)."""
    return {"model": model.fingerprint(), "annotations": sha256_file(instances.path),
            "images": str(images.resolve()),
            "panoptic_annotations": sha256_file(panoptic.path) if panoptic else None,
            "panoptic_images": str(panoptic.folder.resolve()) if panoptic else None}


def _start(path: Path, identity: dict, rank: int) -> Path:
    """The resume folder of this run: created by rank 0 (the others wait), or an earlier one of
    the same run; anything else is refused, naming --results."""
    parts = _parts_of(path)
    if rank == 0:
        check_results(path)
        if not os.path.lexists(parts):
            with new_dir(parts, False, "a resume folder") as tmp:  # appears with its run.json, or not at all
                run = {"gnhub_eval": 1, **identity, "results_sha256": None}
                (tmp / RUN_FILE).write_text(json.dumps(run, indent=1), encoding="utf-8")
    distributed.barrier()
    run = _read_run(parts)
    changed = [k for k in identity if run.get(k) != identity[k]]
    if changed:
        raise GnhubError(f"{path}: holds the results of another evaluation (other {', '.join(changed)}); choose "
                         f"another --results, or remove {path.name} and {parts.name}/ to start over")
    return parts


def _resume(parts: Path, rank: int, instances: Instances, pq: bool) -> dict:
    """Rows (detections, and with `pq` PQ counts) of the images any rank has done; this rank's file
    keeps complete rows only, so appends never follow a line cut by an interrupt."""
    done = _read_parts(parts, instances, pq)
    own = _read_parts(parts, instances, pq, f"rank{rank}.jsonl")
    if own:
        text = "".join(json.dumps({"image_id": i, **row}) + "\n" for i, row in own.items())
        write_file(parts / f"rank{rank}.jsonl", text.encode("utf-8"), "--results", log=True)
    distributed.barrier()  # no rank reads a file while its rank rewrites it
    return done


def _read_parts(parts: Path, instances: Instances, pq: bool, pattern: str = "rank*.jsonl") -> dict[int, dict]:
    done = {}
    for path in sorted(parts.glob(pattern)):
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise GnhubError(f"{path}: not a file gnhub wrote (not UTF-8 at byte {e.start}); remove "
                             f"{parts.name}/ to start over, or choose another --results") from None
        for line in text.splitlines():
            try:
                row = json.loads(line)
                image_id, dets = row["image_id"], row["detections"]
                if pq and not isinstance(row["pq"], dict):
                    continue
            except (json.JSONDecodeError, TypeError, KeyError):  # a line cut short by an interrupt: redo it
                continue
            if image_id not in instances.images or not isinstance(dets, list):
                raise GnhubError(f"{path}: holds image {image_id!r}, which {instances.path} does not declare; "
                                 "it is not this run's: remove the folder to start over")
            done[image_id] = {"detections": dets, **({"pq": row["pq"]} if pq else {})}
    return done


def _finish(path: Path, parts: Path, all_results: list[dict]) -> None:
    """Writes the results and records in run.json that gnhub wrote exactly them."""
    text = json.dumps(all_results)
    run = _read_run(parts)
    run["results_sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    write_file(parts / RUN_FILE, json.dumps(run, indent=1).encode("utf-8"), "--results")
    write_file(path, text.encode("utf-8"), "--results")
