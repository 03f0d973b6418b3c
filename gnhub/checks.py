"""`gnhub verify MODEL`: the check that fits what MODEL names. An ONNX export directory is held to
its golden outputs on onnxruntime (gnhub/export.py); anything gnhub.load takes (a directory, a zoo
name, hf-hub:ORG/NAME) to its source or its golden outputs (gnhub/verify.py). A workflow above
both, so that verification never calls export back."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import GnhubError
from .export import verify_export_golden
from .files import check_output_file, write_file
from .layout import is_export_dir
from .resolve import resolve
from .verify import run_verify

__all__ = ["verify_model"]


def verify_model(model: str | Path, source=None, *, images=(), tolerance: str | None = None, against: str = "gnhub",
                 framework_config: Path | None = None, json_out: Path | None = None, settings=None,
                 paddle_python: Path | None = None, paddle_detection: Path | None = None,
                 dtype: str | None = None):
    """`gnhub verify`: an export directory against its golden outputs on onnxruntime; anything
    else gnhub.load takes with `run_verify`. With `json_out`, the full report is written there
    (its folder checked first); `dtype` "bfloat16": the model's bfloat16 arithmetic against its
    float32 (gnhub.bfloat16_check). Returns (report, gnhub -> source tensor names or None)."""
    if json_out:
        check_output_file(json_out, "--json")
    if is_export_dir(Path(model)):
        if source or images or against != "gnhub" or dtype:
            raise GnhubError(f"{model}: an ONNX export is checked against its golden outputs only; drop `source`, "
                             "`images`, `against` and `dtype`")
        report, names = verify_export_golden(Path(model)), None
    else:  # a zoo name or hf-hub: id downloads the golden outputs too
        report, names = run_verify(resolve(model, settings), source, [str(i) for i in images], tolerance, against,
                                   framework_config, paddle_python, paddle_detection, dtype)
    if json_out:
        text = json.dumps(report.to_dict(), indent=1) + "\n"
        write_file(Path(json_out), text.encode("utf-8"), "--json")
    return report, names
