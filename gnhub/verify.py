"""Stage-by-stage verification of a gnhub model against a reference: the source's own forward
(at conversion, and `gnhub verify MODEL --source SRC`), or the golden outputs stored beside the
model. The comparison itself is gnhub/compare.py's."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import torch
from torch import Tensor

from .bfloat16_check import verify_bfloat16
from .compare import (
    DENSE_STAGES,
    GOLDEN_STAGES,
    box_offset,
    compare,
    dtype_name,
    failure_message,
    float32_model,
    images_for,
    run_model,
    with_input_sample,
)
from .converters import RenameTable
from .errors import GnhubError
from .files import scratch_dir
from .layout import GOLDEN_FILE, check_model_dir
from .modeling import GNModel
from .reference import REFERENCES
from .reference.detectron2_framework import Detectron2Framework, detectron2_version, zoo_config
from .reference.mmdet_framework import MMDetFramework, mmdet_version, packaged_config
from .reference.paddle_framework import PaddleFramework, paddle_config, paddle_setup
from .report import Report
from .source import open_source
from .weights import read_golden

__all__ = ["reference_for", "run_verify", "source_names", "verify_against", "verify_conversion", "verify_golden"]


def source_names(source) -> dict[str, str]:
    """gnhub tensor name -> the source checkpoint's own name for it."""
    table = RenameTable(source.converter, source.layout)
    names = {table.to_gnhub(k): k for k, v in source.tensors.items() if v is not None and not table.is_dropped(k)}
    names.pop(None, None)
    return names


def verify_against(
    source, model: GNModel, images, tolerance: str | None = None, first_failure: bool = False, framework=None,
    against: str | None = None,
):
    """Compares `model` with the source's own forward on each image: (report, golden tensors).

    The model runs in float32 on CPU with its weights as stored. The mapping is checked against
    the source with its weights rounded to the model's dtype, at float32 tolerances, so every
    stage must agree (against a `framework`'s own float32 run, at "float32-framework": the RoI
    heads' outputs within 2e-4); for half-precision weights the loss of precision is checked too, as
    `precision.*` stages: the dense stages against the full-precision source at the tolerances
    of `tolerance` (default: the weights' dtype). Golden tensors come from the rounded source.
    With `first_failure`, images after the first one with a failing stage are skipped.
    `framework(tensors, settings)` replaces the format's own reference forward (`--against`).
    """
    stored = dtype_name(model)
    tolerance = tolerance or stored
    mapping = reference_for(source, model.dtype, framework)
    full = reference_for(source, torch.float32, framework) if stored != "float32" else None
    mapped = "float32" if full else tolerance  # the mapping's tolerances
    if framework is not None and mapped == "float32":
        mapped = "float32-framework"  # another framework's own float32 run (report.TOLERANCES)
    model = float32_model(model)
    checks, golden = [], {}
    for name, rgb in images:
        got = run_model(model, rgb)
        ref = mapping(rgb)
        checks += compare(name, got, ref, mapped, box_offset(model))
        ref = with_input_sample(ref)
        if full is not None:
            exact = full(rgb)
            for c in compare(name, got, {k: exact[k] for k in DENSE_STAGES if k in exact}, tolerance):
                c.stage = "precision." + c.stage
                checks.append(c)
        golden.update({f"{name}/{k}": ref[k].contiguous() for k in GOLDEN_STAGES[model.task]})
        if first_failure and not all(c.passed for c in checks):
            break
    return Report(checks, tolerance if full else mapped, against or f"source {source.path.name}"), golden


def verify_conversion(source, model: GNModel, log=lambda msg: None) -> tuple[Report, dict[str, Tensor]]:
    """A conversion's own verification, a long step: first the source file is made sure to be the
    one its name promises (its sha256), then `verify_against` on the built-in images, stopping at
    the first image that fails; a failure raises, naming the stage and the source tensors to check."""
    source.checked_sha256()
    log("verifying against the source on the built-in images ...")
    report, golden = verify_against(source, model, images_for(None), first_failure=True)
    if not report.passed:
        raise GnhubError(f"{source.path}: conversion does not verify, nothing written: "
                         f"{failure_message(report, source_names(source))}")
    return report, golden


def verify_golden(model: GNModel, model_dir: Path, dtype: str | None = None) -> Report:
    """The model against the golden outputs stored beside it: every golden stage of every
    built-in image must be there, and is compared."""
    path = Path(model_dir) / GOLDEN_FILE
    if not path.is_file():
        raise GnhubError(f"{model_dir}: no {GOLDEN_FILE}; pass `source` with the original checkpoint")
    stored = read_golden(path, "not a readable safetensors file", "download or convert the model again")
    by_name = dict(images_for(None))
    stages = GOLDEN_STAGES[model.task]
    missing = [f"{n}/{s}" for n in by_name for s in stages if f"{n}/{s}" not in stored]
    if missing:
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        raise GnhubError(f"{path}: golden outputs incomplete: {', '.join(missing[:4])}{more} missing (every stage "
                         f"{', '.join(stages)} of each built-in image is needed); convert the model again")
    checks = []
    dtype = dtype or "float32"  # golden outputs come from the source with the model's own weights
    model = float32_model(model)
    for name, rgb in by_name.items():
        ref = {s: stored[f"{name}/{s}"] for s in stages}
        checks += compare(name, run_model(model, rgb), ref, dtype, box_offset(model))
    return Report(checks, dtype, "golden outputs")


def reference_for(source, dtype: torch.dtype = torch.float32, framework=None):
    """The independent forward for a source's format over its own tensors (rounded to `dtype`)."""
    tensors = {k: v.to(dtype) if isinstance(v, Tensor) and v.is_floating_point() else v
               for k, v in source.tensors.items()}
    return (framework or REFERENCES[source.converter.NAME])(tensors, source.settings)


def _config_run(config_of, runner, title):
    """`--against` a framework that runs in gnhub's interpreter from its own config of the zoo
    model (or `--framework-config`)."""
    def build(version, source, framework_config, stack):
        config = Path(framework_config) if framework_config else config_of(getattr(source.entry, "name", None))
        return (lambda tensors, settings: runner(tensors, settings, config)), f"{title} {version} ({config.name})"
    return build


def _paddle_run(setup, source, framework_config, stack):
    """`--against paddle`: PaddleDetection in paddle's own interpreter, from its configs/gn config of
    the checkpoint's kind, exchanging files in a scratch folder of gnhub's."""
    if framework_config:
        raise GnhubError(f"{framework_config}: `framework_config` is for mmdet and detectron2; PaddleDetection runs "
                         "its own configs/gn config of the checkpoint's kind: leave it out")
    python, ppdet, version = setup
    scratch = stack.enter_context(scratch_dir())
    name = paddle_config(getattr(source.entry, "name", None), source.tensors)
    return (lambda tensors, settings: PaddleFramework(tensors, settings, python, ppdet, name, scratch,
                                                      source.converter.LINEAR)), f"{version}, configs/gn/{name}.yml"


# `--against`: a framework itself, where it is installed: (its title, its check (its version or one
# clear error, from the paddle environment's python and PaddleDetection folder where it needs them),
# the runner of the source's tensors and its label)
AGAINST = {"mmdet": ("mmdetection", lambda python, ppdet: mmdet_version(),
                     _config_run(packaged_config, MMDetFramework, "mmdetection")),
           "detectron2": ("detectron2", lambda python, ppdet: detectron2_version(),
                          _config_run(zoo_config, Detectron2Framework, "detectron2")),
           "paddle": ("PaddleDetection", paddle_setup, _paddle_run)}


def run_verify(
    model_dir: Path, source_path, extra_images, tolerance, against: str = "gnhub",
    framework_config: Path | None = None, paddle_python: Path | None = None, paddle_detection: Path | None = None,
    dtype: str | None = None,
) -> tuple[Report, dict | None]:
    """`gnhub verify`: the model in `model_dir` against the source when given, else against its
    golden outputs. The weights are hashed in full (never taken from the hash store).

    `against` (a key of AGAINST) runs that framework itself on the source's tensors instead of
    gnhub's reference forward, built from `framework_config` or its own config of the zoo model
    (PaddleDetection: in the interpreter `paddle_python` with its source `paddle_detection`).
    Returns the report and, with a source, the gnhub -> source tensor names for hints.
    `dtype="bfloat16"`: `verify_bfloat16` on the built-in and extra images instead."""
    if dtype is not None and (source_path is not None or tolerance or against != "gnhub"):
        raise GnhubError("`dtype` checks the model's own bfloat16 arithmetic against its own float32 forward: "
                         "drop `source`, `tolerance` and `against` (run those checks separately)")
    check_model_dir(model_dir, full_hash=True)
    model = GNModel.from_pretrained(model_dir)
    if dtype == "bfloat16":
        return verify_bfloat16(model, images_for(extra_images)), None
    if source_path is None:
        if extra_images or against != "gnhub":
            raise GnhubError("`images` and `against` need `source`: golden outputs exist only for the built-in images")
        return verify_golden(model, Path(model_dir), tolerance), None
    framework = label = None
    if against != "gnhub":
        title, check, build = AGAINST[against]
        setup = check(paddle_python, paddle_detection)
    with ThreadPoolExecutor(1) as pool:
        source = open_source(source_path, "auto", check_hash=False, pool=pool)
    if against != "gnhub" and source.converter.NAME != against:
        raise GnhubError(f"{source.path}: `against={against}` needs a {title} checkpoint, "
                         f"not a {source.converter.NAME} one")
    with ExitStack() as stack:
        if against != "gnhub":
            framework, label = build(setup, source, framework_config, stack)
            label = f"{label} on {source.path.name}"
        report, _ = verify_against(source, model, images_for(extra_images), tolerance, first_failure=True,
                                   framework=framework, against=label)
    return report, source_names(source)
