"""What a checkpoint says about its own settings, as a converter reads it (see Converter.read_settings)."""
from __future__ import annotations

from dataclasses import dataclass, field

from gnhub.config import unknown_path_message

__all__ = ["FileSettings"]


@dataclass
class FileSettings:
    """Settings by config path ("preprocess.mean", "rpn.nms_iou", "backbone.weight_std", ...):
    the paths checked when made, the values (the file's) left to the engine; what could not be
    read; where the preprocessing came from, where the format says so itself."""

    values: dict = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    origin: str | None = None

    def __post_init__(self):
        for path in self.values:  # the paths are the converter's own: an unknown one is its bug
            problem = unknown_path_message(path)
            if problem:
                raise ValueError(f"a converter's read_settings: {problem}")
