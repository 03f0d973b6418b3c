"""Verification reports: stage checks, tolerances, and reading verification.json (no torch)."""
from __future__ import annotations

import datetime
import json
import platform
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from . import __version__
from .errors import GnhubError
from .layout import VERIFICATION_FILE
from .samples import sample_images

# Dense stages: max |a - b| / max |b| must stay below `dense`. Detections are matched by box IoU.
TOLERANCES = {
    "float32": {"dense": 1e-4, "iou": 0.99, "score": 1e-3, "mask_iou": 0.99, "matched": 0.99},
    "float16": {"dense": 2e-2, "iou": 0.95, "score": 2e-2, "mask_iou": 0.95, "matched": 0.9},
    "bfloat16": {"dense": 5e-2, "iou": 0.9, "score": 5e-2, "mask_iou": 0.9, "matched": 0.8},
    # float32 on another runtime (an ONNX export on onnxruntime): its own kernels, so mask logits move
    # with RoIs a hundredth of a pixel apart (the pasted masks are what counts); boxes
    # also match with every corner within 0.02 px (sub-pixel boxes, where IoU says little)
    "onnx": {"dense": 5e-3, "iou": 0.99, "score": 1e-3, "mask_iou": 0.99, "matched": 0.99, "px": 0.02},
}

# The checks a verification must hold for every built-in image (others depend on what is detected).
REQUIRED_CHECKS = {
    "instance-segmentation": ("input", "fpn.p6", "proposals", "detections"),
    "image-classification": ("input", "logits"),
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
            "versions": {"gnhub": __version__, **{p: _version(p) for p in ("torch", "torchvision", "onnxruntime")},
                         "python": platform.python_version()},
            "date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
            "checks": [asdict(c) for c in self.checks],
        }

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
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def read_report(model_dir: Path, task: str) -> dict | None:
    """verification.json of a model directory, checked: None where there is none; one clear
    error where it is not a report, or does not hold every required check of every built-in image."""
    path = Path(model_dir) / VERIFICATION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        checks = [StageCheck(**c) for c in data["checks"]]
        if not isinstance(data["passed"], bool) or data["dtype"] not in TOLERANCES or not isinstance(
                data["against"], str):
            raise TypeError("passed, dtype or against")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise GnhubError(f"{path}: not a gnhub verification report ({type(e).__name__}: {str(e)[:80]}); "
                         "verify the model again (gnhub verify MODEL --source SRC)") from None
    if data["passed"]:
        done = {(c.image, c.stage) for c in checks if c.passed}
        missing = [f"{n}/{s}" for n in (p.name for p in sample_images()) for s in REQUIRED_CHECKS.get(task, ())
                   if (n, s) not in done]
        if missing or not all(c.passed for c in checks):
            raise GnhubError(f"{path}: says passed, but {', '.join(missing[:4]) or 'a check'} did not pass or is "
                             "missing; verify the model again")
    return data
