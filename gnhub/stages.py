"""The names of a model's stages: what inspect() records, what references and exports return, and
what verification compares and keeps as golden outputs. No torch here."""
from __future__ import annotations

__all__ = ["BACKBONE", "BOXES", "DENSE", "DETECTIONS", "FPN", "INPUT", "INPUT_SAMPLE", "LABELS", "LOGITS", "MASKS",
    "MASK_LOGITS", "PROPOSALS", "PROPOSAL_SCORES", "ROI_BOX_DELTAS", "ROI_CLS_LOGITS", "RPN_DELTAS", "RPN_OBJECTNESS",
    "PANOPTIC", "SCORES", "SEGMENTS", "SEM_SEG", "SEM_SEG_LOGITS", "levels", "pyramid"]

INPUT = "input"  # the network input, normalised and padded
INPUT_SAMPLE = "input.sample"  # every 8th pixel of it, kept as a golden output
BACKBONE = "backbone.c"  # + 2..5
FPN = "fpn.p"  # + 2..6
RPN_OBJECTNESS = "rpn.objectness.p"  # + 2..6
RPN_DELTAS = "rpn.deltas.p"  # + 2..6
PROPOSALS, PROPOSAL_SCORES = "proposals", "proposal_scores"
ROI_CLS_LOGITS, ROI_BOX_DELTAS = "roi.cls_logits", "roi.box_deltas"  # of the proposals
BOXES, SCORES, LABELS = "boxes", "scores", "labels"  # the detections, in original pixels
MASK_LOGITS, MASKS = "mask_logits", "masks"  # each detection's own class; pasted, full resolution
SEM_SEG_LOGITS = "sem_seg.logits"  # a panoptic model's semantic head, at the padded input's size
SEM_SEG, PANOPTIC, SEGMENTS = "sem_seg", "panoptic_seg", "segments"  # its labels, segment map and segments
LOGITS = "logits"  # an ImageNet classifier's
DETECTIONS = "detections"  # the check of boxes, scores and labels together


def levels(prefix: str, tensors, first: int = 2) -> dict:
    """{prefix + level: tensor} for a list of per-level tensors, the first being level `first`."""
    return {f"{prefix}{i + first}": t for i, t in enumerate(tensors)}


def pyramid(backbone, fpn, objectness, deltas) -> dict:
    """The dense stages by level: backbone C2-C5, FPN P2-P6, RPN objectness and deltas P2-P6."""
    return {**levels(BACKBONE, backbone), **levels(FPN, fpn), **levels(RPN_OBJECTNESS, objectness),
            **levels(RPN_DELTAS, deltas)}


# In pipeline order: the dense stages compared elementwise.
DENSE = [INPUT, INPUT_SAMPLE, *(f"{BACKBONE}{i}" for i in range(2, 6)), *(f"{FPN}{i}" for i in range(2, 7)),
         *(f"{RPN_OBJECTNESS}{i}" for i in range(2, 7)), *(f"{RPN_DELTAS}{i}" for i in range(2, 7)), SEM_SEG_LOGITS,
         LOGITS]
