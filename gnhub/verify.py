"""Stage-by-stage comparison of a gnhub model with a reference: the source's own forward, or the
golden outputs stored beside the model at conversion."""
from __future__ import annotations

import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import stages as S
from .converters import RenameTable
from .errors import GnhubError
from .layout import GOLDEN_FILE, check_model_dir
from .modeling import GNModel, with_weights
from .modeling.targets import box_iou
from .modeling.transform import load_image
from .reference import REFERENCES
from .report import TOLERANCES, Report, StageCheck
from .samples import sample_images
from .source import open_source
from .weights import read_golden

__all__ = ["DENSE_STAGES", "GOLDEN_STAGES", "INPUT_SAMPLE", "NONFINITE", "box_offset", "compare", "dtype_name",
    "failure_message", "float32_model", "golden_of", "hint", "images_for", "reference_for", "run_model", "run_verify",
    "source_names", "verify_against", "verify_golden", "verify_model", "with_input_sample"]

DENSE_STAGES = S.DENSE
# What to look at when a stage differs: gnhub tensor prefixes (or a config section).
_HINTS = {
    "input": ["config.json preprocess (mean, std, channel_order, max_size)"],
    **{f"backbone.c{i}": ["backbone.conv1", "backbone.gn1"] + [f"backbone.layer{j}" for j in range(1, i)]
       for i in range(2, 6)},
    **{f"fpn.p{i}": [f"fpn.lateral.{j}" for j in range(i - 2, 4)] + [f"fpn.output.{min(i - 2, 3)}"]
       for i in range(2, 7)},
    "rpn": ["rpn.conv", "rpn.objectness", "rpn.deltas", "config.json rpn"],
    "proposals": ["rpn.conv", "rpn.objectness", "rpn.deltas", "config.json rpn"],
    "roi": ["roi_heads.box_head", "config.json roi_heads"],
    "detections": ["roi_heads.box_head.cls_score", "roi_heads.box_head.bbox_pred", "config.json roi_heads"],
    "mask": ["roi_heads.mask_head", "config.json roi_heads.mask_threshold"],
    "logits": ["fc", "backbone.layer4"],
}
# The stages kept as golden outputs (small: no full-resolution feature maps; the input as every
# 8th pixel), per task. Every one is required, for every built-in image.
_DETECTOR_GOLDEN = (S.INPUT_SAMPLE, f"{S.FPN}6", S.PROPOSALS, S.PROPOSAL_SCORES, S.BOXES, S.SCORES, S.LABELS)
GOLDEN_STAGES = {
    "instance-segmentation": (*_DETECTOR_GOLDEN, S.MASK_LOGITS),
    "object-detection": _DETECTOR_GOLDEN,
    "image-classification": (S.INPUT_SAMPLE, S.LOGITS),
}
INPUT_SAMPLE = 8  # golden `input.sample`: input[..., ::8, ::8]


NONFINITE = "the reference itself holds NaN or Inf"


def _largest(x: Tensor) -> float:
    """max |x| in one pass, no temporary; NaN or Inf anywhere make it NaN or Inf."""
    return float(torch.linalg.vector_norm(x.float(), math.inf)) if x.numel() else 0.0


def _dense(image: str, stage: str, got: Tensor, ref: Tensor, tol: float) -> StageCheck:
    if got.shape != ref.shape:
        return StageCheck(image, stage, False, None, None, f"shape {tuple(ref.shape)}",
                          f"shape {tuple(got.shape)} != {tuple(ref.shape)}")
    scale = _largest(ref)
    if not math.isfinite(scale):
        return StageCheck(image, stage, False, None, None, f"rel <= {tol:g}", NONFINITE)
    max_abs = _largest(got.float() - ref.float())
    rel = max_abs / scale if scale else max_abs
    return StageCheck(image, stage, rel <= tol, max_abs, rel, f"rel <= {tol:g}")


def _iou(a: Tensor, b: Tensor, offset: float) -> Tensor:
    """IoU of every pair in float64 with no floor under the union (mmdetection's 1e-6 px², right for
    training targets, gave a box 1e-4 px wide an IoU of 0.01 with itself); equal boxes have IoU 1,
    even where their area is 0."""
    pad = torch.tensor([0.0, 0.0, offset, offset], dtype=torch.float64)
    a, b = a.double() + pad, b.double() + pad
    return torch.where((a[:, None] == b[None]).all(dim=-1), 1.0, box_iou(a, b, floor=0.0))


def _match(got: dict, ref: dict, boxes: str, scores: str, thr: float, labels: str | None = None, offset=0.0,
           px: float = 0.0):
    """For each of the better-scored half of the reference boxes, the gnhub box with IoU >= thr
    (and the same label) whose score is closest: (reference indices, gnhub indices, found).

    Near-duplicate boxes (across FPN levels, across classes) are told apart by their scores;
    the lower half is left out because near-tied boxes at a top-k cut-off may swap in and out.
    `offset` 1 measures widths as x2 - x1 + 1 (Detectron's boxes, which may be one pixel wide).
    `px` > 0 also matches boxes whose corners all lie within `px` pixels (boxes under a pixel
    wide, where a thousandth of a pixel moves the IoU by a percent).
    """
    n, m = (len(ref[boxes]) + 1) // 2, len(got[boxes])
    r = torch.arange(n)
    if not n or not m:
        return r, torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.bool)
    ok = _iou(ref[boxes][:n], got[boxes], offset) >= thr
    if px:
        ok |= (ref[boxes][:n, None].float() - got[boxes][None].float()).abs().amax(dim=-1) <= px
    if labels:
        ok &= ref[labels][:n, None] == got[labels][None, :]
    cost = (ref[scores][:n].float()[:, None] - got[scores].float()[None, :]).abs()
    idx = torch.where(ok, cost, torch.inf).argmin(dim=1)
    return r, idx, ok.any(dim=1)


def _matched(image, stage, got_scores, ref_scores, ok, tol, counts) -> StageCheck:
    frac = float(ok.float().mean()) if len(ok) else 1.0
    diff = float((got_scores - ref_scores).abs().max()) if len(ref_scores) else 0.0
    return StageCheck(image, stage, frac >= tol["matched"] and diff <= tol["score"], diff, 1 - frac,
                      f"matched >= {tol['matched']:g} at IoU {tol['iou']:g}, score <= {tol['score']:g}",
                      f"{counts}; {frac:.1%} of the better half matched")


def compare(
    image: str, got: dict[str, Tensor], ref: dict[str, Tensor], dtype: str, offset: float = 0.0
) -> list[StageCheck]:
    """Every stage present in both, in pipeline order; `offset`: see `_match`."""
    tol = TOLERANCES[dtype]
    checks = [_dense(image, s, got[s], ref[s], tol["dense"]) for s in DENSE_STAGES if s in ref and s in got]
    if S.PROPOSALS in ref:
        r, idx, ok = _match(got, ref, S.PROPOSALS, S.PROPOSAL_SCORES, tol["iou"], offset=offset, px=tol.get("px", 0))
        checks.append(_matched(image, S.PROPOSALS, got[S.PROPOSAL_SCORES][idx[ok]], ref[S.PROPOSAL_SCORES][r[ok]],
                               ok, tol, f"{len(ref['proposals'])} reference / {len(got['proposals'])} gnhub"))
        if "roi.cls_logits" in ref and ok.any():
            for s in ("roi.cls_logits", "roi.box_deltas"):
                checks.append(_dense(image, s, got[s][idx[ok]], ref[s][r[ok]], tol["dense"]))
    if S.BOXES in ref:
        r, idx, ok = _match(got, ref, S.BOXES, S.SCORES, tol["iou"], labels=S.LABELS, offset=offset,
                            px=tol.get("px", 0))
        checks.append(_matched(image, S.DETECTIONS, got[S.SCORES][idx[ok]], ref[S.SCORES][r[ok]], ok, tol,
                               f"{len(ref['boxes'])} reference / {len(got['boxes'])} gnhub"))
        if ok.any() and S.MASK_LOGITS in ref and S.MASK_LOGITS in got:
            checks.append(_dense(image, S.MASK_LOGITS, got[S.MASK_LOGITS][idx[ok]], ref[S.MASK_LOGITS][r[ok]],
                                 tol["dense"]))
            if S.MASKS in ref:
                a, b = got[S.MASKS][idx[ok]], ref[S.MASKS][r[ok]]  # IoU over all matched masks: a pixel
                union = (a | b).flatten(1).sum(1)  # at the threshold may flip a tiny mask's own IoU
                iou = torch.where(union > 0, (a & b).flatten(1).sum(1) / union.clamp(min=1), 1.0)  # empty = empty
                total = float((a & b).sum() / (a | b).sum().clamp(min=1)) if (a | b).any() else 1.0
                checks.append(StageCheck(image, S.MASKS, total >= tol["mask_iou"], None, 1 - total,
                                         f"mask IoU >= {tol['mask_iou']:g}",
                                         f"mask IoU {total:.4f} (lowest of one mask {float(iou.min()):.4f})"))
    return checks


def hint(stage: str, names: dict[str, str] | None = None) -> str:
    """Which tensors to check for a stage; with `names` (gnhub -> source), their source names."""
    stage = stage.removeprefix("precision.")
    head = stage.split(".")[0]
    key = stage if stage in _HINTS else head if head in _HINTS else "mask" if "mask" in stage else "detections"
    items = []
    for prefix in _HINTS[key]:
        sources = [v for k, v in (names or {}).items() if k.startswith(prefix + ".") and v]
        common = os.path.commonprefix(sources).rsplit(".", 1)[0] if sources else ""
        items.append(f"{prefix} <- {common}" if common else prefix)
    return "check " + ", ".join(items)


def source_names(source) -> dict[str, str]:
    """gnhub tensor name -> the source checkpoint's own name for it."""
    table = RenameTable(source.converter, source.layout)
    names = {table.to_gnhub(k): k for k, v in source.tensors.items() if v is not None and not table.is_dropped(k)}
    names.pop(None, None)
    return names


def float32_model(model: GNModel) -> GNModel:
    """The model with its stored (possibly half precision) weights widened to float32, on CPU."""
    if model.dtype == torch.float32 and model.device.type == "cpu":
        return model
    return with_weights(model.config, {k: v.float().cpu() for k, v in model.state_dict().items()}, "model")


def box_offset(model: GNModel) -> float:
    """What the model's convention adds to x2 - x1 to measure a box's width."""
    return model.convention.width_offset


def run_model(model: GNModel, image: np.ndarray) -> dict[str, Tensor]:
    return with_input_sample({k: v.cpu() for k, v in model.inspect(image).items()})


def with_input_sample(stages: dict[str, Tensor]) -> dict[str, Tensor]:
    """Adds `input.sample`, every INPUT_SAMPLE-th pixel of the network input (golden outputs keep it)."""
    stages[S.INPUT_SAMPLE] = stages[S.INPUT][..., ::INPUT_SAMPLE, ::INPUT_SAMPLE].contiguous()
    return stages


def images_for(extra: list[str] | None) -> list[tuple[str, np.ndarray]]:
    paths = [*sample_images(), *(extra or [])]
    return [(Path(p).name, load_image(p)) for p in paths]


def dtype_name(model: GNModel) -> str:
    return str(model.dtype).replace("torch.", "")


def verify_against(
    source, model: GNModel, images, tolerance: str | None = None, first_failure: bool = False, framework=None,
    against: str | None = None,
):
    """Compares `model` with the source's own forward on each image: (report, golden tensors).

    The model runs in float32 on CPU with its weights as stored. The mapping is checked against
    the source with its weights rounded to the model's dtype, at float32 tolerances, so every
    stage must agree; for half-precision weights the loss of precision is checked too, as
    `precision.*` stages: the dense stages against the full-precision source at the tolerances
    of `tolerance` (default: the weights' dtype). Golden tensors come from the rounded source.
    With `first_failure`, images after the first one with a failing stage are skipped.
    `framework(tensors, settings)` replaces the format's own reference forward (`--against`).
    """
    stored = dtype_name(model)
    tolerance = tolerance or stored
    mapping = reference_for(source, model.dtype, framework)
    full = reference_for(source, torch.float32, framework) if stored != "float32" else None
    model = float32_model(model)
    checks, golden = [], {}
    for name, rgb in images:
        got = run_model(model, rgb)
        ref = mapping(rgb)
        checks += compare(name, got, ref, "float32" if full else tolerance, box_offset(model))
        ref = with_input_sample(ref)
        if full is not None:
            exact = full(rgb)
            for c in compare(name, got, {k: exact[k] for k in DENSE_STAGES if k in exact}, tolerance):
                c.stage = "precision." + c.stage
                checks.append(c)
        golden.update({f"{name}/{k}": ref[k].contiguous() for k in GOLDEN_STAGES[model.task]})
        if first_failure and not all(c.passed for c in checks):
            break
    return Report(checks, tolerance, against or f"source {source.path.name}"), golden


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


def golden_of(model: GNModel) -> dict[str, Tensor]:
    """Golden outputs of a model without a source to compare with (a fine-tuned one): its own
    float32 stages on the built-in images, which `gnhub verify` repeats on another machine."""
    model = float32_model(model)
    stages = GOLDEN_STAGES[model.task]
    return {f"{name}/{k}": v.contiguous() for name, rgb in images_for(None)
            for k, v in run_model(model, rgb).items() if k in stages}


def reference_for(source, dtype: torch.dtype = torch.float32, framework=None):
    """The independent forward for a source's format over its own tensors (rounded to `dtype`)."""
    tensors = {k: v.to(dtype) if isinstance(v, Tensor) and v.is_floating_point() else v
               for k, v in source.tensors.items()}
    return (framework or REFERENCES[source.converter.NAME])(tensors, source.settings)


def failure_message(report: Report, names: dict[str, str] | None = None) -> str:
    """The first stage that diverges, by how much, and which tensors to check."""
    c = report.first_failure()
    if c is None:
        return "every stage within tolerance" if report.checks else "nothing was compared"
    if c.detail == NONFINITE:
        return (f"the reference gives NaN or Inf at {c.stage} on {c.image}: the source is corrupt (NaN or Inf "
                f"weights; {hint(c.stage, names).removeprefix('check ')}); download it again")
    if c.stage.startswith("input"):
        return (f"{c.stage} differs on {c.image} ({c.detail or f'rel {c.max_rel:.3g}'}): the network input itself, "
                f"so the preprocessing is not the source's: {hint(c.stage, names)}")
    amount = f"max abs {c.max_abs:.3g}, " if c.max_abs is not None else ""
    rel = f"rel {c.max_rel:.3g}" if c.max_rel is not None else ""
    detail = f"; {c.detail}" if c.detail else ""
    return (f"{c.stage} differs on {c.image} ({amount}{rel}; needs {c.tolerance}{detail}): "
            f"{hint(c.stage, names)}")


def run_verify(
    model_dir: Path, source_path, extra_images, tolerance, against: str = "gnhub", mmdet_config: Path | None = None,
) -> tuple[Report, dict | None]:
    """`gnhub verify`: the model in `model_dir` against the source when given, else against its
    golden outputs. The weights are hashed in full (never taken from the hash store).

    `against="mmdet"` runs mmdetection itself on the source's tensors instead of gnhub's
    reference forward. Returns the report and, with a source, the gnhub -> source tensor names
    for hints."""
    check_model_dir(model_dir, full_hash=True)
    model = GNModel.from_pretrained(model_dir)
    if source_path is None:
        if extra_images or against != "gnhub":
            raise GnhubError("`images` and `against` need `source`: golden outputs exist only for the built-in images")
        return verify_golden(model, Path(model_dir), tolerance), None
    framework = label = None
    if against == "mmdet":
        from .reference.mmdet_framework import MMDetFramework, mmdet_version, packaged_config

        version = mmdet_version()
    with ThreadPoolExecutor(1) as pool:
        source = open_source(source_path, "auto", check_hash=False, pool=pool)
    if against == "mmdet":
        if source.converter.NAME != "mmdet":
            raise GnhubError(f"{source.path}: `against=mmdet` needs an mmdetection checkpoint, "
                             f"not a {source.converter.NAME} one")
        config = Path(mmdet_config) if mmdet_config else packaged_config(getattr(source.entry, "name", None))
        framework = lambda tensors, settings: MMDetFramework(tensors, settings, config)
        label = f"mmdetection {version} ({config.name}) on {source.path.name}"
    report, _ = verify_against(source, model, images_for(extra_images), tolerance, first_failure=True,
                               framework=framework, against=label)
    return report, source_names(source)


def verify_model(model: str | Path, source=None, *, images=(), tolerance: str | None = None, against: str = "gnhub",
                 mmdet_config: Path | None = None, json_out: Path | None = None, settings=None):
    """`gnhub verify`: an export directory against its golden outputs on onnxruntime; anything
    else gnhub.load takes with `run_verify`. With `json_out`, the full report is written there
    (its folder checked first). Returns (report, gnhub -> source tensor names or None)."""
    from .files import check_output_file, write_atomic
    from .layout import is_export_dir
    from .resolve import resolve

    if json_out:
        check_output_file(json_out, "--json")
    if is_export_dir(Path(model)):
        if source or images or against != "gnhub":
            raise GnhubError(f"{model}: an ONNX export is checked against its golden outputs only; drop `source`, "
                             "`images` and `against`")
        from .export import verify_export_golden

        report, names = verify_export_golden(Path(model)), None
    else:  # a zoo name or hf-hub: id downloads the golden outputs too
        report, names = run_verify(resolve(model, settings), source, [str(i) for i in images], tolerance, against,
                                   mmdet_config)
    if json_out:
        text = json.dumps(report.to_dict(), indent=1) + "\n"
        write_atomic(Path(json_out), lambda t: t.write_text(text, encoding="utf-8"), "--json")
    return report, names
