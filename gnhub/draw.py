"""Overlay pictures: translucent masks (where a model has them), boxes, class names and scores,
sized to the image."""
from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["overlay", "palette"]


def palette(n: int) -> list[tuple[int, int, int]]:
    """n well-separated colours (golden-ratio hues)."""
    return [
        tuple(int(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 1.0)) for i in range(n)
    ]


def overlay(rgb: np.ndarray, result: dict, classes: tuple[str, ...], alpha: float = 0.45) -> Image.Image:
    """The image with each detection's mask, box and "class score" label drawn on it."""
    img = rgb.astype(np.float32)
    colors = palette(len(classes))
    labels = result["labels"].tolist()
    for mask, label in zip(np.asarray(result["masks"]) if "masks" in result else [], labels):
        img[mask] = (1 - alpha) * img[mask] + alpha * np.array(colors[label], np.float32)
    out = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    h, w = rgb.shape[:2]
    line = max(1, round(min(h, w) / 300))
    font = ImageFont.load_default(size=max(10, round(min(h, w) / 40)))
    for box, label, score in zip(result["boxes"].tolist(), labels, result["scores"].tolist()):
        draw.rectangle(box, outline=colors[label], width=line)
        text = f"{classes[label]} {score:.2f}"
        x0, y0 = box[0], max(0, box[1] - font.size - 2 * line)
        tb = draw.textbbox((x0, y0), text, font=font)
        draw.rectangle((tb[0] - line, tb[1] - line, tb[2] + line, tb[3] + line), fill=colors[label])
        draw.text((x0, y0), text, fill=(0, 0, 0), font=font)
    return out


def panoptic_overlay(rgb: np.ndarray, result: dict, classes: tuple[str, ...], stuff: tuple[str, ...],
                     alpha: float = 0.45) -> Image.Image:
    """The image with each panoptic segment coloured (a thing in its class's colour, stuff in its
    semantic label's), then each thing segment's box and "class score" label (`overlay`)."""
    img = rgb.astype(np.float32)
    thing_colors, stuff_colors = palette(len(classes)), palette(len(stuff))
    seg = np.asarray(result["panoptic_seg"])
    things = []
    for sid, isthing, category, instance, _ in np.asarray(result["segments"]).tolist():
        m = seg == sid
        color = thing_colors[category] if isthing else stuff_colors[category]
        img[m] = (1 - alpha) * img[m] + alpha * np.array(color, np.float32)
        if isthing:
            things.append(instance)
    boxes = {k: result[k][things] for k in ("boxes", "scores", "labels")}
    return overlay(img.clip(0, 255).astype(np.uint8), boxes, classes)
