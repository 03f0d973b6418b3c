"""The frameworks gnhub converts from, one folder each: `__init__.py` says what it is (torch-free),
`convention.py` holds its convention, the one object the model's stages are given (resize,
anchors, box coding, proposal selection, RoI level mapping, detection, postprocess, mask paste),
and `arrays.py` the torch-free half of it: the resize, and the numpy twins of postprocess and
mask paste that gnhub.runtime runs (tests/test_frameworks.py holds each pair equal).

A model's config.json names its convention (`"convention": "detectron2"`); nothing else
branches on a framework."""
from __future__ import annotations

import importlib

__all__ = ["arrays", "convention", "info", "NAMES"]

NAMES = ("mmdet", "detectron", "detectron2", "paddle")


def info(name: str):
    """A framework's package: TITLE, RESIZE (in words), CARD (the model card's paragraph on its
    conventions) and EXPORTS (whether its models export to ONNX). No torch."""
    return importlib.import_module(f"{__name__}.{name}")


def arrays(name: str):
    """A framework's torch-free functions: rescale, and (where it EXPORTS) postprocess and
    paste_masks in numpy."""
    return importlib.import_module(f"{__name__}.{name}.arrays")


def convention(name: str):
    """A framework's convention object (torch)."""
    return importlib.import_module(f"{__name__}.{name}.convention").CONVENTION
