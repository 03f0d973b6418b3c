"""What a checkpoint says about its own settings, as a converter reads it (see Converter.read_settings)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FileSettings:
    """Settings by config path ("preprocess.mean", "rpn.nms_iou", "roi_heads.score_thresh",
    "backbone.weight_std", ...), unchecked; what could not be read; where the preprocessing
    came from, where the format says so itself."""

    values: dict = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    origin: str | None = None
