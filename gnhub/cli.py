"""The `gnhub` command: each subcommand parses its arguments and calls the library."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from . import __version__
from .errors import GnhubError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gnhub")
def cli():
    """Group Normalization Mask R-CNN checkpoints (mmdetection, Detectron) in plain PyTorch.

    \b
    gnhub convert CKPT      checkpoint -> model directory (model.safetensors + config.json)
    gnhub predict IMAGES    masks, boxes and classes: overlay PNGs + COCO-format JSON
    gnhub demo              the whole pipeline on an untrained embedded model
    """


@cli.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), help="Output directory [default: ./NAME].")
@click.option("--format", "fmt", default="auto", show_default=True, help="Source format: auto or mmdet.")
@click.option("--name", help="Model name [default: the zoo name, else the file name].")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True)
@click.option("--no-check-hash", is_flag=True, help="Accept a file whose name's sha256 prefix does not match.")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@click.option("--no-verify", is_flag=True, help="Skip the stage-by-stage comparison with the source.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def convert(src, out, fmt, name, dtype, no_check_hash, force, no_verify, as_json):
    """Convert checkpoint SRC into a gnhub model directory.

    By default the converted model is verified against an independent forward of SRC on the
    built-in images (about a minute for R-50 on 2 cores); verification.json and
    golden.safetensors are written beside the weights. A failed verification writes nothing.
    """
    from .convert import convert as run

    log = (lambda msg: None) if as_json else (lambda msg: click.echo(msg, err=True))
    log(f"converting {src} ...")
    s = run(src, out, fmt=fmt, name=name, dtype=dtype, check_hash=not no_check_hash, force=force,
            verify=not no_verify, log=log)
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
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write the full report here.")
def verify(model, source, images, tolerance, json_out):
    """Check that MODEL (a directory or zoo name) computes what its source computed.

    With --source, MODEL and an independent forward over SRC's own tensors run on the built-in
    images (plus any --image) and every stage is compared: backbone, FPN levels, RPN maps,
    proposals, RoI logits and deltas, detections and masks. Without it, MODEL is compared with
    the golden outputs stored at conversion. Exits 0 only if every stage is within tolerance.
    """
    from .api import load
    from .verify import run_verify

    report, names = run_verify(load(model), model, source, [str(i) for i in images], tolerance)
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
@click.option("-m", "--model", "model_path", required=True, help="Model directory.")
@click.option("-o", "--out", type=click.Path(path_type=Path), default=Path("predictions"), show_default=True)
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or mps.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True)
def predict(images, model_path, out, batch_size, device, dtype):
    """Detect and segment objects in IMAGES (files, folders or glob patterns).

    Writes NAME.png (masks, boxes, classes and scores drawn) and NAME.json per image, and
    results.json with all detections in COCO results format (RLE masks).
    """
    from .api import load
    from .convert import DTYPES
    from .predict import expand_inputs, predict_files

    paths = expand_inputs(list(images))
    model = load(model_path, device=device).to(DTYPES[dtype])
    with click.progressbar(length=len(paths), label="predicting", file=sys.stderr) as bar:
        summary = predict_files(model, paths, out, batch_size, progress=bar.update)
    for reason in summary["skipped"]:
        click.echo(f"warning: skipped {reason}", err=True)
    click.echo(
        f"{summary['images']} images ({summary['images_per_second']} images/s), "
        f"{summary['detections']} detections, {len(summary['skipped'])} skipped -> {summary['out']}/"
    )


@cli.command()
@click.option("-o", "--out", type=click.Path(path_type=Path), default=Path("gnhub-demo"), show_default=True)
def demo(out):
    """Run the whole pipeline on an embedded UNTRAINED model and the bundled sample images.

    Writes an mmdetection-format checkpoint with deterministic random weights, converts it and
    predicts on the sample images. The detections are meaningless: the weights are not trained.
    """
    from .api import load
    from .convert import convert as run
    from .demo import write_demo_checkpoint
    from .predict import predict_files
    from .samples import sample_images

    ckpt = write_demo_checkpoint(out)
    click.echo(f"1. checkpoint (mmdetection format, UNTRAINED weights): {ckpt}")
    s = run(ckpt, out / "model", force=True)
    click.echo(f"2. converted model: {s['output']} ({s['tensors']} tensors, {s['seconds']:.1f} s)")
    summary = predict_files(load(s["output"]), sample_images(), out / "predictions")
    click.echo(f"3. predictions on {summary['images']} sample images: {summary['out']}/ (*.png, *.json)")


def main() -> None:
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
