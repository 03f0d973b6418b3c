"""Detectron's convention without torch: its resize (Detectron's models do not export, so there
are no numpy twins to run)."""
from __future__ import annotations

import numpy as np

__all__ = ["rescale"]


def rescale(img: np.ndarray, cfg) -> tuple[np.ndarray, tuple[float, float]]:
    """Detectron's `prep_im_for_blob`: the mean subtracted in float32, then OpenCV bilinear with
    fx = fy = scale (the shorter side to min(max_size) unless the longer would pass max(max_size));
    the result is already normalised. Returns the image and the (w, h) factor."""
    # OpenCV (slow to import) only when it is called: the torch-free commands import this module
    import cv2

    h, w = img.shape[:2]
    long_side, short_side = max(cfg.max_size), min(cfg.max_size)
    scale = short_side / min(h, w)
    if not cfg.crop_size and round(scale * max(h, w)) > long_side:
        scale = long_side / max(h, w)
    img = (img - np.asarray(cfg.mean)) / np.asarray(cfg.std)  # float64, like Detectron's `im -= means`
    img = cv2.resize(img.astype(np.float32), None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    return img, (scale, scale)
