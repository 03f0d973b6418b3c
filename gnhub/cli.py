"""The `gnhub` command: each subcommand parses its arguments, calls one library function and
prints what it returns; main() maps errors to exit codes. No workflow lives here."""
from __future__ import annotations

import json
import re
import signal
import sys
from pathlib import Path

import click

from . import __version__
from .allocator import tune_cpu
from .errors import GnhubError
from .settings import HubSettings

__all__ = ["cli", "flags", "main"]

_HUB_OPTIONS = [
    click.option("--hub-dir", help="Load from / publish to a directory hub (ORG/NAME/) [env GNHUB_HUB_DIR]."),
    click.option("--endpoint", help="Hub endpoint, for a mirror [env GNHUB_ENDPOINT, HF_ENDPOINT]."),
]


def _hub_options(fn):
    for option in reversed(_HUB_OPTIONS):
        fn = option(fn)
    return fn


def _precision_options(dtype_help: str, runtime_help: str):
    """--dtype and --runtime, for the commands that run a model (predict, eval)."""
    def add(fn):
        fn = click.option("--runtime", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True,
                          help=runtime_help)(fn)
        return click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16", "auto"]),
                            default="float32", show_default=True,
                            help=dtype_help + " auto: bfloat16 on a CPU with AMX-BF16 or a GPU with native bfloat16, "
                            "else float32 (`gnhub info` says which here).")(fn)
    return add


# A library error names a parameter in backquotes; the command says its flag: `NAME` and `NAME=True`
# become --NAME, `NAME=False` --no-NAME, `NAME=VALUE` --NAME VALUE (underscores as dashes), except
# where a command's flag has another name.
_FLAGS = {"verify=True": "without --no-verify", "warmup_iters": "--warmup"}
_COMMAND_FLAGS = {"verify": {"images": "--image"},
                  "finetune": {"train_annotations": "--train", "train_images": "--images"}}
_running: dict = {}  # the subcommand of this invocation, for its flags


def flags(message: str, command: str | None = None) -> str:
    """`message` with the parameters it names in backquotes said as `command`'s flags."""
    names = {**_FLAGS, **_COMMAND_FLAGS.get(command, {})}

    def flag(m: re.Match) -> str:
        name, _, value = m.group(1).partition("=")
        if m.group(1) in names or name in names and value in ("", "True"):
            return names.get(m.group(1), names.get(name))
        dashed = name.replace("_", "-")
        return {"": f"--{dashed}", "True": f"--{dashed}", "False": f"--no-{dashed}"}.get(value, f"--{dashed} {value}")

    return re.sub(r"`([a-z][a-z0-9_]*(?:=[^`\s]+)?)`", flag, message)


def _settings(ctx: click.Context, **values) -> HubSettings:
    """The group's settings, with a command's own options over them."""
    return (ctx.obj or HubSettings()).merged(**values)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gnhub")
@click.option("--source-mirror", metavar="URL",
              help="Host that replaces the zoo's upstream download servers [env GNHUB_SOURCE_MIRROR].")
@click.option("-q", "--quiet", is_flag=True, default=None, help="No progress bars [env GNHUB_QUIET].")
@_hub_options
@click.pass_context
def cli(ctx, source_mirror, quiet, hub_dir, endpoint):
    """Group Normalization Mask and Faster R-CNN checkpoints (mmdetection .pth, Detectron and
    detectron2 .pkl, PaddleDetection .pdparams) in plain PyTorch.

    \b
    gnhub convert CKPT      checkpoint -> model directory (model.safetensors + config.json), verified
    gnhub verify MODEL      stage-by-stage check against the source or the stored golden outputs
    gnhub predict IMAGES    masks (where the model has them), boxes and classes: overlays + COCO JSON
    gnhub eval MODEL        box and mask AP (and PQ) on a COCO-format dataset (of a model or an export)
    gnhub finetune MODEL    train on a COCO-format dataset with mmdetection's recipe
    gnhub export MODEL      ONNX graph, verified, that runs without torch (gnhub.runtime)
    gnhub list / info NAME  the model zoo (and your GNHUB_ZOO_FILE entries)
    gnhub fetch / cache     fill gnhub's cache ahead of time; list or remove what it holds
    gnhub card / publish    model card, and upload to a hub (Hugging Face Hub or a directory)
    gnhub demo              the whole pipeline on an untrained embedded model

    MODEL is a model directory, a zoo name or hf-hub:owner/repo[@revision]. A zoo name loads
    from gnhub's cache, else the hub, else the zoo's upstream file (downloaded, converted,
    verified and cached once; see `gnhub fetch`).
    """
    ctx.obj = HubSettings(source_mirror=source_mirror, quiet=quiet, hub_dir=hub_dir, endpoint=endpoint)
    _running["command"] = ctx.invoked_subcommand


@cli.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), help="Output directory [default: ./NAME].")
@click.option("--format", "fmt", type=click.Choice(["auto", "mmdet", "detectron", "detectron2", "paddle"]),
              default="auto", show_default=True, help="Source format: mmdetection .pth, Detectron .pkl, detectron2 "
              ".pkl or PaddleDetection .pdparams; auto detects it from the contents.")
@click.option("--name", help="Model name [default: the zoo name, else the file name].")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True)
@click.option("--no-check-hash", is_flag=True, help="Accept a file whose name's sha256 prefix does not match.")
@click.option("--force", is_flag=True, help="Replace an existing gnhub model directory (nothing else).")
@click.option("--no-verify", is_flag=True, help="Skip the stage-by-stage comparison with the source.")
@click.option("--strict", is_flag=True, help="Refuse weights with NaN or Inf values (default: warn).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def convert(src, out, fmt, name, dtype, no_check_hash, force, no_verify, strict, as_json):
    """Convert checkpoint SRC into a gnhub model directory.

    SRC is an mmdetection GN, GN+WS or GN-from-scratch Mask R-CNN or Faster R-CNN (.pth; ResNet
    or ResNeXt), a Detectron GN Mask R-CNN (model_final.pkl), a detectron2 GN Mask R-CNN
    (model_final_*.pkl), a PaddleDetection GN (Cascade) Faster / Mask R-CNN (configs/gn, .pdparams) or a
    Detectron GN ImageNet backbone (R-50-GN.pkl, R-101-GN.pkl: an ImageNet classifier whose backbone
    has the detector's tensor names). By default the converted model is verified
    against an independent forward of SRC on the built-in images (about a minute for R-50 on 2
    cores); verification.json and golden.safetensors are written beside the weights. A failed
    verification writes nothing.
    """
    # per command: `gnhub --help`, list and info stay torch-free
    from .convert import convert

    log = (lambda msg: None) if as_json else (lambda msg: click.echo(flags(msg, "convert"), err=True))
    log(f"converting {src} ...")
    s = convert(src, out, fmt=fmt, name=name, dtype=dtype, check_hash=not no_check_hash, force=force,
                verify=not no_verify, strict=strict, log=log)
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    click.echo(
        f"{s['output']}: {s['format']} {s['source_version']} -> gnhub {s['architecture']}, "
        f"{s['classes']} classes, {s['tensors']} tensors, {s['parameters'] / 1e6:.1f}M parameters, "
        f"{s['bytes'] / 2**20:.1f} MiB, {len(s['dropped'])} dropped, {s['seconds']:.1f} s "
        f"(preprocessing from {s['preprocess_from']}; {'verified' if s['verified'] else 'NOT verified'})"
    )


@cli.command()
@click.argument("model")
@click.option("--source", type=click.Path(path_type=Path), help="The original checkpoint to compare with.")
@click.option("--image", "images", multiple=True, type=click.Path(path_type=Path),
              help="An extra image (with --source); repeatable.")
@click.option("--tolerance", type=click.Choice(["float32", "float16", "bfloat16"]),
              help="Tolerances to apply [default: the dtype of the weights].")
@click.option("--against", type=click.Choice(["gnhub", "mmdet", "detectron2", "paddle"]), default="gnhub",
              show_default=True,
              help="Reference run on --source: gnhub's independent forward, or the framework itself if installed.")
@click.option("--framework-config", "--mmdet-config", "framework_config",
              type=click.Path(path_type=Path, dir_okay=False),
              help="The mmdet or detectron2 config for --against [default: its own config of the zoo model].")
@click.option("--paddle-python", type=click.Path(path_type=Path, dir_okay=False),
              help="The python of a PaddlePaddle environment, for --against paddle [default: GNHUB_PADDLE_PYTHON].")
@click.option("--paddle-detection", type=click.Path(path_type=Path, file_okay=False),
              help="PaddleDetection's source folder, for --against paddle [default: GNHUB_PADDLE_DETECTION].")
@click.option("--dtype", type=click.Choice(["bfloat16"]),
              help="Check the model's bfloat16 arithmetic against its own float32 forward, stage by stage.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write the full report here.")
@_hub_options
@click.pass_context
def verify(ctx, model, source, images, tolerance, against, framework_config, paddle_python, paddle_detection,
           dtype, json_out, hub_dir, endpoint):
    """Check that MODEL (a directory or zoo name) computes what its source computed.

    For an ONNX export directory (`gnhub export`), the graph runs on onnxruntime and is compared
    with the PyTorch model's outputs stored at export.

    With --source, MODEL and an independent forward over SRC's own tensors run on the built-in
    images (plus any --image) and every stage is compared: backbone, FPN levels, RPN maps,
    proposals, RoI logits and deltas, detections and masks. With --against mmdet or detectron2 the
    reference is that framework itself (optional, see the README), built from its own config of
    the zoo model or --framework-config; with --against paddle, PaddleDetection itself, run by the
    python of a PaddlePaddle environment (docs/paddle.md) from its own configs/gn config. Without
    --source, MODEL is compared with the golden outputs stored at conversion. The weights are
    always hashed in full. Exits 0 only if every stage is within tolerance; images after the first
    one with a failing stage are not checked.

    With --dtype bfloat16 (no --source), MODEL's bfloat16 path (predict's) runs against its own
    float32 forward on the built-in images (plus any --image), each stage on float32's own input
    to it: backbone, FPN, RPN, the box head on float32's proposals, the mask head on its
    detections (tolerances from bfloat16's 8-bit significand and each stage's depth; the share
    of float32's detections an untaught bfloat16 forward finds is printed beside them).
    """
    # per command: `gnhub --help`, list and info stay torch-free
    from .checks import verify_model
    from .compare import failure_message

    report, names = verify_model(model, source, images=images, tolerance=tolerance, against=against,
                                 framework_config=framework_config, json_out=json_out,
                                 paddle_python=paddle_python, paddle_detection=paddle_detection,
                                 settings=_settings(ctx, hub_dir=hub_dir, endpoint=endpoint), dtype=dtype)
    for row in report.summary():
        abs_text = f"{row['max_abs']:.3g}" if row["max_abs"] else "0"
        click.echo(f"{'ok  ' if row['passed'] else 'FAIL'} {row['stage']:20s} max abs {abs_text:>9s}  "
                   f"max rel {row['max_rel']:.3g}  ({row['tolerance']})")
    if "end_to_end" in report.extra:
        shares = ", ".join(f"{k} {v:.0%}" for k, v in report.extra["end_to_end"]["matched"].items())
        click.echo(f"end to end (not checked): {shares} of float32's better-scored half of detections found "
                   "by an untaught bfloat16 forward")
    if not report.passed:
        raise GnhubError(f"{model}: {failure_message(report, names)}")
    click.echo(f"{model}: every stage within {report.dtype} tolerance against {report.against}")


@cli.command()
@click.argument("images", nargs=-1, required=True)
@click.option("-m", "--model", "model_path", required=True, help="Model directory, zoo name or hf-hub:owner/repo.")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=Path("predictions"), show_default=True,
              help="A new or empty folder, or an earlier predict output.")
@click.option("--score-threshold", default=0.3, show_default=True, type=click.FloatRange(0, 1),
              help="Draw and write the detections scoring at least this (mmdetection's demo draws above 0.3).")
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or mps.")
@_precision_options("float16 needs a GPU.", "onnx: MODEL is a `gnhub export` directory, run by onnxruntime "
                    "without torch.")
@_hub_options
@click.pass_context
def predict(ctx, images, model_path, out, score_threshold, batch_size, device, dtype, runtime, hub_dir, endpoint):
    """Detect and segment objects in IMAGES (files, folders or glob patterns).

    Writes NAME.png (masks, boxes, classes and scores drawn) and NAME.json per image, and
    results.json with all detections in COCO results format (RLE masks): those scoring at least
    --score-threshold. With an ImageNet classifier (a converted R-50-GN.pkl), NAME.json and
    results.json list the top 5 classes. Nothing but gnhub's own earlier output is replaced.
    """
    # per command: `gnhub --help`, list and info stay torch-free
    from .predict import predict

    rate = {"value": 0.0}
    bar = click.progressbar(length=1, label="predicting", file=sys.stderr,
                            item_show_func=lambda _: f"{rate['value']:.2f} images/s")

    def progress(n, images_per_second, total):
        rate["value"], bar.length = images_per_second, total
        bar.update(n)

    with bar:
        summary = predict(model_path, list(images), out=out, batch_size=batch_size, device=device, dtype=dtype,
                          runtime=runtime, score_threshold=score_threshold,
                          settings=_settings(ctx, hub_dir=hub_dir, endpoint=endpoint), progress=progress)
    for reason in summary["skipped"]:
        click.echo(f"warning: skipped {reason}", err=True)
    n = summary["images"]
    what = "top classes" if summary.get("task") == "image-classification" else "detections"
    click.echo(f"{n} image{'s' * (n != 1)} ({summary['images_per_second']} images/s, {summary['dtype']}), "
               f"{summary['detections']} {what}, {len(summary['skipped'])} skipped -> {summary['out']}/")


@cli.command("eval")
@click.argument("model")
@click.option("--images", required=True, type=click.Path(path_type=Path, file_okay=False), help="Image folder.")
@click.option("--annotations", required=True, type=click.Path(path_type=Path), help="COCO instances JSON.")
@click.option("--results", type=click.Path(path_type=Path),
              help="Where detections go (COCO results format); an interrupted run of the same model, annotations "
              "and images resumes from it [default: ./NAME_coco_results.json].")
@click.option("--panoptic-annotations", type=click.Path(path_type=Path),
              help="COCO panoptic JSON (panoptic_val2017.json) of those images: also score a Panoptic FPN's PQ.")
@click.option("--panoptic-images", type=click.Path(path_type=Path, file_okay=False),
              help="Its folder of segment-id PNGs [default: the JSON's path without .json].")
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default=None, help="cpu or cuda [default: cuda:LOCAL_RANK under torchrun, else cpu].")
@_precision_options("Score the model in this precision (float16 needs a GPU).",
                    "onnx: score a `gnhub export` on onnxruntime (no torch).")
@_hub_options
@click.pass_context
def eval_(ctx, model, images, annotations, results, panoptic_annotations, panoptic_images, batch_size, device, dtype,
          runtime, hub_dir, endpoint):
    """Box and mask AP of MODEL on a COCO-format dataset (needs pycocotools: pip install 'gnhub[coco]'),
    and a Panoptic FPN's PQ, SQ and RQ with --panoptic-annotations (panopticapi's pq_compute).

    The annotations are checked before the model loads; --runtime onnx and --dtype show the AP
    an export or a half-precision model keeps on your data. Under torchrun each process takes a
    shard of the images and rank 0 merges and scores them.
    """
    # per command: `gnhub --help`, list and info stay torch-free
    from .evaluate import METRICS, evaluate_model

    metrics = evaluate_model(model, images=images, annotations=annotations, results=results, batch_size=batch_size,
                             device=device, dtype=dtype, runtime=runtime,
                             settings=_settings(ctx, hub_dir=hub_dir, endpoint=endpoint),
                             panoptic_annotations=panoptic_annotations, panoptic_images=panoptic_images)
    if not metrics:  # not rank 0
        return
    n = metrics["images"]
    click.echo(f"{n} image{'s' * (n != 1)}, {metrics['images_per_second']} images/s ({metrics['dtype']}); "
               f"results: {metrics['results']}")
    click.echo(f"{'':5s} " + " ".join(f"{k:>6s}" for k in METRICS) + "  published AP")
    for key in ("box", "mask"):
        if key in metrics:
            published = metrics.get("published", {}).get(key, {}).get("AP")
            row = " ".join(f"{metrics[key][k]:6.3f}" for k in METRICS)
            click.echo(f"{key:5s} {row}  {published if published is not None else '-'}")
    if "panoptic" in metrics:
        published = metrics.get("published", {}).get("panoptic", {}).get("PQ")
        click.echo(f"{'':6s} {'PQ':>6s} {'SQ':>6s} {'RQ':>6s}  categories  published PQ")
        for kind, row in metrics["panoptic"].items():
            click.echo(f"{kind:6s} " + " ".join(f"{row[k]:6.3f}" for k in ("PQ", "SQ", "RQ")) +
                       f"  {row['categories']:10d}  {published if kind == 'All' and published is not None else '-'}")


@cli.command()
@click.argument("model")
@click.option("--train", "train_annotations", required=True, type=click.Path(path_type=Path),
              help="COCO-format instances JSON to train on (its categories become the classes).")
@click.option("--images", required=True, type=click.Path(path_type=Path, file_okay=False), help="Its image folder.")
@click.option("--train-panoptic", type=click.Path(path_type=Path),
              help="A Panoptic FPN's COCO panoptic JSON of those images (panoptic_train2017.json): semantic labels.")
@click.option("--train-panoptic-images", type=click.Path(path_type=Path, file_okay=False),
              help="Its PNG folder [default: the JSON's path without .json].")
@click.option("--val", "val_annotations", type=click.Path(path_type=Path), help="COCO instances JSON for box/mask AP.")
@click.option("--val-images", type=click.Path(path_type=Path, file_okay=False), help="Its image folder.")
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True, help="Output model directory.")
@click.option("--epochs", default=24, show_default=True, type=click.IntRange(min=1))
@click.option("--iterations", type=click.IntRange(min=1), help="Train this many steps instead of --epochs.")
@click.option("--batch-size", default=2, show_default=True, type=click.IntRange(min=1), help="Images per device.")
@click.option("--accumulate", default=1, show_default=True, type=click.IntRange(min=1),
              help="Batches per optimizer step (gradient accumulation).")
@click.option("--lr", type=float, help="Learning rate [default: 0.02 x total batch / 16].")
@click.option("--steps", help="Epochs (iterations with --iterations) after which lr x 0.1, e.g. 16,22 "
              "[default: at 2/3 and 11/12 of the run].")
@click.option("--warmup", default=500, show_default=True, type=click.IntRange(min=0), help="Linear warm-up steps.")
@click.option("--flip", default=0.5, show_default=True, type=click.FloatRange(0, 1), help="Horizontal flip chance.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--amp", type=click.Choice(["bf16", "fp16"]), help="Mixed precision (fp16 on GPUs only).")
@click.option("--device", default=None, help="cpu or cuda [default: cuda:LOCAL_RANK under torchrun, else cpu].")
@click.option("--checkpoint-every", default=500, show_default=True, type=click.IntRange(min=1), help="Steps.")
@click.option("--val-every", default=0, show_default=True, type=click.IntRange(min=0),
              help="Validate every N epochs as well as at the end.")
@click.option("--work-dir", type=click.Path(path_type=Path), help="Checkpoints and log.jsonl [default: OUT.train].")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in the work directory, exactly.")
@click.option("--name", help="Model name [default: the output directory's name].")
@click.option("--force", is_flag=True, help="Replace an existing gnhub model directory at OUT.")
@_hub_options
@click.pass_context
def finetune(ctx, model, train_annotations, images, train_panoptic, train_panoptic_images, val_annotations, val_images,
             out, epochs, iterations, batch_size, accumulate, lr, steps, warmup, flip, seed, amp, device,
             checkpoint_every, val_every, work_dir, resume, name, force, hub_dir, endpoint):
    """Fine-tune MODEL on a COCO-format dataset with mmdetection's recipe for these models.

    \b
    SGD (momentum 0.9, weight decay 1e-4), lr 0.02 per 16 images, 500-step linear warm-up,
    lr x 0.1 at 2/3 and 11/12 of the run, random horizontal flip, batches grouped by aspect
    ratio, stem and first stage frozen; mmdetection's losses exactly (GNMaskRCNN given targets).
    New classes get new heads. A Panoptic FPN also trains its semantic head (detectron2's loss)
    on --train-panoptic's labels. Every input and output is checked before training (the images
    decoded once). Checkpoints every --checkpoint-every steps; after a crash or Ctrl-C,
    --resume continues exactly. Under torchrun each process trains on its shard (DDP).
    OUT is a model directory (weights, config.json with the classes and provenance, golden
    outputs, card) for gnhub predict/eval/verify/publish. Needs pycocotools (gnhub[coco]).
    """
    # per command: `gnhub --help`, list and info stay torch-free
    from .train import Recipe, finetune_model

    if (val_annotations is None) != (val_images is None):
        raise GnhubError("--val and --val-images go together")
    if train_panoptic_images is not None and train_panoptic is None:
        raise GnhubError("--train-panoptic-images needs --train-panoptic")
    try:
        step_list = tuple(int(x) for x in steps.split(",")) if steps else None
    except ValueError:
        raise GnhubError(f"--steps {steps!r}: expected whole numbers separated by commas, e.g. 16,22") from None
    recipe = Recipe(epochs=epochs, iterations=iterations, batch_size=batch_size, accumulate=accumulate, lr=lr,
                    warmup_iters=warmup, steps=step_list, flip=flip, seed=seed, amp=amp,
                    checkpoint_every=checkpoint_every, val_every=val_every)
    val = (val_annotations, val_images) if val_annotations else None
    bar = click.progressbar(length=1, label="fine-tuning", file=sys.stderr, item_show_func=lambda row: row)

    def progress(it, total, row):
        bar.length = total
        names = ("rpn_cls", "rpn_bbox", "cls", "bbox", "mask", "sem_seg")
        terms = " ".join(f"{k} {row[k]:.3f}" for k in names if k in row)
        bar.update(it - bar.pos, f"loss {row['loss']:.3f} ({terms}) lr {row['lr']:.2e}")

    with bar:
        summary = finetune_model(model, train_annotations=train_annotations, train_images=images, out=out,
                                 recipe=recipe, val=val, work_dir=work_dir,
                                 train_panoptic=(train_panoptic, train_panoptic_images) if train_panoptic else None,
                                 resume=resume, force=force, device=device, name=name,
                                 settings=_settings(ctx, hub_dir=hub_dir, endpoint=endpoint),
                                 progress=progress, log=lambda msg: click.echo(msg, err=True))
    if not summary:  # not rank 0
        return
    click.echo(f"{summary['iterations']} iterations in {summary['seconds']:.0f} s -> {summary['output']} "
               f"(log and checkpoint: {summary['work_dir']})")
    if summary["val"]:
        v = summary["val"]
        click.echo("validation: " + ", ".join(f"{k} AP {v[k]['AP']:.3f}" for k in ("box", "mask") if k in v))


@cli.command("export")
@click.argument("model")
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True)
@click.option("-o", "--out", type=click.Path(path_type=Path), help="Output directory [default: ./NAME-onnx].")
@click.option("--opset", type=click.IntRange(min=1),
              help="ONNX opset (16 or later) [default: 17; 19 with deformable convolutions].")
@click.option("--no-verify", is_flag=True, help="Skip the comparison with the PyTorch model.")
@click.option("--force", is_flag=True, help="Replace an earlier export (nothing else).")
@_hub_options
@click.pass_context
def export_(ctx, model, fmt, out, opset, no_verify, force, hub_dir, endpoint):
    """Export MODEL (anything gnhub.load takes) as an ONNX graph that runs without torch.

    The graph takes one image's normalised, padded input (any height and width), its resized
    size and scale factor, and returns boxes in original pixels, scores, labels and (with a mask
    head) 28x28 mask probabilities (and a Panoptic FPN's semantic logits); gnhub.runtime
    (onnxruntime, numpy, OpenCV) preprocesses, pastes the masks and merges the panoptic result as
    gnhub does. By default the export is verified stage by stage against the
    PyTorch model on the built-in images; a failed verification writes nothing. Batch size 1,
    float32, mmdetection-, detectron2- and PaddleDetection-convention models (not Detectron's);
    needs `pip install 'gnhub[onnx]'`.
    """
    # per command: `gnhub --help`, list and info stay torch-free
    from .export import export_model

    summary = export_model(model, out, opset=opset, verify=not no_verify, force=force,
                           settings=_settings(ctx, hub_dir=hub_dir, endpoint=endpoint),
                           log=lambda msg: click.echo(msg, err=True))
    state = "verified" if summary["verified"] else "NOT verified (--no-verify)"
    click.echo(f"{summary['output']}/model.onnx: opset {summary['opset']}, {summary['bytes'] / 2**20:.0f} MiB, "
               f"{state}; export {summary['export_seconds']:.0f} s, {summary['seconds']:.0f} s in all")


@cli.command("list")
@click.argument("pattern", required=False)
@click.option("--family", type=click.Choice(["gn", "gn+ws", "scratch", "imagenet"]),
              help="GN, GN + Weight Standardization, trained from scratch, or ImageNet backbones.")
@click.option("--detector", type=click.Choice(["mask", "faster", "classifier"]),
              help="Mask R-CNN, Faster R-CNN (boxes only) or ImageNet classifier.")
@click.option("--backbone", help="R-50, R-101, X-50-32x4d or X-101-32x4d.")
@click.option("--format", "fmt", type=click.Choice(["mmdet", "detectron", "detectron2", "paddle"]),
              help="The source's format.")
def list_(pattern, family, detector, backbone, fmt):
    """List the zoo models (PATTERN: fnmatch wildcards, any case, e.g. '*r101*')."""
    # per command: `gnhub --help`, list and info stay torch-free
    from .cache import cached
    from .zoo import list_models, models

    names = list_models(pattern, family, detector, backbone, fmt)
    if not names:
        raise GnhubError("no zoo model matches " + " and ".join(
            f"{k} {v!r}" for k, v in (("pattern", pattern), ("--family", family), ("--detector", detector),
                                       ("--backbone", backbone), ("--format", fmt)) if v))
    click.echo(f"{'name':50s} {'backbone':12s} {'detector':12s} {'format':10s} {'family':8s} {'schedule':10s} "
               f"{'published results':28s} cache")
    for n in names:
        e = models()[n]
        click.echo(f"{n:50s} {e.backbone:12s} {e.detector:12s} {e.source_format:10s} {e.family:8s} "
                   f"{e.schedule.split()[0]:10s} {e.results_text:28s} {'cached' if cached(e) else ''}")


@cli.command()
@click.argument("name")
@_hub_options
@click.pass_context
def info(ctx, name, hub_dir, endpoint):
    """Show everything gnhub knows about zoo model NAME, a model directory, a raw checkpoint, or a
    published model (hf-hub:ORG/NAME, or ORG/NAME in a directory hub; fetched as `predict` would),
    and the dtype `--dtype auto` runs models in on this machine."""
    # per command: `gnhub --help`, list and info stay torch-free
    from .info import describe

    click.echo(json.dumps(describe(name, _settings(ctx, hub_dir=hub_dir, endpoint=endpoint)), indent=2, default=str))


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--name", help="The name users load it by [default: the zoo name, else the directory].")
def card(model_dir, name):
    """Render MODEL_DIR/README.md, the model card, from config.json, the zoo and verification.json."""
    # per command: `gnhub --help`, list and info stay torch-free
    from .cards import write_card

    click.echo(write_card(model_dir, name))


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every zoo model with a published download.")
@click.option("--keep-source", is_flag=True, help="Keep the downloaded upstream files in the cache too.")
@_hub_options
@click.pass_context
def fetch(ctx, names, all_, keep_source, hub_dir, endpoint):
    """Fill gnhub's cache with zoo models NAMES ahead of time (for a cluster's shared filesystem,
    or before going offline) and print where each one is.

    Each comes from the hub where published, else from its upstream file: downloaded (resumable),
    hash-checked, converted and verified. The cache is GNHUB_CACHE (default ~/.cache/gnhub).
    """
    # per command: `gnhub --help`, list and info stay torch-free
    from .resolve import fetch
    from .zoo import get, list_models

    if all_:
        names = [n for n in list_models() if get(n).url]
    if not names:
        raise GnhubError("name the zoo models to fetch (`gnhub list`), or pass --all")
    for n, path in fetch(list(names), _settings(ctx, hub_dir=hub_dir, endpoint=endpoint, keep_source=keep_source)):
        click.echo(f"{n}: {path}")


@cli.command("cache")
@click.argument("action", type=click.Choice(["list", "rm"]), default="list")
@click.argument("names", nargs=-1)
def cache_(action, names):
    """List what gnhub's cache holds (sizes), or remove NAMES from it (`gnhub cache rm NAME`: zoo
    names or the entries listed; nothing outside the cache)."""
    # per command: `gnhub --help`, list and info stay torch-free
    from .cache import cache_dir, entries, remove

    if action == "rm":
        if not names:
            raise GnhubError("name the models to remove: gnhub cache rm NAME")
        for n in names:
            gone = remove(n)
            click.echo(f"{n}: " + (f"removed {', '.join(gone)}" if gone else "not in the cache"))
        return
    rows = entries()
    for r in rows:
        click.echo(f"{r['name']:42s} {r['kind']:9s} {r['bytes'] / 2**20:9.1f} MiB  {r['path']}")
    click.echo(f"{len(rows)} entr{'y' if len(rows) == 1 else 'ies'}, {sum(r['bytes'] for r in rows) / 2**20:.1f} MiB "
               f"in {cache_dir()}")


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--repo-id", required=True, help="ORG/NAME on the hub.")
@click.option("--private", is_flag=True, help="Create the repository private.")
@click.option("--revision", help="Branch to commit to (created if needed).")
@click.option("--create-pr", is_flag=True, help="Open a pull request instead of committing.")
@click.option("--dry-run", is_flag=True, help="Show what would be uploaded; upload nothing.")
@click.option("--allow-unverified", is_flag=True, help="Publish even without a passed verification.")
@click.option("--onnx", "export_dir", type=click.Path(path_type=Path, file_okay=False),
              help="A `gnhub export` directory of this model, uploaded in onnx/ with the same commit.")
@_hub_options
@click.pass_context
def publish(ctx, model_dir, repo_id, private, revision, create_pr, dry_run, allow_unverified, export_dir, hub_dir,
            endpoint):
    """Upload MODEL_DIR (weights, config, verification, generated card) to a hub in one commit.

    With --onnx, the model's ONNX export goes into onnx/ of the same repository and the card
    says how to run it with ONNX Runtime (gnhub.runtime.load loads it by the same name). An
    unchanged directory makes no new commit. The token comes from HF_TOKEN or `hf auth login`
    and is never printed.
    """
    # per command: `gnhub --help`, list and info stay torch-free
    from .publish import publish_model

    result = publish_model(model_dir, repo_id, settings=_settings(ctx, hub_dir=hub_dir, endpoint=endpoint),
                           private=private, revision=revision, create_pr=create_pr, allow_unverified=allow_unverified,
                           export_dir=export_dir, dry_run=dry_run)
    if dry_run:
        click.echo(f"would publish to {repo_id}: {', '.join(result['files'])} (generated card, "
                   f"{result['card_characters']} characters); verification "
                   f"{'passed' if result['verified'] else 'missing/failed'}")
        return
    state = "published" if result["changed"] else "unchanged, no new commit"
    click.echo(f"{repo_id}: {state} ({result['url']})")


@cli.command("publish-zoo")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@click.option("--org", default=None, help="Organisation of the hub repositories [env GNHUB_ORG, default gnhub].")
@click.option("--work-dir", type=click.Path(path_type=Path), default=Path("gnhub-zoo"), show_default=True)
@click.option("--no-check-hash", is_flag=True, help="Accept files whose sha256 differs from the published one.")
@_hub_options
@click.pass_context
def publish_zoo(ctx, folder, org, work_dir, no_check_hash, hub_dir, endpoint):
    """Convert, verify, card and publish every zoo model whose source file is in FOLDER."""
    # per command: `gnhub --help`, list and info stay torch-free
    from .publish import publish_zoo

    rows = publish_zoo(folder, settings=_settings(ctx, hub_dir=hub_dir, endpoint=endpoint, org=org), work_dir=work_dir,
                       check_hash=not no_check_hash, log=lambda m: click.echo(m, err=True))
    for row in rows:
        click.echo(f"{row[0]:42s} {row[1]:10s} {flags(str(row[2]), 'publish-zoo')}")
    failed = sum(r[1] == "FAILED" for r in rows)
    if failed:
        raise GnhubError(f"{failed} of {len(rows)} models failed")


@cli.command()
@click.option("-o", "--out", type=click.Path(path_type=Path), default=Path("gnhub-demo"), show_default=True)
def demo(out):
    """Run the whole pipeline on an embedded UNTRAINED model and the bundled sample images.

    Writes an mmdetection-format checkpoint with deterministic random weights, converts and
    verifies it, renders its card, publishes it to a directory hub, loads it back by name and
    predicts on the sample images. Nothing is downloaded; the detections are meaningless.
    """
    # per command: `gnhub --help`, list and info stay torch-free
    from .demo import run_demo

    run_demo(out, log=click.echo)


def _terminate(signum, frame):
    raise KeyboardInterrupt  # so that temporary outputs are removed on the way out


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    tune_cpu()  # the command's processes keep freed memory for the next forward (gnhub/allocator.py)
    try:
        cli(standalone_mode=False)
    except GnhubError as e:
        click.echo(f"error: {flags(str(e), _running.get('command'))}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
