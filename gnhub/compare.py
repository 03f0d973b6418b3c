"""Comparing a model's stages with a reference's, the one matcher verification and export share:
dense stages by relative error, proposals and detections matched by IoU, label and closest score,
masks by IoU; the built-in images every check runs on, the golden stages kept beside a model, and
what to say when a stage differs. gnhub/verify.py compares with a source or golden outputs,
gnhub/export.py an ONNX graph with its PyTorch model; both through here."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from . import stages as S
from .modeling import GNModel, with_weights
from .modeling.targets import box_iou
from .modeling.transform import load_image
from .report import TOLERANCES, Report, StageCheck
from .samples import sample_images

__all__ = ["DENSE_STAGES", "GOLDEN_STAGES", "INPUT_SAMPLE", "NONFINITE", "box_offset", "compare", "dtype_name",
    "failure_message", "float32_model", "golden_of", "hint", "images_for", "run_model", "with_input_sample"]

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
    "sem_seg": ["sem_seg_head", "config.json semantic"],
    "panoptic_seg": ["sem_seg_head", "roi_heads.mask_head", "config.json semantic"],
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
                checks.append(_dense(image, s, got[s][idx[ok]], ref[s][r[ok]], tol.get("roi", tol["dense"])))
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
    if S.PANOPTIC in ref and S.PANOPTIC in got:  # a panoptic model: semantic labels, segments by their class
        checks.append(_agreement(image, S.SEM_SEG, got[S.SEM_SEG], ref[S.SEM_SEG], tol, "labels"))
        checks.append(_agreement(image, S.PANOPTIC, _segment_classes(got), _segment_classes(ref), tol,
                                 f"{len(ref[S.SEGMENTS])} reference / {len(got[S.SEGMENTS])} gnhub segments; pixels' "
                                 "segment classes"))
    return checks


def _agreement(image: str, stage: str, got: Tensor, ref: Tensor, tol, what: str) -> StageCheck:
    """The share of pixels where two label maps agree, at least the mask IoU tolerance."""
    if got.shape != ref.shape:
        return StageCheck(image, stage, False, None, None, f"shape {tuple(ref.shape)}",
                          f"shape {tuple(got.shape)} != {tuple(ref.shape)}")
    frac = float((got == ref).float().mean()) if ref.numel() else 1.0
    return StageCheck(image, stage, frac >= tol["mask_iou"], None, 1 - frac, f"agreement >= {tol['mask_iou']:g}",
                      f"{what}: {frac:.4%} of pixels agree")


def _segment_classes(stages: dict[str, Tensor]) -> Tensor:
    """Each pixel's segment as (thing or stuff, category): 0 where no segment (ids differ with order)."""
    seg, segments = stages[S.PANOPTIC].long(), stages[S.SEGMENTS].long()
    top = max(int(seg.max()) if seg.numel() else 0, int(segments[:, 0].max()) if len(segments) else 0)
    table = torch.zeros(top + 1, dtype=torch.long)
    if len(segments):
        table[segments[:, 0]] = 1 + segments[:, 2] + 100_000 * segments[:, 1]
    return table[seg]


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


def golden_of(model: GNModel) -> dict[str, Tensor]:
    """Golden outputs of a model without a source to compare with (a fine-tuned one): its own
    float32 stages on the built-in images, which `gnhub verify` repeats on another machine."""
    model = float32_model(model)
    stages = GOLDEN_STAGES[model.task]
    return {f"{name}/{k}": v.contiguous() for name, rgb in images_for(None)
            for k, v in run_model(model, rgb).items() if k in stages}


def failure_message(report: Report, names: dict[str, str] | None = None) -> str:
    """The first stage that diverges, by how much, and which tensors to check."""
    c = report.first_failure()
    if c is None:
        return "every stage within tolerance" if report.checks else "nothing was compared"
    if c.detail.startswith("not run"):
        return f"{c.stage} on {c.image}: {c.detail}"
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
