"""`gnhub info`: what gnhub knows about a zoo name, a model directory or a checkpoint file."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from . import zoo
from .errors import GnhubError
from .settings import HubSettings

__all__ = ["describe"]


def describe(name: str, settings: HubSettings | None = None) -> dict:
    """A zoo entry's published facts, URLs and cache state; a model directory's config, tensor
    count and parameters; a checkpoint's format, tensors, sha256 and settings."""
    from .cache import cached, source_url

    s = (settings or HubSettings()).resolved()
    entry = zoo.get(name)
    if entry is not None:
        path = cached(entry)
        return {**dataclasses.asdict(entry), "conventions": dict(entry.conventions), "task": entry.task,
                "depth": entry.depth, "architecture": entry.architecture, "settings": dict(entry.settings),
                "download_url": source_url(entry, s.source_mirror),
                "sha256_prefix": entry.sha256_prefix, "hub_repo": entry.hub_repo(s.org),
                "cached": str(path) if path else None}
    path = Path(name)
    if path.is_dir():
        from .layout import check_model_dir, tensor_shapes

        config = check_model_dir(path)
        shapes = tensor_shapes(path)
        data = {**config.to_dict(), "tensors": len(shapes), "parameters": sum(math.prod(s) for s in shapes.values())}
        data.pop("classes")
        return data
    if path.is_file():
        from concurrent.futures import ThreadPoolExecutor

        from .source import open_source

        with ThreadPoolExecutor(1) as pool:
            src = open_source(path, "auto", check_hash=False, pool=pool)
            return {"format": src.converter.DESCRIPTION, "tensors": len(src.tensors), "sha256": src.sha256.result(),
                    "version": src.converter.meta_version(src.obj), "settings": dict(src.settings),
                    "preprocess_from": src.preprocess_from}
    from .resolve import unknown

    raise GnhubError(f"{name}: {unknown(name, 'zoo model, model directory or checkpoint file', 'file or directory')}")
