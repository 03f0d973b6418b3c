"""Images in, without torch: reading files as OpenCV reads them for mmdetection, the size limit,
and the channel order, aspect-keeping resize (a convention's) and crop shared by the PyTorch model
and the ONNX runtime. Pillow is imported where it is used."""
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
        raise GnhubError(f"{where}: {width}x{height} is {_megapixels(width * height)} megapixels, above gnhub's limit "
                         f"of {_megapixels(limit)} (the model resizes to about 1 megapixel anyway): downscale the "
                         "image, or raise GNHUB_MAX_IMAGE_PIXELS")


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.3g}" if pixels < 1e9 else f"{pixels / 1e6:.0f}"


def load_image(image) -> np.ndarray:
    """A path, PIL image or HxW(x3|x4) uint8 array -> HxWx3 uint8 RGB array.

    Grayscale is repeated to three channels, alpha is dropped, EXIF orientation is applied and
    16-bit images keep their high byte (all as OpenCV's imread does for mmdetection). Images
    above GNHUB_MAX_IMAGE_PIXELS are refused before they are decoded; Pillow's own bound
    (PIL.Image.MAX_IMAGE_PIXELS) is raised to it where it is lower.
    """
    # Pillow (slow to import) only when an image file is read
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(image, (str, Path)):
        limit = max_image_pixels()
        if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit:
            Image.MAX_IMAGE_PIXELS = limit  # gnhub's limit is the one that applies (Pillow's is never lowered)
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
            raise GnhubError(f"{image}: larger than gnhub's limit of {_megapixels(limit)} megapixels; "
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


def resize(rgb: np.ndarray, cfg: PreprocessConfig, rescale) -> tuple[np.ndarray, tuple[float, float]]:
    """RGB uint8 -> the resized image in network order and the (w, h) scale factor: put in
    `cfg.channel_order`, resized by `rescale` (a convention's: gnhub/frameworks/NAME/arrays.py)
    and, with crop_size, cut to its centre square."""
    img = np.ascontiguousarray(rgb[:, :, ::-1] if cfg.channel_order == "BGR" else rgb)
    img, factors = rescale(img, cfg)
    if cfg.crop_size:
        c = cfg.crop_size
        if min(img.shape[:2]) < c:
            raise GnhubError(f"preprocess: image resized to {img.shape[1]}x{img.shape[0]} is smaller than crop {c}")
        top, left = (img.shape[0] - c) // 2, (img.shape[1] - c) // 2
        img = np.ascontiguousarray(img[top : top + c, left : left + c])
    return img, factors
