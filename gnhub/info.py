"""`gnhub info`: what gnhub knows about a zoo name, a model directory or a checkpoint file."""
from __future__ import annotations

import dataclasses
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import zoo
from .cache import cached, source_url
from .errors import GnhubError
from .hub import is_repo_id
from .layout import check_model_dir, tensor_shapes
from .precision import describe_auto
from .resolve import resolve, unknown
from .settings import HubSettings

__all__ = ["describe"]


def describe(name: str, settings: HubSettings | None = None) -> dict:
    """A zoo entry's published facts, URLs (its hub repository where the settings put it) and
    cache state; a model directory's config, tensor count and parameters (a published model,
    hf-hub:ORG/NAME or ORG/NAME in a directory hub, fetched first); a checkpoint's format, tensors,
    sha256 and settings. Models also get the dtype `--dtype auto` runs them in here."""
    s = (settings or HubSettings()).resolved()
    entry = zoo.get(name)
    if entry is not None:
        path = cached(entry)
        repo = entry.hub_repo(s.org)
        return {**dataclasses.asdict(entry), "conventions": dict(entry.conventions), "task": entry.task,
                "depth": entry.depth, "architecture": entry.architecture, "settings": dict(entry.settings),
                "download_url": source_url(entry, s.source_mirror),
                "sha256_prefix": entry.sha256_prefix, "hub_repo": repo,
                "hub": str(Path(s.hub_dir) / repo) if s.hub_dir else f"{s.endpoint or 'https://huggingface.co'}/{repo}",
                "cached": str(path) if path else None, "dtype_auto": describe_auto()}
    path = Path(name)
    published = name.startswith("hf-hub:") or (s.hub_dir and not path.exists() and is_repo_id(name))
    if path.is_dir() or published:
        path = resolve(name, s) if published else path
        config = check_model_dir(path)
        shapes = tensor_shapes(path)
        data = {**config.to_dict(), "tensors": len(shapes), "parameters": sum(math.prod(s) for s in shapes.values()),
                "dtype_auto": describe_auto()}
        data.pop("classes")
        return {**data, "path": str(path)} if published else data
    if path.is_file():
        # torch: only a checkpoint file is read with it; names and directories need none
        from .source import open_source

        with ThreadPoolExecutor(1) as pool:
            src = open_source(path, "auto", check_hash=False, pool=pool)
            return {"format": src.converter.DESCRIPTION, "tensors": len(src.tensors), "sha256": src.sha256.result(),
                    "version": src.converter.meta_version(src.obj), "settings": dict(src.settings),
                    "preprocess_from": src.preprocess_from}
    raise GnhubError(f"{name}: {unknown(name, 'zoo model, model directory or checkpoint file', 'file or directory')}")
