"""detectron2's convention without torch: ResizeShortestEdge, and the numpy twins of
detector_postprocess and mask paste that gnhub.runtime runs (convention.py holds the torch
originals)."""
from __future__ import annotations

import numpy as np

from ..mmdet.arrays import paste_masks

__all__ = ["paste_masks", "postprocess", "rescale"]


def _shortest_edge(h: int, w: int, short: int, long: int) -> tuple[int, int]:
    """detectron2's ResizeShortestEdge.get_output_shape: the shorter side to `short` unless the
    longer would pass `long`, rounded half up."""
    size = short * 1.0
    scale = size / min(h, w)
    new_h, new_w = (size, scale * w) if h < w else (scale * h, size)
    if max(new_h, new_w) > long:
        scale = long * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


def rescale(img: np.ndarray, cfg) -> tuple[np.ndarray, tuple[float, float]]:
    """ResizeShortestEdge: its output size, Pillow's bilinear on uint8 (normalised later).
    Returns the image and the (w, h) factor."""
    # Pillow (slow to import) only when it is called: the torch-free commands import this module
    from PIL import Image

    h, w = img.shape[:2]
    new_h, new_w = _shortest_edge(h, w, min(cfg.max_size), max(cfg.max_size))
    img = np.array(Image.fromarray(img).resize((new_w, new_h), Image.BILINEAR))  # writable, for torch
    return img, (new_w / w, new_h / h)


def postprocess(boxes: np.ndarray, size, original) -> tuple[np.ndarray, np.ndarray]:
    """detectron2's detector_postprocess: boxes times original / resized size (float32, as torch
    multiplies a float32 tensor by a Python float), clipped to the original image; which are not
    empty."""
    out = boxes.astype(np.float32).copy()
    out[:, 0::2] *= np.float32(original[1] / size[1])
    out[:, 1::2] *= np.float32(original[0] / size[0])
    out[:, 0::2] = out[:, 0::2].clip(0, original[1])
    out[:, 1::2] = out[:, 1::2].clip(0, original[0])
    return out, (out[:, 2] - out[:, 0] > 0) & (out[:, 3] - out[:, 1] > 0)
