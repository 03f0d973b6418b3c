"""The class-order rule shared by sources that put background first (Detectron, mmdetection 1.x)."""
import torch


def move_background_last(tensors: dict[str, torch.Tensor]) -> None:
    """Background first -> gnhub's order: the first class score moves last; the background's
    box deltas (first 4 rows) and mask logits (first row) are dropped."""
    for key in ("roi_heads.box_head.cls_score.weight", "roi_heads.box_head.cls_score.bias"):
        t = tensors[key]
        tensors[key] = torch.cat([t[1:], t[:1]])
    for key in ("roi_heads.box_head.bbox_pred.weight", "roi_heads.box_head.bbox_pred.bias"):
        tensors[key] = tensors[key][4:]
    for key in ("roi_heads.mask_head.logits.weight", "roi_heads.mask_head.logits.bias"):
        tensors[key] = tensors[key][1:]
