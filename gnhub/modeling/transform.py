"""Images in, network batch out: loading, channel order, aspect-keeping resize, normalise, pad."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..config import PreprocessConfig
from ..errors import GnhubError
from ..images import load_image, resize

__all__ = ["ImageBatch", "Preprocessor", "check_target", "load_image"]

def check_target(target: dict, size: tuple[int, int], i: int, masks: bool = True):
    """A target's boxes (N, 4) float32 xyxy, labels (N,) int64 and (with `masks`) masks
    (N, H, W) bool, checked; masks None without."""
    keys = ("boxes", "labels", "masks") if masks else ("boxes", "labels")
    if not isinstance(target, dict) or not set(keys) <= set(target):
        raise GnhubError(f"target {i}: expected a dict with {', '.join(keys)}")
    b, lab = (np.asarray(target[k].cpu() if hasattr(target[k], "cpu") else target[k]) for k in ("boxes", "labels"))
    n = len(lab)
    m = np.asarray(target["masks"].cpu() if hasattr(target["masks"], "cpu") else target["masks"]) if masks else \
        np.zeros((n, *size), bool)
    if b.shape != (n, 4) or lab.ndim != 1 or m.shape != (n, *size):
        raise GnhubError(f"target {i}: boxes {b.shape}, labels {lab.shape} and masks {m.shape} do not fit "
                         f"{n} instances in a {size[0]}x{size[1]} image (boxes (N, 4), masks (N, H, W))")
    return b.astype(np.float32), lab.astype(np.int64), m.astype(bool) if masks else None


@dataclass
class ImageBatch:
    """Normalised, zero-padded images and the geometry needed to map results back."""

    tensor: Tensor  # (B, 3, H, W), channels in network order
    image_sizes: list[tuple[int, int]]  # (h, w) of each resized image inside the padding
    original_sizes: list[tuple[int, int]]  # (h, w) of each input image
    scale_factors: list[tuple[float, float]]  # (w, h): resized / original


class Preprocessor:
    """A config's preprocessing with its convention's resize (`rescale`, see gnhub.images.resize)."""

    def __init__(self, cfg: PreprocessConfig, rescale):
        self.cfg = cfg
        self.rescale = rescale

    def resize(self, rgb: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
        return resize(rgb, self.cfg, self.rescale)

    def batch(
        self,
        images: list[np.ndarray],
        original_sizes: list[tuple[int, int]],
        scale_factors: list[tuple[float, float]],
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> ImageBatch:
        """Resized HxWx3 images (uint8, or float32 already normalised) -> one normalised batch
        zero-padded to size_divisor."""
        div = self.cfg.size_divisor
        ph = math.ceil(max(im.shape[0] for im in images) / div) * div
        pw = math.ceil(max(im.shape[1] for im in images) / div) * div
        mean = torch.tensor(self.cfg.mean, device=device).view(-1, 1, 1)
        std = torch.tensor(self.cfg.std, device=device).view(-1, 1, 1)
        out = torch.zeros(len(images), 3, ph, pw, device=device, dtype=dtype)
        for i, im in enumerate(images):
            x = torch.from_numpy(im).to(device).permute(2, 0, 1).float()
            out[i, :, : im.shape[0], : im.shape[1]] = (x - mean) / std if im.dtype == np.uint8 else x
        sizes = [im.shape[:2] for im in images]
        return ImageBatch(out, sizes, list(original_sizes), list(scale_factors))

    def training_batch(self, rgbs: list[np.ndarray], targets: list[dict], device="cpu", dtype=torch.float32,
                       masks: bool = True):
        """Images and their ground truth as mmdetection's train pipeline (without its random
        part) and DetDataPreprocessor(training=True) make them: the test-time resize, boxes
        scaled and clipped to the resized image, masks rescaled (nearest) and zero-padded with
        the images to the batch shape. Returns (batch, boxes, labels, masks) per image (masks
        None without `masks`)."""
        # OpenCV (slow to import) only for training's resize
        import cv2

        resized = [self.resize(im) for im in rgbs]
        batch = self.batch([r[0] for r in resized], [im.shape[:2] for im in rgbs], [r[1] for r in resized], device,
                           dtype)
        ph, pw = batch.tensor.shape[-2:]
        boxes, labels, padded_masks = [], [], []
        for i, (t, (h, w), (sw, sh)) in enumerate(zip(targets, batch.image_sizes, batch.scale_factors)):
            b, lab, m = check_target(t, rgbs[i].shape[:2], i, masks)
            b = torch.from_numpy(b) * torch.tensor([sw, sh, sw, sh], dtype=torch.float32)
            b[:, 0::2] = b[:, 0::2].clamp(0, w)
            b[:, 1::2] = b[:, 1::2].clamp(0, h)
            boxes.append(b.to(device))
            labels.append(torch.from_numpy(lab).to(device))
            if masks:
                padded = np.zeros((len(m), ph, pw), np.uint8)
                for j, mask in enumerate(m):
                    padded[j, :h, :w] = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
                padded_masks.append(torch.from_numpy(padded).to(device))
        return batch, boxes, labels, padded_masks if masks else [None] * len(boxes)

    def __call__(self, rgbs: list[np.ndarray], device="cpu", dtype=torch.float32) -> ImageBatch:
        resized = [self.resize(im) for im in rgbs]
        return self.batch(
            [r[0] for r in resized], [im.shape[:2] for im in rgbs], [r[1] for r in resized], device, dtype
        )
