"""Images in, network batch out: loading, channel order, aspect-keeping resize, normalise, pad."""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from ..config import PreprocessConfig
from ..errors import GnhubError

MAX_IMAGE_PIXELS = 50_000_000  # default of GNHUB_MAX_IMAGE_PIXELS: masks are kept at full resolution


def max_image_pixels() -> int:
    try:
        return int(os.environ.get("GNHUB_MAX_IMAGE_PIXELS", MAX_IMAGE_PIXELS))
    except ValueError:
        raise GnhubError("GNHUB_MAX_IMAGE_PIXELS must be a whole number of pixels") from None


def _check_size(width: int, height: int, where: str) -> None:
    limit = max_image_pixels()
    if width * height > limit:
        raise GnhubError(f"{where}: {width}x{height} is {width * height / 1e6:.0f} megapixels, above gnhub's limit of "
                         f"{limit / 1e6:g} (the model resizes to about 1 megapixel anyway): downscale the image, or "
                         "raise GNHUB_MAX_IMAGE_PIXELS")


def load_image(image) -> np.ndarray:
    """A path, PIL image or HxW(x3|x4) uint8 array -> HxWx3 uint8 RGB array.

    Grayscale is repeated to three channels, alpha is dropped, EXIF orientation is applied and
    16-bit images keep their high byte (all as OpenCV's imread does for mmdetection). Images
    above GNHUB_MAX_IMAGE_PIXELS are refused before they are decoded.
    """
    if isinstance(image, (str, Path)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # gnhub checks the size itself
                with Image.open(image) as im:
                    _check_size(*im.size, str(image))
                    image = _to_rgb(ImageOps.exif_transpose(im))
        except FileNotFoundError:
            raise GnhubError(f"{image}: no such image file") from None
        except IsADirectoryError:
            raise GnhubError(f"{image}: is a directory, expected an image file") from None
        except Image.DecompressionBombError:
            raise GnhubError(f"{image}: larger than gnhub's limit of {max_image_pixels() / 1e6:g} megapixels; "
                             "downscale the image, or raise GNHUB_MAX_IMAGE_PIXELS") from None
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise GnhubError(f"{image}: not a readable image ({e})") from None
    if isinstance(image, Image.Image):
        image = _to_rgb(image)
    if not isinstance(image, np.ndarray):
        raise GnhubError(
            f"expected an image path, PIL image or numpy array, got {type(image).__name__}"
        )
    if image.dtype != np.uint8:
        raise GnhubError(f"image array has dtype {image.dtype}; pass uint8 RGB values 0-255")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or min(image.shape[:2]) < 1:
        raise GnhubError(f"image array has shape {image.shape}; expected HxWx3 RGB (or HxW, HxWx4)")
    _check_size(image.shape[1], image.shape[0], "image array")
    return np.ascontiguousarray(image[:, :, :3])


def _to_rgb(im: Image.Image) -> np.ndarray:
    """A PIL image as RGB uint8; 16-bit grayscale by its high byte, as OpenCV reads it."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        gray = (np.asarray(im).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def check_target(target: dict, size: tuple[int, int], i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A target's boxes (N, 4) float32 xyxy, labels (N,) int64 and masks (N, H, W) bool, checked."""
    if not isinstance(target, dict) or not {"boxes", "labels", "masks"} <= set(target):
        raise GnhubError(f"target {i}: expected a dict with boxes, labels and masks")
    b, lab, m = (np.asarray(target[k].cpu() if hasattr(target[k], "cpu") else target[k]) for k in
                 ("boxes", "labels", "masks"))
    n = len(lab)
    if b.shape != (n, 4) or lab.ndim != 1 or m.shape != (n, *size):
        raise GnhubError(f"target {i}: boxes {b.shape}, labels {lab.shape} and masks {m.shape} do not fit "
                         f"{n} instances in a {size[0]}x{size[1]} image (boxes (N, 4), masks (N, H, W))")
    return b.astype(np.float32), lab.astype(np.int64), m.astype(bool)


@dataclass
class ImageBatch:
    """Normalised, zero-padded images and the geometry needed to map results back."""

    tensor: Tensor  # (B, 3, H, W), channels in network order
    image_sizes: list[tuple[int, int]]  # (h, w) of each resized image inside the padding
    original_sizes: list[tuple[int, int]]  # (h, w) of each input image
    scale_factors: list[tuple[float, float]]  # (w, h): resized / original


class Preprocessor:
    def __init__(self, cfg: PreprocessConfig):
        self.cfg = cfg

    def resize(self, rgb: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
        """RGB uint8 -> the resized image in network order and the (w, h) scale factor.

        "mmcv": scale and rounding of mmcv's `imrescale`, OpenCV bilinear on uint8 (normalised
        later, in `batch`). "detectron": Detectron's `prep_im_for_blob`: the mean subtracted in
        float32, then OpenCV bilinear with fx = fy = scale; the result is already normalised.
        With crop_size, the shorter side goes to min(max_size) and the centre square is kept.
        """
        cfg = self.cfg
        img = np.ascontiguousarray(rgb[:, :, ::-1] if cfg.channel_order == "BGR" else rgb)
        h, w = img.shape[:2]
        long_side, short_side = max(cfg.max_size), min(cfg.max_size)
        if cfg.resize == "detectron":
            scale = short_side / min(h, w)
            if not cfg.crop_size and round(scale * max(h, w)) > long_side:
                scale = long_side / max(h, w)
            img = (img - np.asarray(cfg.mean)) / np.asarray(cfg.std)  # float64, like Detectron's `im -= means`
            img = cv2.resize(img.astype(np.float32), None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
            factors = (scale, scale)
        else:
            scale = short_side / min(h, w) if cfg.crop_size else min(long_side / max(h, w), short_side / min(h, w))
            new_w, new_h = int(w * scale + 0.5), int(h * scale + 0.5)
            img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
            factors = (new_w / w, new_h / h)
        if cfg.crop_size:
            c = cfg.crop_size
            if min(img.shape[:2]) < c:
                raise GnhubError(f"preprocess: image resized to {img.shape[1]}x{img.shape[0]} is smaller than crop {c}")
            top, left = (img.shape[0] - c) // 2, (img.shape[1] - c) // 2
            img = np.ascontiguousarray(img[top : top + c, left : left + c])
        return img, factors

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

    def training_batch(self, rgbs: list[np.ndarray], targets: list[dict], device="cpu", dtype=torch.float32):
        """Images and their ground truth as mmdetection's train pipeline (without its random
        part) and DetDataPreprocessor(training=True) make them: the test-time resize, boxes
        scaled and clipped to the resized image, masks rescaled (nearest) and zero-padded with
        the images to the batch shape. Returns (batch, boxes, labels, masks) per image."""
        resized = [self.resize(im) for im in rgbs]
        batch = self.batch([r[0] for r in resized], [im.shape[:2] for im in rgbs], [r[1] for r in resized], device,
                           dtype)
        ph, pw = batch.tensor.shape[-2:]
        boxes, labels, masks = [], [], []
        for i, (t, (h, w), (sw, sh)) in enumerate(zip(targets, batch.image_sizes, batch.scale_factors)):
            b, lab, m = check_target(t, rgbs[i].shape[:2], i)
            b = torch.from_numpy(b) * torch.tensor([sw, sh, sw, sh], dtype=torch.float32)
            b[:, 0::2] = b[:, 0::2].clamp(0, w)
            b[:, 1::2] = b[:, 1::2].clamp(0, h)
            padded = np.zeros((len(m), ph, pw), np.uint8)
            for j, mask in enumerate(m):
                padded[j, :h, :w] = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
            boxes.append(b.to(device))
            labels.append(torch.from_numpy(lab).to(device))
            masks.append(torch.from_numpy(padded).to(device))
        return batch, boxes, labels, masks

    def __call__(self, rgbs: list[np.ndarray], device="cpu", dtype=torch.float32) -> ImageBatch:
        resized = [self.resize(im) for im in rgbs]
        return self.batch(
            [r[0] for r in resized], [im.shape[:2] for im in rgbs], [r[1] for r in resized], device, dtype
        )
