"""load(): a model directory (and, with the hub, a zoo name) -> a ready model in eval mode."""
from __future__ import annotations

from pathlib import Path

from . import zoo
from .errors import GnhubError
from .modeling import GNMaskRCNN


def load(name_or_path: str | Path, device: str = "cpu") -> GNMaskRCNN:
    path = Path(name_or_path)
    if path.is_dir():
        return GNMaskRCNN.from_pretrained(path).to(device).eval()
    if str(name_or_path) in zoo.MODELS:
        raise GnhubError(
            f"{name_or_path} is a zoo model, but downloading from a hub is not available yet: "
            f"convert {zoo.MODELS[str(name_or_path)].url} with `gnhub convert` and load the directory"
        )
    raise GnhubError(f"{name_or_path}: no such model directory or zoo model name")
