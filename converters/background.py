"""The class-order rule shared by sources that put background first (Detectron, mmdetection 1.x)."""
import torch

__all__ = ["move_background_last"]


def move_background_last(tensors: dict[str, torch.Tensor]) -> None:
    """Background first -> gnhub's order: the first class score moves last; the background's
    box deltas (first 4 rows) and mask logits (first row) are dropped. Absent tensors stay absent
    (a detector without a mask head; the engine names what a model misses)."""
    for key in ("roi_heads.box_head.cls_score.weight", "roi_heads.box_head.cls_score.bias"):
        if key in tensors:
            tensors[key] = torch.cat([tensors[key][1:], tensors[key][:1]])
    for key, rows in (("roi_heads.box_head.bbox_pred", 4), ("roi_heads.mask_head.logits", 1)):
        for p in ("weight", "bias"):
            if f"{key}.{p}" in tensors:
                tensors[f"{key}.{p}"] = tensors[f"{key}.{p}"][rows:]
