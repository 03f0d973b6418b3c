"""The `gnhub` command: each subcommand parses its arguments and calls the library."""
from __future__ import annotations

import json
import math
import os
import signal
import sys
from pathlib import Path

import click

from . import __version__
from .errors import GnhubError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gnhub")
@click.option("--source-mirror", metavar="URL",
              help="Host that replaces the zoo's upstream download servers [env GNHUB_SOURCE_MIRROR].")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars [env GNHUB_QUIET].")
def cli(source_mirror, quiet):
    """Group Normalization Mask R-CNN checkpoints (mmdetection .pth, Detectron .pkl) in plain PyTorch.

    \b
    gnhub convert CKPT      checkpoint -> model directory (model.safetensors + config.json), verified
    gnhub verify MODEL      stage-by-stage check against the source or the stored golden outputs
    gnhub predict IMAGES    masks, boxes and classes: overlay PNGs + COCO-format JSON
    gnhub eval MODEL        box and mask AP on a COCO-format dataset
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
    if source_mirror:
        os.environ["GNHUB_SOURCE_MIRROR"] = source_mirror
    if quiet:
        os.environ["GNHUB_QUIET"] = "1"


@cli.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), help="Output directory [default: ./NAME].")
@click.option("--format", "fmt", type=click.Choice(["auto", "mmdet", "detectron"]), default="auto", show_default=True,
              help="Source format: mmdetection .pth or Detectron .pkl; auto detects it from the contents.")
@click.option("--name", help="Model name [default: the zoo name, else the file name].")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True)
@click.option("--no-check-hash", is_flag=True, help="Accept a file whose name's sha256 prefix does not match.")
@click.option("--force", is_flag=True, help="Replace an existing gnhub model directory (nothing else).")
@click.option("--no-verify", is_flag=True, help="Skip the stage-by-stage comparison with the source.")
@click.option("--strict", is_flag=True, help="Refuse weights with NaN or Inf values (default: warn).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def convert(src, out, fmt, name, dtype, no_check_hash, force, no_verify, strict, as_json):
    """Convert checkpoint SRC into a gnhub model directory.

    SRC is an mmdetection GN Mask R-CNN (.pth), a Detectron GN Mask R-CNN (model_final.pkl) or a
    Detectron GN ImageNet backbone (R-50-GN.pkl, R-101-GN.pkl: an ImageNet classifier whose
    backbone has the detector's tensor names). By default the converted model is verified
    against an independent forward of SRC on the built-in images (about a minute for R-50 on 2
    cores); verification.json and golden.safetensors are written beside the weights. A failed
    verification writes nothing.
    """
    from .convert import convert as run

    log = (lambda msg: None) if as_json else (lambda msg: click.echo(msg, err=True))
    log(f"converting {src} ...")
    s = run(src, out, fmt=fmt, name=name, dtype=dtype, check_hash=not no_check_hash, force=force,
            verify=not no_verify, strict=strict, log=log)
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    click.echo(
        f"{s['output']}: {s['format']} {s['source_version']} -> gnhub, ResNet-{s['depth']}, "
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
@click.option("--against", type=click.Choice(["gnhub", "mmdet"]), default="gnhub", show_default=True,
              help="Reference run on --source: gnhub's independent forward, or mmdetection itself if installed.")
@click.option("--mmdet-config", type=click.Path(path_type=Path, dir_okay=False),
              help="mmdetection config for --against mmdet [default: its packaged config of the zoo model].")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write the full report here.")
def verify(model, source, images, tolerance, against, mmdet_config, json_out):
    """Check that MODEL (a directory or zoo name) computes what its source computed.

    For an ONNX export directory (`gnhub export`), the graph runs on onnxruntime and is compared
    with the PyTorch model's outputs stored at export.

    With --source, MODEL and an independent forward over SRC's own tensors run on the built-in
    images (plus any --image) and every stage is compared: backbone, FPN levels, RPN maps,
    proposals, RoI logits and deltas, detections and masks. With --against mmdet the reference is
    mmdetection itself (optional, see the README), built from its packaged config of the zoo
    model or --mmdet-config. Without --source, MODEL is compared with the golden outputs stored
    at conversion. Exits 0 only if every stage is within tolerance; images after the first one
    with a failing stage are not checked.
    """
    from .layout import check_output_file

    if json_out:
        check_output_file(json_out, "--json")
    from .hub import resolve
    from .layout import is_export_dir

    if is_export_dir(Path(model)):
        if source or images or against != "gnhub":
            raise GnhubError(f"{model}: an ONNX export is checked against its golden outputs only; drop --source, "
                             "--image and --against")
        from .export import verify_export_golden

        report, names = verify_export_golden(Path(model)), None
    else:
        from .verify import run_verify

        model_dir = resolve(model)  # a zoo name or hf-hub: id downloads the golden outputs too
        report, names = run_verify(model_dir, source, [str(i) for i in images], tolerance, against, mmdet_config)
    for row in report.summary():
        abs_text = f"{row['max_abs']:.3g}" if row["max_abs"] else "0"
        click.echo(f"{'ok  ' if row['passed'] else 'FAIL'} {row['stage']:20s} max abs {abs_text:>9s}  "
                   f"max rel {row['max_rel']:.3g}  ({row['tolerance']})")
    if json_out:
        json_out.write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    if not report.passed:
        from .verify import failure_message

        raise GnhubError(f"{model}: {failure_message(report, names)}")
    click.echo(f"{model}: every stage within {report.dtype} tolerance against {report.against}")


@cli.command()
@click.argument("images", nargs=-1, required=True)
@click.option("-m", "--model", "model_path", required=True, help="Model directory, zoo name or hf-hub:owner/repo.")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=Path("predictions"), show_default=True,
              help="A new or empty folder, or an earlier predict output.")
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or mps.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True)
@click.option("--runtime", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True,
              help="onnx: MODEL is a `gnhub export` directory, run by onnxruntime without torch.")
def predict(images, model_path, out, batch_size, device, dtype, runtime):
    """Detect and segment objects in IMAGES (files, folders or glob patterns).

    Writes NAME.png (masks, boxes, classes and scores drawn) and NAME.json per image, and
    results.json with all detections in COCO results format (RLE masks). With an ImageNet
    classifier (a converted R-50-GN.pkl), NAME.json and results.json list the top 5 classes.
    """
    from .predict import expand_inputs, predict_files, prepare_out_dir

    paths = expand_inputs(list(images))
    prepare_out_dir(out)
    if runtime == "onnx":
        from .runtime import load as load_onnx

        if device != "cpu" or dtype != "float32":
            raise GnhubError("--runtime onnx runs float32 on onnxruntime's CPU provider; drop --device and --dtype")
        model = load_onnx(model_path)
    else:
        from .api import load
        from .convert import DTYPES

        model = load(model_path, device=device).to(DTYPES[dtype])
    if dtype == "float16" and model.device.type == "cpu":
        click.echo("note: float16 on the CPU runs slower than float32 (no half-precision CPU kernels); "
                   "bfloat16 is faster only on CPUs with native bfloat16 instructions (AVX512-BF16, AMX)", err=True)
    rate = {"value": 0.0}
    with click.progressbar(length=len(paths), label="predicting", file=sys.stderr,
                           item_show_func=lambda _: f"{rate['value']:.2f} images/s") as bar:

        def progress(n, images_per_second):
            rate["value"] = images_per_second
            bar.update(n)

        summary = predict_files(model, paths, out, batch_size, progress=progress)
    for reason in summary["skipped"]:
        click.echo(f"warning: skipped {reason}", err=True)
    click.echo(
        f"{summary['images']} images ({summary['images_per_second']} images/s), "
        f"{summary['detections']} {'top classes' if model.task == 'image-classification' else 'detections'}, "
        f"{len(summary['skipped'])} skipped -> {summary['out']}/"
    )


@cli.command("eval")
@click.argument("model")
@click.option("--images", required=True, type=click.Path(path_type=Path, file_okay=False), help="Image folder.")
@click.option("--annotations", required=True, type=click.Path(path_type=Path), help="COCO instances JSON.")
@click.option("--results", type=click.Path(path_type=Path),
              help="Where detections go (COCO results format); an interrupted run of the same model, annotations "
              "and images resumes from it [default: ./NAME_coco_results.json].")
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default=None, help="cpu or cuda [default: cuda:LOCAL_RANK under torchrun, else cpu].")
def eval_(model, images, annotations, results, batch_size, device):
    """Box and mask AP of MODEL on a COCO-format dataset (needs pycocotools: pip install 'gnhub[coco]').

    The annotations are checked before the model runs. Under torchrun each process takes a shard
    of the images and rank 0 merges and scores them.
    """
    from .api import load
    from .coco import read_instances
    from .distributed import join
    from .evaluate import METRICS, check_results, default_results, evaluate

    if results:
        check_results(results)
    read_instances(annotations)
    m = load(model, device=join(device))
    results = results or default_results(m)
    metrics = evaluate(m, images, annotations, results, batch_size)
    if not metrics:  # not rank 0
        return
    count = metrics["images"]
    click.echo(f"{count} image{'s' * (count != 1)}, {metrics['images_per_second']} images/s; results: {results}")
    click.echo(f"{'':5s} " + " ".join(f"{k:>6s}" for k in METRICS) + "  published AP")
    for key in ("box", "mask"):
        published = metrics.get("published", {}).get(key, {}).get("AP")
        row = " ".join(f"{metrics[key][k]:6.3f}" for k in METRICS)
        click.echo(f"{key:5s} {row}  {published if published is not None else '-'}")


@cli.command()
@click.argument("model")
@click.option("--train", "train_annotations", required=True, type=click.Path(path_type=Path),
              help="COCO-format instances JSON to train on (its categories become the classes).")
@click.option("--images", required=True, type=click.Path(path_type=Path, file_okay=False), help="Its image folder.")
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
def finetune(model, train_annotations, images, val_annotations, val_images, out, epochs, iterations, batch_size,
             accumulate, lr, steps, warmup, flip, seed, amp, device, checkpoint_every, val_every, work_dir, resume,
             name, force):
    """Fine-tune MODEL on a COCO-format dataset with mmdetection's recipe for these models.

    \b
    SGD (momentum 0.9, weight decay 1e-4), lr 0.02 per 16 images, 500-step linear warm-up,
    lr x 0.1 at 2/3 and 11/12 of the run, random horizontal flip, batches grouped by aspect
    ratio, stem and first stage frozen; mmdetection's losses exactly (GNMaskRCNN.loss).
    New classes get new heads. Checkpoints every --checkpoint-every steps; after a crash or
    Ctrl-C, --resume continues exactly. Under torchrun each process trains on its shard (DDP).
    OUT is a model directory (weights, config.json with the classes and provenance, golden
    outputs, card) for gnhub predict/eval/verify/publish. Needs pycocotools (gnhub[coco]).
    """
    from .api import load
    from .distributed import join
    from .train import Recipe
    from .train import finetune as run

    if (val_annotations is None) != (val_images is None):
        raise GnhubError("--val and --val-images go together")
    try:
        step_list = tuple(int(x) for x in steps.split(",")) if steps else None
    except ValueError:
        raise GnhubError(f"--steps {steps!r}: expected whole numbers separated by commas, e.g. 16,22") from None
    recipe = Recipe(epochs=epochs, iterations=iterations, batch_size=batch_size, accumulate=accumulate, lr=lr,
                    warmup_iters=warmup, steps=step_list, flip=flip, seed=seed, amp=amp,
                    checkpoint_every=checkpoint_every, val_every=val_every)
    recipe.check()
    device = join(device)
    base = load(model, device=device)
    val = (val_annotations, val_images) if val_annotations else None
    bar = click.progressbar(length=1, label="fine-tuning", file=sys.stderr, item_show_func=lambda row: row)

    def progress(it, total, row):
        bar.length = total
        terms = " ".join(f"{k} {row[k]:.3f}" for k in ("rpn_cls", "rpn_bbox", "cls", "bbox", "mask"))
        bar.update(it - bar.pos, f"loss {row['loss']:.3f} ({terms}) lr {row['lr']:.2e}")

    with bar:
        summary = run(base, train_annotations, images, out, recipe, val=val, work_dir=work_dir, resume=resume,
                      force=force, device=device, name=name, base_name=model, progress=progress,
                      log=lambda msg: click.echo(msg, err=True))
    if not summary:  # not rank 0
        return
    click.echo(f"{summary['iterations']} iterations in {summary['seconds']:.0f} s -> {summary['output']} "
               f"(log and checkpoint: {summary['work_dir']})")
    if summary["val"]:
        v = summary["val"]
        click.echo(f"validation: box AP {v['box']['AP']:.3f}, mask AP {v['mask']['AP']:.3f}")


@cli.command("export")
@click.argument("model")
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True)
@click.option("-o", "--out", type=click.Path(path_type=Path), help="Output directory [default: ./NAME-onnx].")
@click.option("--opset", default=17, show_default=True, type=click.IntRange(min=1), help="ONNX opset (16 or later).")
@click.option("--no-verify", is_flag=True, help="Skip the comparison with the PyTorch model.")
@click.option("--force", is_flag=True, help="Replace an earlier export (nothing else).")
def export_(model, fmt, out, opset, no_verify, force):
    """Export MODEL (anything gnhub.load takes) as an ONNX graph that runs without torch.

    The graph takes one image's normalised, padded input (any height and width), its resized
    size and scale factor, and returns boxes in original pixels, scores, labels and 28x28 mask
    probabilities; gnhub.runtime (onnxruntime, numpy, OpenCV) preprocesses and pastes the masks
    as gnhub does. By default the export is verified stage by stage against the PyTorch model on
    the built-in images; a failed verification writes nothing. Batch size 1, float32,
    mmdetection-convention models; needs `pip install 'gnhub[onnx]'`.
    """
    from .api import load
    from .export import export as run

    m = load(model)
    summary = run(m, out or Path(f"{m.config.name}-onnx"), opset=opset, verify=not no_verify, force=force,
                  log=lambda msg: click.echo(msg, err=True))
    state = "verified" if summary["verified"] else "NOT verified (--no-verify)"
    click.echo(f"{summary['output']}/model.onnx: opset {opset}, {summary['bytes'] / 2**20:.0f} MiB, {state}; "
               f"export {summary['export_seconds']:.0f} s, {summary['seconds']:.0f} s in all")


@cli.command("list")
@click.argument("pattern", required=False)
def list_(pattern):
    """List the zoo models (PATTERN: fnmatch wildcards, e.g. '*r101*')."""
    from .cache import cached
    from .zoo import list_models, models

    names = list_models(pattern)
    if not names:
        raise GnhubError(f"no zoo model matches {pattern!r}")
    for n in names:
        e = models()[n]
        depth = f"R-{e.depth}" if e.depth else "R-?"
        mark = "cached" if cached(e) else ""
        click.echo(f"{n:42s} {depth:6s} {e.source_format:9s} {e.schedule.split()[0]:8s} {e.results_text:28s} {mark}")


@cli.command()
@click.argument("name")
def info(name):
    """Show everything gnhub knows about zoo model NAME, or a model directory, or a raw checkpoint."""
    import dataclasses

    from .cache import cached, source_url
    from .zoo import get

    e = get(name)
    if e is not None:
        path = cached(e)
        data = {**dataclasses.asdict(e), "url": e.url, "download_url": source_url(e), "sha256_prefix": e.sha256_prefix,
                "hub_repo": e.hub_repo(), "cached": str(path) if path else None}
    elif Path(name).is_dir():
        from .layout import check_model_dir, tensor_shapes

        config = check_model_dir(name)
        shapes = tensor_shapes(Path(name))
        data = {**config.to_dict(), "tensors": len(shapes), "parameters": sum(math.prod(s) for s in shapes.values())}
        data.pop("classes")
    else:
        from concurrent.futures import ThreadPoolExecutor

        from .source import open_source

        with ThreadPoolExecutor(1) as pool:
            src = open_source(name, "auto", check_hash=False, pool=pool)
            data = {"format": src.converter.DESCRIPTION, "tensors": len(src.tensors), "sha256": src.sha256.result(),
                    "version": src.converter.meta_version(src.obj), "settings": src.settings,
                    "preprocess_from": src.preprocess_from}
    click.echo(json.dumps(data, indent=2, default=str))


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--name", help="The name users load it by [default: the zoo name, else the directory].")
def card(model_dir, name):
    """Render MODEL_DIR/README.md, the model card, from config.json, the zoo and verification.json."""
    from .cards import write_card

    click.echo(write_card(model_dir, name))


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every zoo model with a published download.")
@click.option("--keep-source", is_flag=True, help="Keep the downloaded upstream files in the cache too.")
def fetch(names, all_, keep_source):
    """Fill gnhub's cache with zoo models NAMES ahead of time (for a cluster's shared filesystem,
    or before going offline) and print where each one is.

    Each comes from the hub where published, else from its upstream file: downloaded (resumable),
    hash-checked, converted and verified. The cache is GNHUB_CACHE (default ~/.cache/gnhub).
    """
    from .hub import HubSettings, resolve
    from .zoo import get, list_models, suggest

    if all_:
        names = [n for n in list_models() if get(n).url]
    if not names:
        raise GnhubError("name the zoo models to fetch (`gnhub list`), or pass --all")
    for n in names:
        if get(n) is None:
            close = suggest(n)
            raise GnhubError(f"{n}: not a zoo model" + (f"; did you mean {', '.join(close)}?" if close else ""))
    for n in names:
        click.echo(f"{n}: {resolve(n, HubSettings(keep_source=keep_source))}")


@cli.command("cache")
@click.argument("action", type=click.Choice(["list", "rm"]), default="list")
@click.argument("names", nargs=-1)
def cache_(action, names):
    """List what gnhub's cache holds (sizes), or remove NAMES from it (`gnhub cache rm NAME`)."""
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
    click.echo(f"{len(rows)} entries, {sum(r['bytes'] for r in rows) / 2**20:.1f} MiB in {cache_dir()}")


_HUB_OPTIONS = [
    click.option("--hub-dir", help="Publish to / load from a directory hub (ORG/NAME/) [env GNHUB_HUB_DIR]."),
    click.option("--endpoint", help="Hub endpoint, for a mirror [env GNHUB_ENDPOINT, HF_ENDPOINT]."),
]


def _hub_options(fn):
    for option in reversed(_HUB_OPTIONS):
        fn = option(fn)
    return fn


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
def publish(model_dir, repo_id, private, revision, create_pr, dry_run, allow_unverified, export_dir, hub_dir, endpoint):
    """Upload MODEL_DIR (weights, config, verification, generated card) to a hub in one commit.

    With --onnx, the model's ONNX export goes into onnx/ of the same repository and the card
    says how to run it with ONNX Runtime (gnhub.runtime.load loads it by the same name). An
    unchanged directory makes no new commit. The token comes from HF_TOKEN or `hf auth login`
    and is never printed.
    """
    from .hub import check_repo_id

    check_repo_id(repo_id)
    from .cards import render_card
    from .hub import HubSettings, publishable, publishable_export
    from .hub import publish as run

    report = publishable(model_dir, allow_unverified)
    export_report = publishable_export(export_dir, model_dir, allow_unverified) if export_dir else None
    text = render_card(model_dir, export=export_report)
    if dry_run:
        files = sorted(p.name for p in model_dir.iterdir() if p.is_file() and p.name != "README.md")
        click.echo(f"would publish to {repo_id}: {', '.join(files)} + README.md (generated card, "
                   f"{len(text)} characters); verification {'passed' if report.get('passed') else 'missing/failed'}")
        return
    result = run(model_dir, repo_id, text, HubSettings(endpoint=endpoint, hub_dir=hub_dir), private=private,
                 revision=revision, create_pr=create_pr, export_dir=export_dir)
    state = "published" if result["changed"] else "unchanged, no new commit"
    click.echo(f"{repo_id}: {state} ({result['url']})")


@cli.command("publish-zoo")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@click.option("--org", default=None, help="Organisation of the hub repositories [env GNHUB_ORG, default gnhub].")
@click.option("--work-dir", type=click.Path(path_type=Path), default=Path("gnhub-zoo"), show_default=True)
@click.option("--no-check-hash", is_flag=True, help="Accept files whose sha256 differs from the published one.")
@_hub_options
def publish_zoo(folder, org, work_dir, no_check_hash, hub_dir, endpoint):
    """Convert, verify, card and publish every zoo model whose source file is in FOLDER."""
    from .cards import render_card
    from .convert import convert as run
    from .hub import HubSettings
    from .hub import publish as upload
    from .zoo import models

    settings = HubSettings(endpoint=endpoint, org=org, hub_dir=hub_dir).resolved()
    rows = []
    for name, entry in models().items():
        src = folder / entry.file
        if not src.is_file():
            continue
        try:
            out = work_dir / name
            s = run(src, out, force=True, check_hash=not no_check_hash,
                    log=lambda m, n=name: click.echo(f"{n}: {m}", err=True))
            r = upload(out, entry.hub_repo(settings.org), render_card(out, name), settings)
            rows.append((name, "published" if r["changed"] else "unchanged", f"{s['seconds']:.0f} s"))
        except GnhubError as e:
            rows.append((name, "FAILED", str(e)))
    if not rows:
        raise GnhubError(f"{folder}: none of the zoo's source files is there (`gnhub info NAME` shows file names)")
    for row in rows:
        click.echo(f"{row[0]:42s} {row[1]:10s} {row[2]}")
    if any(r[1] == "FAILED" for r in rows):
        raise GnhubError(f"{sum(r[1] == 'FAILED' for r in rows)} of {len(rows)} models failed")


@cli.command()
@click.option("-o", "--out", type=click.Path(path_type=Path), default=Path("gnhub-demo"), show_default=True)
def demo(out):
    """Run the whole pipeline on an embedded UNTRAINED model and the bundled sample images.

    Writes an mmdetection-format checkpoint with deterministic random weights, converts and
    verifies it, renders its card, publishes it to a directory hub, loads it back by name and
    predicts on the sample images. Nothing is downloaded; the detections are meaningless.
    """
    from .api import load
    from .cards import write_card
    from .convert import convert as run
    from .demo import DEMO_NAME, write_demo_checkpoint
    from .hub import HubSettings
    from .hub import publish as upload
    from .predict import predict_files
    from .samples import sample_images

    ckpt = write_demo_checkpoint(out)
    click.echo(f"1. checkpoint (mmdetection format, UNTRAINED weights): {ckpt}")
    s = run(ckpt, out / DEMO_NAME, force=True, log=lambda m: click.echo(f"   {m}"))
    click.echo(f"2. converted and verified: {s['output']} ({s['tensors']} tensors, {s['seconds']:.0f} s)")
    click.echo(f"3. model card: {write_card(s['output'])}")
    hub = HubSettings(hub_dir=str(out / "hub"))
    result = upload(Path(s["output"]), f"demo/{DEMO_NAME}", (Path(s["output"]) / "README.md").read_text(), hub)
    click.echo(f"4. published to a directory hub: {result['url']}")
    model = load(f"demo/{DEMO_NAME}", hub_dir=hub.hub_dir)
    click.echo(f"5. loaded by name: gnhub.load('demo/{DEMO_NAME}', hub_dir='{hub.hub_dir}')")
    summary = predict_files(model, sample_images(), out / "predictions")
    click.echo(f"6. predictions on {summary['images']} sample images: {summary['out']}/ (*.png, *.json)")


def _terminate(signum, frame):
    raise KeyboardInterrupt  # so that temporary outputs are removed on the way out


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        cli(standalone_mode=False)
    except GnhubError as e:
        click.echo(f"error: {e}", err=True)
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
