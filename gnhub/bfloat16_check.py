"""Does bfloat16 keep a model? Its bfloat16 arithmetic against its own float32 forward, stage by
stage, each stage teacher-forced (`gnhub verify MODEL --dtype bfloat16`)."""
from __future__ import annotations

import contextlib
import copy
import math

import torch
from torch import Tensor

from . import stages as S
from .compare import DENSE_STAGES, compare, float32_model, run_model
from .errors import GnhubError
from .modeling import GNModel
from .modeling import bfloat16 as bf
from .modeling.boxes import decode_boxes
from .modeling.targets import box_iou
from .report import Report, StageCheck

__all__ = ["bf16_depth", "bf16_tolerance", "verify_bfloat16"]

BF16_UNIT = 2.0 ** -8  # bfloat16's unit roundoff: an 8-bit significand (7 stored bits) rounded to nearest
BF16_K = 2.0  # tolerance factor over the random-walk estimate (see verify_bfloat16)


def bf16_depth(stage: str, model: GNModel) -> int:
    """How many bfloat16 roundings a teacher-forced stage holds on its longest path: the rounded
    input, and one per convolution, linear layer or sum whose output is stored in bfloat16."""
    cfg = model.config
    blocks = {2: 3, 3: 4, 4: {50: 6, 101: 23, 152: 36}.get(cfg.backbone.depth, 6), 5: 3}
    if stage.startswith(S.BACKBONE):
        i = int(stage[-1])
        return 1 + 3 * blocks[i] + (1 if i == 2 else 0)  # (stem conv) + three convs per bottleneck
    if stage.startswith(S.FPN):
        return 3 + (5 - min(int(stage[-1]), 5))  # lateral, output and the top-down sums above it
    if stage.startswith("rpn."):
        return 3  # 3x3 conv, 1x1 conv
    if stage.startswith("roi."):
        return 1 + cfg.roi_heads.num_convs + 2  # RoI features, convs, fc, the classifier or regressor
    return 1 + cfg.roi_heads.mask_num_convs + 2  # RoI features, convs, upsampling, logits


def bf16_tolerance(depth: int) -> float:
    return BF16_K * BF16_UNIT * math.sqrt(depth)


@contextlib.contextmanager
def _recording_heads(model: GNModel):
    """While a float32 forward runs: the RoIs each box head gets and its (logits, deltas), and
    the mask head's RoIs, labels and own-class logits."""
    rh, seen = model.roi_heads, {"rois": [], "box": [], "mask": None}
    hooks = [rh.box_pool.register_forward_pre_hook(lambda m, args: seen["rois"].append(args[1]))]
    hooks += [h.register_forward_hook(lambda m, args, out: seen["box"].append(out))
              for h in (rh.box_head, *rh.cascade_heads)]
    if rh.mask_head is not None:
        plain = rh.mask_logits

        def mask_logits(feats, rois, labels, dtype=None):
            seen["mask"] = (rois, labels, plain(feats, rois, labels, dtype))
            return seen["mask"][2]
        rh.mask_logits = mask_logits
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()
        rh.__dict__.pop("mask_logits", None)


def _teacher_forced(bf16: GNModel, ref: dict[str, Tensor], seen: dict) -> dict[str, Tensor]:
    """Each stage of the bfloat16 model on float32's own input to it, rounded to bfloat16 in the
    memory format the bfloat16 path keeps: C2 from the input, C3-C5 from float32's C2-C4 (the
    backbone's own forward, each stage's input replaced), P2-P6 from float32's C2-C5, the RPN
    maps from its P2-P6, each box head on its RoIs (float32's proposals; a cascade's later
    stages on float32's refined boxes) and the mask head on float32's detections and labels,
    RoIAligned from float32's P2-P5."""
    def rounded(t: Tensor) -> Tensor:
        return bf.network_layout(t.to(torch.bfloat16))

    c = [ref[f"{S.BACKBONE}{i}"] for i in range(2, 6)]
    p = [ref[f"{S.FPN}{i}"] for i in range(2, 7)]
    layers = [getattr(bf16.backbone, f"layer{i}") for i in range(2, 5)]
    inputs = [rounded(x) for x in c[:3]]
    hooks = [layer.register_forward_pre_hook(lambda m, args, x=x: (x,)) for layer, x in zip(layers, inputs)]
    bf16.prepare()
    try:
        with torch.inference_mode():
            got = S.levels(S.BACKBONE, bf16.backbone(rounded(ref[S.INPUT])))
    finally:
        for h in hooks:
            h.remove()
    rh = bf16.roi_heads
    with torch.inference_mode():
        got.update(S.levels(S.FPN, bf16.fpn([rounded(x) for x in c])))
        objectness, deltas = bf16.rpn.head([rounded(x) for x in p])
        got.update(S.levels(S.RPN_OBJECTNESS, objectness) | S.levels(S.RPN_DELTAS, deltas))
        feats = bf.roi_align_features([rounded(x) for x in p[:4]])
        for k, (head, rois) in enumerate(zip((rh.box_head, *rh.cascade_heads), seen["rois"])):
            got[f"roi{k}"] = head(rh.box_pool(feats, rois, torch.bfloat16))
        if seen["mask"] is not None:
            rois, labels, _ = seen["mask"]
            got[S.MASK_LOGITS] = rh.mask_logits(feats, rois, labels, torch.bfloat16)
    return got


def _rel_rms(got: Tensor, ref: Tensor) -> tuple[float, float]:
    """(||got - ref|| / ||ref||, max |got - ref|): the error relative to the stage's own scale."""
    diff = got.float() - ref.float()
    scale = float(torch.linalg.vector_norm(ref.float()))
    err = float(torch.linalg.vector_norm(diff))
    return (err / scale if scale else err), (float(diff.abs().max()) if diff.numel() else 0.0)


def _dense_check(image: str, stage: str, got: Tensor, ref: Tensor, depth: int) -> StageCheck:
    tol = bf16_tolerance(depth)
    rel, max_abs = _rel_rms(got, ref)
    return StageCheck(image, "precision." + stage, rel <= tol, max_abs, rel, f"rel rms <= {tol:.3g} (depth {depth})")


def _roi_checks(image: str, suffix: str, got: tuple[Tensor, Tensor], ref: tuple[Tensor, Tensor], rois: Tensor,
                stds, depth: int) -> list[StageCheck]:
    """One box head on the same RoIs: its logits and deltas as dense stages; every RoI whose
    float32 top-two logits are further apart than the largest logit error the tolerance allows
    (four times its rms, for each of the two) keeps its label; the boxes decoded from each
    RoI's float32 label's deltas keep their IoU within what the deltas' tolerance moves them."""
    tol = bf16_tolerance(depth)
    checks = [_dense_check(image, s + suffix, g, r, depth)
              for s, g, r in ((S.ROI_CLS_LOGITS, got[0], ref[0]), (S.ROI_BOX_DELTAS, got[1], ref[1]))]
    logits, want = got[0].float(), ref[0].float()
    top = want.topk(2, dim=1).values
    rms = float(torch.linalg.vector_norm(want)) / math.sqrt(max(want.numel(), 1))
    decisive = top[:, 0] - top[:, 1] > 8 * tol * rms
    agree = logits.argmax(1) == want.argmax(1)
    kept = float(agree[decisive].float().mean()) if decisive.any() else 1.0
    prob_err = float((logits.softmax(1) - want.softmax(1)).abs().max()) if len(want) else 0.0
    checks.append(StageCheck(image, f"precision.roi.labels{suffix}", kept == 1.0, prob_err, 1 - kept,
                             "every decisive RoI keeps its label",
                             f"{int(decisive.sum())} of {len(want)} RoIs decisive, {kept:.1%} of them and "
                             f"{float(agree.float().mean()) if len(agree) else 1.0:.1%} of all keep their label; "
                             "max abs is the largest class-probability change"))
    label = want[:, :-1].argmax(1)  # the best foreground class
    n = len(rois)
    d32, d16 = ref[1].float().view(n, -1, 4), got[1].float().view(n, -1, 4)
    pick = label if d32.shape[1] > 1 else torch.zeros_like(label)
    box = rois[:, 1:].float()
    b32 = decode_boxes(box, d32[torch.arange(n), pick], stds)
    b16 = decode_boxes(box, d16[torch.arange(n), pick], stds)
    iou = torch.nan_to_num(box_iou(b16, b32, floor=0.0).diagonal(), nan=1.0)  # two empty boxes agree
    # 1 - IoU grows by about twice the centre's shift and once the size's change, per unit of box
    # size: 2 * sum(stds) * e for a delta error e, allowed up to four times the tolerated rms
    e = 4 * tol * float(torch.linalg.vector_norm(d32)) / math.sqrt(max(d32.numel(), 1))
    floor = 1 - 2 * sum(stds) * e
    low = float(iou.min()) if n else 1.0
    checks.append(StageCheck(image, f"precision.roi.boxes{suffix}", low >= floor, None, 1 - low,
                             f"box IoU >= {floor:.3g}",
                             f"mean box IoU {float(iou.mean()) if n else 1.0:.4f}, lowest {low:.4f}"))
    return checks


def _mask_checks(image: str, got: Tensor, ref: Tensor, depth: int) -> list[StageCheck]:
    """The own-class mask logits on float32's detections, and the masks they give (logit > 0, as
    sigmoid > 0.5) over all detections together: their IoU may lose what the logits' tolerance
    moves across zero."""
    checks = [_dense_check(image, S.MASK_LOGITS, got, ref, depth)]
    a, b = got.float() > 0, ref.float() > 0
    union = int((a | b).sum())
    iou = int((a & b).sum()) / union if union else 1.0
    floor = 1 - 4 * bf16_tolerance(depth)
    checks.append(StageCheck(image, "precision." + S.MASKS, iou >= floor, None, 1 - iou, f"mask IoU >= {floor:.3g}",
                             f"28x28 mask IoU {iou:.4f} over {len(ref)} detections"))
    return checks


BF16_AGAINST = "the model's own float32 forward, each stage teacher-forced (bfloat16 arithmetic)"


def verify_bfloat16(model: GNModel, images, bf16: GNModel | None = None, end_to_end: bool = True) -> Report:
    """Does bfloat16 keep this model? Its bfloat16 path (predict's with --dtype bfloat16 on the
    CPU: the model cast as gnhub.load casts it, `bf16` if given) against its float32 forward on
    each image, stage by stage, each stage fed float32's own input to it (`_teacher_forced`), so
    that a stage's error is its own arithmetic's and ranking (which proposals and detections
    survive a top-k or NMS among near-ties) does not decide what is compared.

    Tolerances: bfloat16 rounds to 8 significant bits, a relative error of at most u = 2^-8 per
    rounding and u/sqrt(3) rms (uniform). A convolution or linear layer with float32 accumulation
    over a rounded input and rounded weights, its output rounded again, has an error of about
    u rms relative to its output; errors of successive layers are independent, so after d
    roundings on a stage's longest path they add to about u*sqrt(d) (`bf16_depth`), GroupNorm
    rescaling errors with the values. A dense stage passes within K*u*sqrt(d) relative rms
    (||bf16 - float32|| / ||float32||), K = 2 for the layers' gains. A box head's RoIs keep
    their labels where float32 is decisive, and its boxes and the mask head's masks their IoU
    within what those tolerances move (`_roi_checks`, `_mask_checks`). The end-to-end share of
    float32's detections that bfloat16 finds (untaught, with its own proposals) is reported in
    `extra["end_to_end"]` beside them (unless `end_to_end` is False), not checked: on near-tied
    scores it measures ranking.

    Where oneDNN has no bfloat16 kernels on this CPU (no AVX512-BF16 or AMX-BF16), predict's
    bfloat16 runs on torch's own bfloat16 kernels (float32 accumulation too, about 2x float32's
    time); the stages check those, and a failing `precision.bfloat16.kernels` check says that
    the fast path was not run, so such a report never passes."""
    if not hasattr(model, "roi_heads"):
        raise GnhubError(f"{model.config.name}: the bfloat16 check runs a detector's stages; this is an "
                         f"{model.task} model")
    model = float32_model(model)
    bf16 = bf16 if bf16 is not None else copy.deepcopy(model).to(torch.bfloat16)
    rh, checks, shares = model.roi_heads, [], {}
    for name, rgb in images:
        with _recording_heads(model) as seen:
            ref = run_model(model, rgb)
        got = _teacher_forced(bf16, ref, seen)
        checks += [_dense_check(name, s, got[s], ref[s], bf16_depth(s, model)) for s in DENSE_STAGES if s in got]
        depth = bf16_depth("roi.", model)
        for k, (rois, want) in enumerate(zip(seen["rois"], seen["box"])):
            checks += _roi_checks(name, f".stage{k + 1}" if k else "", got[f"roi{k}"], want, rois,
                                  rh.cfg.box_stds[4 * k: 4 * k + 4], depth)
        if seen["mask"] is not None:
            checks += _mask_checks(name, got[S.MASK_LOGITS], seen["mask"][2], bf16_depth(S.MASK_LOGITS, model))
        if end_to_end:
            end = [c for c in compare(name, run_model(bf16, rgb), ref, "bfloat16") if c.stage == S.DETECTIONS]
            shares[name] = round(1 - end[0].max_rel, 4) if end else None
    if not bf._onednn_bfloat16():  # last: a failing stage above is the one to name first
        checks.append(StageCheck(
            "*", "precision.bfloat16.kernels", False, None, None, "oneDNN bfloat16 kernels",
            "not run: this CPU has no bfloat16 units, so gnhub's fast bfloat16 path (oneDNN, prepacked filters) "
            "was not run; the stages checked torch's bfloat16 kernels, which predict runs here (--dtype auto runs "
            "float32)"))
    extra = {"tolerances": {"unit_roundoff": BF16_UNIT, "k": BF16_K, "dense": "rel rms <= k * u * sqrt(depth)"}}
    if end_to_end:
        extra["end_to_end"] = {"matched": shares, "what": "share of float32's better-scored half of detections "
                               "that the untaught bfloat16 forward finds (IoU >= 0.9, same label)"}
    return Report(checks, "bfloat16", BF16_AGAINST, extra)
