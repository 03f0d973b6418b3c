"""Images in, without torch: reading files as OpenCV reads them for mmdetection, the size limit,
and the aspect-keeping resize of each preprocessing convention (shared by the PyTorch model and
the ONNX runtime). OpenCV and Pillow are imported where they are used."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .config import PreprocessConfig
from .errors import GnhubError
from .settings import max_image_pixels

__all__ = ["load_image", "resize"]


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
    from PIL import Image, ImageOps, UnidentifiedImageError

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


def _to_rgb(im) -> np.ndarray:
    """A PIL image as RGB uint8; 16-bit grayscale by its high byte, as OpenCV reads it."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        gray = (np.asarray(im).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


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


def resize(rgb: np.ndarray, cfg: PreprocessConfig) -> tuple[np.ndarray, tuple[float, float]]:
    """RGB uint8 -> the resized image in network order and the (w, h) scale factor.

    "mmcv": scale and rounding of mmcv's `imrescale`, OpenCV bilinear on uint8 (normalised
    later). "detectron": Detectron's `prep_im_for_blob`: the mean subtracted in float32, then
    OpenCV bilinear with fx = fy = scale; the result is already normalised. "pil": detectron2's
    ResizeShortestEdge: its output size, Pillow's bilinear on uint8 (normalised later). With
    crop_size, the shorter side goes to min(max_size) and the centre square is kept.
    """
    import cv2

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
    elif cfg.resize == "pil":
        from PIL import Image

        new_h, new_w = _shortest_edge(h, w, short_side, long_side)
        img = np.array(Image.fromarray(img).resize((new_w, new_h), Image.BILINEAR))  # writable, for torch
        factors = (new_w / w, new_h / h)
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
