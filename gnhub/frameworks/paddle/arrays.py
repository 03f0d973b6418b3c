"""PaddleDetection's convention without torch: its test reader's resize and normalisation, and
the numpy twins of its postprocess and mask paste that gnhub.runtime runs (convention.py holds
the torch originals)."""
from __future__ import annotations

import numpy as np

from ..mmdet.arrays import paste_masks

__all__ = ["paste_masks", "postprocess", "rescale"]


def rescale(img: np.ndarray, cfg) -> tuple[np.ndarray, tuple[float, float]]:
    """ppdet's Resize (keep_ratio, interp 2) and NormalizeImage (is_scale) as its test reader runs
    them: scale = min(short / shorter side, long / longer side), sides int(scale * side + 0.5),
    OpenCV bicubic with fx = new_w / w, fy = new_h / h on uint8; then in float32 times 1 / 255, and
    in float64 minus the mean and divided by the std in [0, 1] units (`cfg.mean / 255`,
    `cfg.std / 255`), the result already normalised. Returns the image and the (w, h) factor."""
    # OpenCV (slow to import) only when it is called: the torch-free commands import this module
    import cv2

    h, w = img.shape[:2]
    scale = min(min(cfg.max_size) / min(h, w), max(cfg.max_size) / max(h, w))
    new_h, new_w = int(scale * h + 0.5), int(scale * w + 0.5)
    im = cv2.resize(img, None, None, fx=new_w / w, fy=new_h / h, interpolation=cv2.INTER_CUBIC).astype(np.float32)
    im *= 1.0 / 255.0
    im -= np.asarray(cfg.mean)[None, None] / 255.0
    im /= np.asarray(cfg.std)[None, None] / 255.0
    return im, (new_w / w, new_h / h)


def postprocess(boxes: np.ndarray, size, original) -> tuple[np.ndarray, np.ndarray]:
    """BBoxPostProcess.get_pred: boxes divided by the (w, h) scale factor (resized / original, in
    float32), clipped to the original image; which are not empty."""
    factors = np.array([size[1] / original[1], size[0] / original[0]], np.float32)
    out = boxes.astype(np.float32) / np.tile(factors, 2)
    out[:, 0::2] = out[:, 0::2].clip(0, original[1])
    out[:, 1::2] = out[:, 1::2].clip(0, original[0])
    return out, (out[:, 2] - out[:, 0] > 0) & (out[:, 3] - out[:, 1] > 0)
