"""Source formats gnhub converts from: one module each, a table of names and conventions, read by
the engine (gnhub/convert.py, gnhub/source.py) through the `Converter` protocol below.

`RenameTable` reads a module's (source, gnhub) name templates in either direction.
"""
from __future__ import annotations

import re
from typing import Protocol

from gnhub.config import ConfigPatch

from . import detectron, detectron2, mmdet, paddle
from .file_settings import FileSettings

__all__ = ["Converter", "FORMATS", "FileSettings", "RenameTable"]


class Converter(Protocol):
    """What a source format's module declares. Everything is required; empty values mean none.

    The engine reads the file (restricted unpickler), calls `detect` to choose the format,
    renames every tensor of `source_tensors` by RENAMES (or reports it dropped by DROPPED /
    UNUSED[layout]; anything else stops the conversion), calls `reorder_classes`, and builds
    the config from the tensors' shapes, then SETTINGS[layout] < the zoo entry's settings < what
    `read_settings` says (each value checked against the config's bounds; an invalid one falls
    back to SETTINGS[layout] where it has the key, else is left out).
    """

    NAME: str  # the format's name: --format, provenance.source_format, reference forward, zoo entries
    DESCRIPTION: str  # its files, in words, for messages
    RENAMES: list[tuple[str, str]]  # (source, gnhub) name templates: {i}, {p} (weight|bias), {rest}, PLACEHOLDERS
    PLACEHOLDERS: dict[str, tuple[str, str | None]]  # its own {name}: (pattern, value when writing a source name)
    DROPPED: list[str]  # regular expressions of source tensors that carry no weights (optimizer state)
    UNUSED: dict[str, list[str]]  # per layout version: tensors a file of that layout carries unused
    SETTINGS: dict[str, ConfigPatch]  # per layout version: the format's own defaults
    DEFAULTS: str  # where the preprocessing comes from when neither the file nor the zoo says, in words

    def detect(self, obj) -> bool: ...  # whether an unpickled file is of this format

    def source_tensors(self, obj) -> dict: ...  # source name -> tensor (or what the file holds there)

    def layout_version(self, keys) -> str: ...  # which of the format's layouts the tensor names are

    def reorder_classes(self, tensors: dict, layout: str) -> None: ...  # to gnhub's class order, in place

    def meta_classes(self, obj) -> list[str] | None: ...  # class names the file carries

    def meta_version(self, obj) -> str | None: ...  # the framework version that wrote it

    def read_settings(self, obj) -> FileSettings: ...  # what the file says about its settings


FORMATS: dict[str, Converter] = {m.NAME: m for m in (mmdet, detectron, detectron2, paddle)}

_PLACEHOLDERS = {"i": (r"\d+", None), "p": ("weight|bias", None), "rest": (".+", None)}


class RenameTable:
    """A converter's (source, gnhub) name templates, usable in both directions."""

    def __init__(self, converter: Converter, layout: str | None = None):
        """`layout` (a converter's layout_version) adds the tensors that layout carries unused."""
        holders = {**_PLACEHOLDERS, **converter.PLACEHOLDERS}
        self.defaults = {k: v for k, (_, v) in holders.items() if v is not None}
        self.rules = [
            (_compile(src, holders), src, _compile(dst, holders), dst) for src, dst in converter.RENAMES
        ]
        self.dropped = [re.compile(p) for p in converter.DROPPED + converter.UNUSED.get(layout, [])]

    def to_gnhub(self, key: str) -> str | None:
        for src_re, _, _, dst in self.rules:
            m = src_re.fullmatch(key)
            if m:
                return dst.format(**m.groupdict())
        return None

    def to_source(self, key: str, **values: str) -> str | None:
        """The source name of a gnhub name; `values` fill placeholders absent from the gnhub name."""
        for _, src, dst_re, _ in self.rules:
            m = dst_re.fullmatch(key)
            if m:
                return src.format(**{**self.defaults, **values, **m.groupdict()})
        return None

    def is_dropped(self, key: str) -> bool:
        return any(p.fullmatch(key) for p in self.dropped)


def _compile(template: str, holders: dict) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)
    return re.compile(
        "".join(f"(?P<{p}>{holders[p][0]})" if i % 2 else re.escape(p) for i, p in enumerate(parts))
    )
