"""Verification reports: stage checks, tolerances, what a passed report must hold (no torch).
gnhub/layout.py reads and writes them as verification.json."""
from __future__ import annotations

import datetime
import sys
from dataclasses import asdict, dataclass, field

from . import __version__
from .errors import GnhubError
from .samples import sample_images

__all__ = ["REQUIRED_CHECKS", "Report", "StageCheck", "TOLERANCES"]

# Dense stages: max |a - b| / max |b| must stay below `dense`. Detections are matched by box IoU.
TOLERANCES = {
    "float32": {"dense": 1e-4, "iou": 0.99, "score": 1e-3, "mask_iou": 0.99, "matched": 0.99},
    # float32 against another framework's own float32 run (`verify --against`): the RoI heads'
    # logits and deltas (`roi`) follow the proposals' float32 corners through RoIAlign's bilinear
    # weights; measured on the seed-40 PaddleDetection Mask R-CNN at 1333x800 (docs/paddle.md):
    # gnhub's float32 vs its own float64 9.6e-5, PaddleDetection's 4.6e-5, the two 1.04e-4 apart,
    # the heads themselves on the same proposals 5.3e-6: two float32 runs may sit 2 x 1e-4 apart
    "float32-framework": {"dense": 1e-4, "roi": 2e-4, "iou": 0.99, "score": 1e-3, "mask_iou": 0.99, "matched": 0.99},
    "float16": {"dense": 2e-2, "iou": 0.95, "score": 2e-2, "mask_iou": 0.95, "matched": 0.9},
    "bfloat16": {"dense": 5e-2, "iou": 0.9, "score": 5e-2, "mask_iou": 0.9, "matched": 0.8},
    # float32 on another runtime (an ONNX export on onnxruntime): its own kernels, so mask logits move
    # with RoIs a hundredth of a pixel apart (the pasted masks are what counts); boxes
    # also match with every corner within 0.02 px (sub-pixel boxes, where IoU says little)
    "onnx": {"dense": 5e-3, "iou": 0.99, "score": 1e-3, "mask_iou": 0.99, "matched": 0.99, "px": 0.02},
    # the same for weight-standardised models, where onnxruntime's RoiAlign rounding grows in the
    # heads (worst measured over the built-in images, random weights: mask logits 6.4% apart,
    # scores 0.043, 96% of detections matched at IoU 0.99, mask IoU 0.972)
    "onnx-ws": {"dense": 0.1, "iou": 0.99, "score": 0.05, "mask_iou": 0.95, "matched": 0.95, "px": 0.02},
}

# The checks a verification must hold for every built-in image (others depend on what is detected).
REQUIRED_CHECKS = {
    "instance-segmentation": ("input", "fpn.p6", "proposals", "detections"),
    "object-detection": ("input", "fpn.p6", "proposals", "detections"),
    "image-classification": ("input", "logits"),
    "onnx-export": ("input", "proposals", "detections"),  # the graph against the PyTorch model
}

@dataclass
class StageCheck:
    image: str
    stage: str
    passed: bool
    max_abs: float | None
    max_rel: float | None
    tolerance: str
    detail: str = ""



@dataclass
class Report:
    checks: list[StageCheck]
    dtype: str
    against: str
    extra: dict = field(default_factory=dict)  # what else the report says (an export's onnx_sha256, opset, ...)
    written: dict = field(default_factory=dict)  # versions and date, as read from a file

    @property
    def passed(self) -> bool:
        """Every check passed, and there was something to check."""
        return bool(self.checks) and all(c.passed for c in self.checks)

    def first_failure(self) -> StageCheck | None:
        return next((c for c in self.checks if not c.passed), None)

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "against": self.against,
            "dtype": self.dtype,
            "tolerances": TOLERANCES[self.dtype],
            "versions": self.written.get("versions") or {
                "gnhub": __version__, **{p: _version(p) for p in ("torch", "torchvision", "onnxruntime")},
                "python": ".".join(map(str, sys.version_info[:3]))},
            "date": self.written.get("date") or
            datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
            "checks": [asdict(c) for c in self.checks],
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data, task: str) -> Report:
        """A report as read from a file, checked: a report that says it passed must hold a passed
        check of every required stage of every built-in image."""
        try:
            checks = [StageCheck(**c) for c in data["checks"]]
            if not isinstance(data["passed"], bool) or data["dtype"] not in TOLERANCES or not isinstance(
                    data["against"], str):
                raise TypeError("passed, dtype or against")
        except (KeyError, TypeError) as e:
            raise GnhubError(f"not a gnhub verification report ({type(e).__name__}: {str(e)[:80]})") from None
        known = {"passed", "against", "dtype", "tolerances", "versions", "date", "checks"}
        report = cls(checks, data["dtype"], data["against"], {k: v for k, v in data.items() if k not in known},
                     {k: data[k] for k in ("versions", "date") if k in data})
        if data["passed"]:
            done = {(c.image, c.stage) for c in checks if c.passed}
            missing = [f"{n}/{s}" for n in (p.name for p in sample_images()) for s in REQUIRED_CHECKS.get(task, ())
                       if (n, s) not in done]
            if missing or not report.passed:
                raise GnhubError(f"says passed, but {', '.join(missing[:4]) or 'a check'} did not pass or is missing")
        return report

    def summary(self) -> list[dict]:
        """Per stage, the worst case over images."""
        rows: dict[str, dict] = {}
        for c in self.checks:
            row = rows.setdefault(c.stage, {"stage": c.stage, "passed": True, "max_abs": 0.0, "max_rel": 0.0,
                                            "tolerance": c.tolerance})
            row["passed"] &= c.passed
            for k in ("max_abs", "max_rel"):
                v = getattr(c, k)
                row[k] = max(row[k], v) if v is not None else row[k]
        return list(rows.values())


def _version(package: str) -> str | None:
    from importlib import metadata  # 15 ms: paid where a report is written, not by every command

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
