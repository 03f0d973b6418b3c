"""Regenerates gnhub/data/images/*.png, the built-in sample images (run once; output committed).

Synthetic but photo-like scenes: gradients, textures, shaded shapes, mild noise; landscape,
portrait, square and tiny sizes.
"""
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

OUT = Path(__file__).resolve().parents[1] / "gnhub" / "data" / "images"


def scene(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    horizon = height * rng.uniform(0.45, 0.6)
    sky = np.stack([90 + 80 * yy / height, 140 + 60 * yy / height, 230 - 30 * yy / height], -1)
    ground = np.stack([70 + 40 * np.sin(xx / 7) * np.cos(yy / 5), 110 + 20 * np.sin(xx / 3), 60 + 0 * xx], -1)
    img = np.where((yy < horizon)[..., None], sky, ground)
    im = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    d = ImageDraw.Draw(im)
    s = min(width, height)
    for _ in range(3):  # trees
        x = rng.uniform(0, width)
        d.polygon([(x, horizon - s * 0.35), (x - s * 0.1, horizon), (x + s * 0.1, horizon)], fill=(30, 100, 40))
        d.rectangle([x - s * 0.015, horizon, x + s * 0.015, horizon + s * 0.05], fill=(90, 60, 30))
    for _ in range(2):  # cars
        x, y = rng.uniform(0, width * 0.8), rng.uniform(horizon, height * 0.85)
        w, h = s * rng.uniform(0.2, 0.3), s * rng.uniform(0.08, 0.12)
        color = tuple(int(c) for c in rng.integers(40, 220, 3))
        d.rounded_rectangle([x, y, x + w, y + h], radius=h * 0.3, fill=color)
        d.rectangle([x + w * 0.2, y - h * 0.5, x + w * 0.75, y], fill=tuple(c // 2 for c in color))
        for cx in (x + w * 0.2, x + w * 0.8):
            d.ellipse([cx - h * 0.3, y + h * 0.7, cx + h * 0.3, y + h * 1.3], fill=(20, 20, 20))
    x, y = rng.uniform(0.1, 0.9) * width, horizon + s * 0.05  # a person
    d.ellipse([x - s * 0.03, y - s * 0.2, x + s * 0.03, y - s * 0.14], fill=(230, 190, 160))
    d.rectangle([x - s * 0.04, y - s * 0.14, x + s * 0.04, y], fill=(200, 40, 40))
    d.rectangle([x - s * 0.035, y, x + s * 0.035, y + s * 0.1], fill=(40, 40, 120))
    d.ellipse([width * 0.8, height * 0.05, width * 0.8 + s * 0.12, height * 0.05 + s * 0.12], fill=(255, 230, 120))
    im = im.filter(ImageFilter.GaussianBlur(0.6))
    arr = np.asarray(im).astype(np.float32) + rng.normal(0, 3.0, (height, width, 3))
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    sizes = [("street", (480, 320)), ("portrait", (256, 384)), ("square", (288, 288)), ("tiny", (40, 24))]
    for seed, (name, (w, h)) in enumerate(sizes, start=1):
        scene(w, h, seed).save(OUT / f"{name}.png", optimize=True)
