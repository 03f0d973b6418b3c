"""The built-in sample images (synthetic, photo-like; see scripts/make_sample_images.py)."""
from __future__ import annotations

from pathlib import Path

__all__ = ["IMAGE_DIR", "sample_images"]

IMAGE_DIR = Path(__file__).parent / "data" / "images"


def sample_images() -> list[Path]:
    """Landscape, portrait, square and tiny PNGs, in a fixed order."""
    return [IMAGE_DIR / f"{n}.png" for n in ("street", "portrait", "square", "tiny")]
