"""`gnhub finetune`: mmdetection's recipe for the GN Mask R-CNN configs (SGD, linear warm-up,
step decay, flip, aspect-ratio groups), checkpoints with an exact resume, DDP under torchrun, and
a gnhub model directory as the result."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.nn.parallel import DistributedDataParallel

from .. import __version__, distributed
from ..api import load
from ..cards import write_card
from ..coco import read_instances
from ..compare import golden_of
from ..errors import GnhubError
from ..evaluate import evaluate
from ..files import LEDGER, TMP_PREFIX, Folder, append_line, foreign, sha256_file
from ..layout import GOLDEN_FILE, check_model_output, new_model_dir
from ..modeling import GNMaskRCNN
from ..weights import save_safetensors, write_model_files
from .data import CocoInstances, epoch_batches, flips

__all__ = ["CHECKPOINT", "LOG", "Recipe", "Schedule", "finetune", "finetune_model"]

CHECKPOINT = "checkpoint.safetensors"
LOG = "log.jsonl"


@dataclass
class Recipe:
    """mmdetection's schedule for these models (2x: 24 epochs, lr x0.1 after epochs 16 and 22),
    its learning rate scaled to the total batch (0.02 per 16 images)."""

    epochs: int = 24
    iterations: int | None = None  # instead of epochs
    batch_size: int = 2  # images per device and step
    accumulate: int = 1  # batches per optimizer step
    lr: float | None = None  # default 0.02 x total batch / 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    steps: tuple[int, ...] | None = None  # epochs (or iterations) after which lr *= gamma
    gamma: float = 0.1
    flip: float = 0.5
    seed: int = 0
    amp: str | None = None  # "bf16" or "fp16"
    checkpoint_every: int = 500  # iterations
    val_every: int = 0  # epochs; 0: only at the end

    def check(self) -> None:
        ints = {"epochs": 1, "batch_size": 1, "accumulate": 1, "warmup_iters": 0, "checkpoint_every": 1,
                "val_every": 0}
        for name, low in ints.items():
            if getattr(self, name) < low:
                raise GnhubError(f"`{name}` must be at least {low}")
        if self.iterations is not None and self.iterations < 1:
            raise GnhubError("`iterations` must be at least 1")
        if (self.lr is not None and not 0 < self.lr < 10) or not 0 <= self.flip <= 1:
            raise GnhubError("`lr` must be in (0, 10) and `flip` in [0, 1]")
        if self.amp not in (None, "bf16", "fp16"):
            raise GnhubError(f"`amp={self.amp}`: choose bf16 or fp16")


class Schedule:
    """The learning rate of each iteration: linear warm-up (mmengine's LinearLR from
    warmup_ratio) and step decay (MultiStepLR), as a closed form of the iteration."""

    def __init__(self, recipe: Recipe, iters_per_epoch: int, world: int):
        self.total_batch = recipe.batch_size * recipe.accumulate * world
        self.base = recipe.lr if recipe.lr is not None else 0.02 * self.total_batch / 16
        by_iter = recipe.iterations is not None
        self.total = recipe.iterations if by_iter else recipe.epochs * iters_per_epoch
        unit = 1 if by_iter else iters_per_epoch
        length = recipe.iterations if by_iter else recipe.epochs
        steps = recipe.steps if recipe.steps is not None else tuple(round(length * f) for f in (16 / 24, 22 / 24))
        self.steps = tuple(s * unit for s in steps)
        self.warmup, self.ratio, self.gamma = recipe.warmup_iters, recipe.warmup_ratio, recipe.gamma

    def lr(self, it: int) -> float:
        warm = self.ratio + (1 - self.ratio) * min(it, self.warmup) / self.warmup if self.warmup else 1.0
        return self.base * warm * self.gamma ** sum(it >= s for s in self.steps)


def finetune_model(model: str | Path, *, train_annotations, train_images, out: Path, recipe: Recipe | None = None,
                   train_panoptic: tuple | None = None, val: tuple | None = None, work_dir: Path | None = None,
                   resume: bool = False, force: bool = False,
                   device: str | None = None, name: str | None = None, settings=None, progress=None,
                   log=lambda msg: None) -> dict:
    """`gnhub finetune`: the recipe checked, the process group joined under torchrun, `model`
    (anything gnhub.load takes) loaded on this rank's device, then `finetune`."""
    (recipe or Recipe()).check()
    device = distributed.join(device)
    base = load(model, device=device, settings=settings)
    return finetune(base, train_annotations=train_annotations, train_images=train_images, out=out, recipe=recipe,
                    train_panoptic=train_panoptic, val=val, work_dir=work_dir, resume=resume, force=force,
                    device=device, name=name,
                    base_name=str(model), progress=progress, log=log)


def finetune(base: GNMaskRCNN, *, train_annotations, train_images, out: Path, recipe: Recipe | None = None,
             train_panoptic: tuple | None = None, val: tuple | None = None, work_dir: Path | None = None,
             resume: bool = False, force: bool = False,
             device: str = "cpu", name: str | None = None, base_name: str | None = None, progress=None,
             log=lambda msg: None) -> dict:
    """Fine-tunes `base` on a COCO-format dataset and writes a gnhub model directory to `out`.

    Checkpoints and the JSON-lines log go to `work_dir` (default OUT.train/); with `resume` the
    run continues from its checkpoint exactly as if it had not stopped. A Panoptic FPN needs
    `train_panoptic`, (COCO panoptic JSON, its PNG folder or None) of the training images, for
    its semantic labels. `val` is (annotations,
    images) for box and mask AP at the end (and every recipe.val_every epochs). Under torchrun
    each rank trains on its shard and rank 0 writes. Returns a summary (empty on other ranks).
    """
    cpu = torch.device(device).type == "cpu"
    flush = cpu and torch.set_flush_denormal(True)  # first, before any thread pool: denormals make CPU training crawl
    try:
        with contextlib.ExitStack() as held:
            return _finetune(base, train_annotations, train_images, train_panoptic, out, recipe, val, work_dir,
                             resume, force, device,
                             name, base_name, progress, log, held)
    finally:
        if flush:
            torch.set_flush_denormal(False)


def _finetune(base, train_annotations, train_images, train_panoptic, out, recipe, val, work_dir, resume, force,
              device, name,
              base_name, progress, log, held: contextlib.ExitStack) -> dict:
    recipe = recipe or Recipe()
    recipe.check()
    out = Path(out)
    work = Path(work_dir) if work_dir else out.with_name(out.name + ".train")
    rank, world = distributed.rank_world()
    if recipe.amp == "fp16" and torch.device(device).type != "cuda":
        raise GnhubError("`amp=fp16` needs a GPU; on a CPU use `amp=bf16`")
    check_model_output(out, force)
    _check_apart(out, work)
    base.check_trainable()
    if base.config.panoptic and train_panoptic is None:
        raise GnhubError(f"{base.config.name}: a Panoptic FPN trains on semantic labels too: give the training images' "
                         "COCO panoptic annotations with --train-panoptic (panoptic_train2017.json)")
    if train_panoptic is not None and not base.config.panoptic:
        raise GnhubError(f"{base.config.name}: has no semantic head; --train-panoptic is for a Panoptic FPN")
    stuff = base.config.semantic.classes
    dataset = CocoInstances(train_annotations, train_images, base.config.task == "instance-segmentation",
                            (*train_panoptic, stuff) if train_panoptic is not None else None)
    if val is not None:
        _check_val(val, dataset)
    _check_work_dir(work, resume)
    distributed.barrier()  # every rank has checked the work directory before rank 0 writes to it
    device = torch.device(device)
    origin = {"base_model": base_name or base.config.name, "base_sha256": base.config.weights_sha256,
              "dataset_sha256": sha256_file(dataset.path)}
    if dataset.panoptic is not None:
        origin["panoptic_sha256"] = sha256_file(dataset.panoptic.path)
    provenance = dict(base.config.provenance)
    model = base if base.config.classes == dataset.classes else base.with_classes(
        dataset.classes, torch.Generator(base.device).manual_seed(recipe.seed))
    model = copy.deepcopy(model).to(device, torch.float32)  # `base` itself stays as it is
    model.freeze_stages()
    landscape = [s.width >= s.height for s in dataset.samples]
    per_epoch = len(epoch_batches(landscape, recipe.batch_size, recipe.seed, 0, rank, world)) // recipe.accumulate
    if per_epoch < 1:
        raise GnhubError(f"{dataset.path}: {len(dataset)} trainable images make no step of "
                         f"{recipe.batch_size * recipe.accumulate} per device; lower --batch-size or --accumulate")
    schedule = Schedule(recipe, per_epoch, world)
    optimizer = torch.optim.SGD(_param_groups(model, recipe.weight_decay), lr=schedule.lr(0),
                                momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    scaler = torch.amp.GradScaler(device.type) if recipe.amp == "fp16" else None
    identity = {"recipe": dataclasses.asdict(recipe), "dataset_sha256": origin["dataset_sha256"],
                "base_sha256": origin["base_sha256"], "base_config_sha256": _config_digest(base.config),
                "classes": list(dataset.classes), "world": world,
                **({"panoptic_sha256": origin["panoptic_sha256"]} if dataset.panoptic is not None else {})}
    # rank 0 holds the work directory for the run: a second run there is one error
    folder = held.enter_context(Folder(work, "--work-dir", hold=True)) if rank == 0 else None
    if rank == 0:
        _check_work_dir(work, resume)  # again, now that no other gnhub run can write there
    if resume and (work / CHECKPOINT).is_file():
        start = _restore(work, folder, model, optimizer, scaler, identity)
    else:
        if resume:
            log(f"{work}: no checkpoint yet (the run stopped before its first): starting from the beginning")
        start = 0
        if rank == 0:
            _clear(folder)
    distributed.barrier()
    module = model  # its forward gives the losses, given targets
    if world > 1:
        module = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    log(f"{len(dataset)} images, {len(dataset.classes)} classes; {schedule.total} iterations of "
        f"{schedule.total_batch} images, lr {schedule.base:g}" + (f", resuming at iteration {start}" if start else ""))
    amp = (torch.autocast(device.type, dtype=torch.bfloat16 if recipe.amp == "bf16" else torch.float16)
           if recipe.amp else contextlib.nullcontext())
    it, stepping, metrics, began = start, False, {}, time.perf_counter()
    try:
        while it < schedule.total:
            epoch = it // per_epoch
            batches = epoch_batches(landscape, recipe.batch_size, recipe.seed, epoch, rank, world)
            k = it - epoch * per_epoch
            chunk = batches[k * recipe.accumulate:(k + 1) * recipe.accumulate]
            for group in optimizer.param_groups:
                group["lr"] = schedule.lr(it)
            terms: dict[str, float] = {}
            for j, idx in enumerate(chunk):
                images, targets = [], []
                for i, flip in zip(idx, flips(recipe.seed, epoch, idx, recipe.flip)):
                    rgb, target = dataset.load(i, flip)
                    images.append(rgb)
                    targets.append(target)
                generator = torch.Generator().manual_seed(recipe.seed * 1_000_003 + it * 64 + j)
                sync = world > 1 and j < len(chunk) - 1
                with module.no_sync() if sync else contextlib.nullcontext(), amp:
                    losses = module(images, targets, generator=generator)
                total = sum(losses.values()) / len(chunk)
                if not torch.isfinite(total):
                    raise GnhubError(f"the loss is {float(total)} at iteration {it} ({_terms(losses)}); "
                                     f"lower --lr (now {schedule.lr(it):g}) or check the annotations")
                (scaler.scale(total) if scaler else total).backward()
                for key, v in losses.items():
                    terms[key] = terms.get(key, 0.0) + float(v.detach()) / len(chunk)
            stepping = True
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            it, stepping = it + 1, False
            row = {"iteration": it, "epoch": epoch + 1, "lr": schedule.lr(it - 1), **terms,
                   "loss": sum(terms.values()), "seconds": round(time.perf_counter() - began, 3)}
            if device.type == "cuda":
                row["memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
            if rank == 0:
                _append(folder, row)
                if it % recipe.checkpoint_every == 0 or it == schedule.total:
                    _save(folder, model, optimizer, scaler, identity, it)
            if progress:
                progress(it, schedule.total, row)
            end_of_epoch = it % per_epoch == 0
            if val and recipe.val_every and end_of_epoch and (it // per_epoch) % recipe.val_every == 0 \
                    and it < schedule.total:
                metrics = _validate(model, val, work, folder, it)
    except KeyboardInterrupt:
        if rank == 0 and not stepping and it > start:
            _save(folder, model, optimizer, scaler, identity, it)
        raise GnhubError(f"interrupted at iteration {it} of {schedule.total}; the checkpoint in {work}/ holds "
                         f"iteration {_saved_iteration(work / CHECKPOINT)}: continue with --resume") from None
    if val:
        metrics = _validate(model, val, work, folder, it)
    if rank != 0:
        return {}
    summary = _write_output(model, out, force, name, origin, provenance, dataset, recipe, schedule, val, metrics)
    summary.update({"iterations": it, "work_dir": str(work), "seconds": round(time.perf_counter() - began, 1)})
    return summary


def _param_groups(model: GNMaskRCNN, weight_decay: float) -> list[dict]:
    """The trainable parameters: GroupNorm weights and biases decay at config.train.norm_decay_mult
    x the recipe's (mmengine's paramwise_cfg; 0 for the scratch configs), the rest at the recipe's."""
    norms = {id(p) for m in model.modules() if isinstance(m, torch.nn.GroupNorm) for p in m.parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    mult = model.config.train.norm_decay_mult
    groups = [{"params": [p for p in params if id(p) not in norms]},
              {"params": [p for p in params if id(p) in norms], "weight_decay": weight_decay * mult}]
    return [g for g in groups if g["params"]]


def _check_apart(out: Path, work: Path) -> None:
    """The output and the work directory may not hold one another (either would be in the way at the end)."""
    a, b = out.resolve(), work.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise GnhubError(f"--work-dir {work} and -o {out}: one holds the other; choose folders side by side")


def _check_val(val: tuple, dataset: CocoInstances) -> None:
    """The validation set, before training: readable, its images there, its classes the training set's."""
    instances = read_instances(val[0])
    folder = Path(val[1])
    if not folder.is_dir():
        raise GnhubError(f"{folder}: no such image folder (--val-images)")
    missing = [im["file_name"] for im in instances.images.values() if not (folder / im["file_name"]).is_file()]
    if missing:
        raise GnhubError(f"{folder / missing[0]}: no such image ({len(missing)} of {instances.path}'s images are "
                         "missing); check --val-images")
    names = {c["name"].replace("_", " ").lower() for c in instances.categories}
    unknown = [c for c in dataset.classes if c.replace("_", " ").lower() not in names]
    if unknown:
        raise GnhubError(f"{instances.path}: has no category {unknown[0]!r} of the training set's classes; --val must "
                         "name the same classes as --train")


def _config_digest(config) -> str:
    """sha256 of a base model's settings (everything but its name and provenance)."""
    settings = {k: v for k, v in config.to_dict().items() if k not in ("name", "provenance")}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _check_work_dir(work: Path, resume: bool) -> None:
    """A work directory holding only training files gnhub wrote (its ledger says so, by content:
    files.py) is gnhub's to reuse: without a checkpoint (a run killed before its first), it starts
    over; with one, only --resume goes on."""
    if work.is_symlink() or (work.exists() and not work.is_dir()):
        raise GnhubError(f"{work}: is not a folder; choose another --work-dir")
    if not work.is_dir():
        return
    others = foreign(work)
    others += [n for n in os.listdir(work) if n not in others and not _is_training_file(n)
               and n != LEDGER and not n.startswith(TMP_PREFIX)]
    if others:
        raise GnhubError(f"{work}: holds files gnhub did not write ({', '.join(sorted(others)[:3])}); choose another "
                         "--work-dir")
    if (work / CHECKPOINT).is_file() and not resume:
        raise GnhubError(f"{work}: holds a checkpoint: continue with --resume, or remove it")


def _clear(folder: Folder) -> None:
    """Removes an earlier run's log and validation results (gnhub's own files, see _check_work_dir)."""
    for name in folder.names() - {CHECKPOINT}:
        folder.remove(name)


def _is_training_file(name: str) -> bool:
    return name in (CHECKPOINT, LOG) or re.fullmatch(r"val_\d+\.json(\.parts)?", name) is not None


def _terms(losses: dict) -> str:
    return ", ".join(f"{k} {float(v.detach()):.4g}" for k, v in losses.items())


def _append(folder: Folder, row: dict) -> None:
    """One line more in the log (an append-only log: gnhub's while it begins as gnhub wrote it)."""
    append_line(folder.path / LOG, json.dumps(row) + "\n", "--work-dir")


def _save(folder: Folder, model, optimizer, scaler, identity: dict, it: int) -> None:
    """Weights, momentum buffers and the iteration in one safetensors file, written atomically
    (the data order and every random choice follow from the recipe's seed and the iteration)."""
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[f"momentum/{names[id(p)]}"] = buf
    state = {**identity, "iteration": it, "scaler": scaler.state_dict() if scaler else None}
    folder.write(CHECKPOINT, lambda f: save_safetensors(tensors, f, {"gnhub_train": json.dumps(state)}))


def _load_checkpoint(path: Path, tensors: bool = True) -> tuple[dict, dict]:
    """The checkpoint's state (from its metadata) and, if asked, its tensors."""
    try:
        with safe_open(path, framework="pt") as f:
            state = json.loads((f.metadata() or {})["gnhub_train"])
            tensors = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise GnhubError(f"{path}: not a gnhub training checkpoint ({str(e).strip()[:100]}); "
                         "start again without --resume") from None
    return state, tensors


def _saved_iteration(path: Path) -> int:
    return _load_checkpoint(path, tensors=False)[0]["iteration"] if path.is_file() else 0


_IDENTITY = {"dataset_sha256": "dataset", "panoptic_sha256": "panoptic dataset",
             "base_sha256": "base model (weights)",
             "base_config_sha256": "base model (settings)", "world": "number of processes"}


def _restore(work: Path, folder: Folder, model, optimizer, scaler, identity: dict) -> int:
    """The checkpoint's state into model, optimizer and scaler; the log cut back to it."""
    path = work / CHECKPOINT
    state, tensors = _load_checkpoint(path)
    changed = [_IDENTITY.get(k, k) for k in identity if state.get(k) != identity[k]]
    if changed:
        raise GnhubError(f"{path}: was made with another {', '.join(changed)}; resume with the same model, "
                         "dataset and options, or start again in a new --work-dir")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    params = dict(model.named_parameters())
    for k, v in tensors.items():
        if k.startswith("momentum/"):
            optimizer.state[params[k[9:]]]["momentum_buffer"] = v.to(params[k[9:]].device)
    if scaler and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    it = int(state["iteration"])
    if (work / LOG).is_file():
        rows = []
        for line in (work / LOG).read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                if json.loads(line)["iteration"] <= it:
                    rows.append(line + "\n")
        folder.write(LOG, "".join(rows).encode("utf-8"), log=True)
    return it


def _validate(model: GNMaskRCNN, val: tuple, work: Path, folder: Folder | None, it: int) -> dict:
    """Box and mask AP on `val`; rank 0 (holding `folder`) logs them."""
    results = work / f"val_{it}.json"
    model.eval()
    try:
        metrics = evaluate(model, images=val[1], annotations=val[0], results=results)
    finally:
        model.train()
    if folder is not None:
        _append(folder, {"iteration": it, "val": {k: metrics[k] for k in ("box", "mask") if k in metrics}})
    return metrics


def _write_output(model, out, force, name, origin, provenance, dataset, recipe, schedule, val, metrics) -> dict:
    model.eval()
    cpu = model.to("cpu")
    config = dataclasses.replace(cpu.config, name=name or out.name)
    config.provenance = {**provenance, "finetune": {
        **origin,
        "dataset": dataset.path.name,
        "images": len(dataset),
        "iterations": schedule.total,
        "total_batch": schedule.total_batch,
        "lr": schedule.base,
        "lr_steps": list(schedule.steps),
        "recipe": dataclasses.asdict(recipe),
        "val": {k: metrics[k] for k in ("box", "mask") if k in metrics} if metrics else None,
        "val_dataset": Path(val[0]).name if val else None,
        "trainer": f"gnhub {__version__}",
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
    }}
    cpu.config = config
    golden = golden_of(cpu)
    with new_model_dir(out, force) as tmp:
        write_model_files(tmp, config, cpu.state_dict())
        save_file(golden, tmp / GOLDEN_FILE)
        write_card(tmp, config.name)
    return {"output": str(out), "name": config.name, "classes": len(config.classes), "val": metrics or None}

