"""Source formats gnhub converts from: one module each, a table of names and conventions.

`RenameTable` reads a module's (source, gnhub) name templates in either direction.
"""
import re

from . import detectron, mmdet

FORMATS = {mmdet.NAME: mmdet, detectron.NAME: detectron}

_PLACEHOLDERS = {"i": (r"\d+", None), "p": ("weight|bias", None), "rest": (".+", None)}


class RenameTable:
    """A converter's (source, gnhub) name templates, usable in both directions."""

    def __init__(self, converter, layout: str | None = None):
        """`layout` (a converter's layout_version) adds the blobs that layout carries unused."""
        holders = {**_PLACEHOLDERS, **getattr(converter, "PLACEHOLDERS", {})}
        self.defaults = {k: v for k, (_, v) in holders.items() if v is not None}
        self.rules = [
            (_compile(src, holders), src, _compile(dst, holders), dst) for src, dst in converter.RENAMES
        ]
        unused = getattr(converter, "UNUSED", {}).get(layout, [])
        self.dropped = [re.compile(p) for p in converter.DROPPED + unused]

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
