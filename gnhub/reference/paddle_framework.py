"""PaddleDetection itself as the reference (`gnhub verify --against paddle`), where PaddlePaddle and
PaddleDetection's source are installed (docs/paddle.md).

Paddle needs numpy<2 and an interpreter of its own, so PaddleDetection runs in a subprocess of that
interpreter (paddle_worker.py), each image once, exchanging .npz files (numpy only, read back
without pickle) in a scratch folder of gnhub's (files.scratch_dir). The model is built from
PaddleDetection's own configs/gn config of the checkpoint's kind (never a config from the
checkpoint); the tensors gnhub read safely are given to it as they are (Linear weights back in
paddle's [in, out]), every name and shape checked by `set_state_dict`'s caller. Its stages come back
under gnhub's names.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import GnhubError
from ..files import write_file
from ..settings import paddle_detection, paddle_python

__all__ = ["CONFIGS", "PaddleFramework", "SETUP", "paddle_config", "paddle_setup"]

SETUP = ("--against paddle needs PaddlePaddle 2.6 (numpy<2) and PaddleDetection's source in an environment of "
         "their own (docs/paddle.md, 'The PaddlePaddle environment'): give its python with --paddle-python "
         "(GNHUB_PADDLE_PYTHON) and the source folder with --paddle-detection (GNHUB_PADDLE_DETECTION)")
WORKER = Path(__file__).with_name("paddle_worker.py")
CONFIGS = ("faster_rcnn_r50_fpn_gn_2x_coco", "mask_rcnn_r50_fpn_gn_2x_coco", "cascade_rcnn_r50_fpn_gn_2x_coco",
           "cascade_mask_rcnn_r50_fpn_gn_2x_coco")  # configs/gn: what gnhub's paddle converter reads


def _run(args: list, ppdet: Path, timeout: float) -> str:
    """The worker in paddle's interpreter: its output, or its last error line as a GnhubError."""
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ppdet)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GnhubError(f"{SETUP} ({type(e).__name__}: {e})") from None
    if proc.returncode:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise GnhubError(f"PaddleDetection ({args[0]}) failed: {lines[-1] if lines else proc.returncode}")
    return proc.stdout.strip()


def paddle_setup(python: Path | None = None, ppdet: Path | None = None) -> tuple[Path, Path, str]:
    """(python, PaddleDetection's folder, their versions): the arguments, else GNHUB_PADDLE_PYTHON
    and GNHUB_PADDLE_DETECTION, checked by importing paddle and ppdet there."""
    python, ppdet = python or paddle_python(), ppdet or paddle_detection()
    if python is None or ppdet is None:
        raise GnhubError(SETUP)
    if not Path(python).is_file() or not (Path(ppdet) / "ppdet").is_dir() or not (Path(ppdet) / "configs").is_dir():
        raise GnhubError(f"{SETUP} (no such python {python}, or no ppdet/ and configs/ in {ppdet})")
    try:
        version = _run([str(python), str(WORKER), "--version", str(ppdet)], Path(ppdet), 300)
    except GnhubError as e:
        raise GnhubError(f"{SETUP} ({e})") from None
    return Path(python), Path(ppdet), version.splitlines()[-1]


def paddle_config(entry_name: str | None, keys) -> str:
    """PaddleDetection's configs/gn config of a checkpoint: its zoo name's, else the one its tensors
    are (CascadeHead's per-stage names, a mask head)."""
    if entry_name in CONFIGS:
        return entry_name
    cascade = any(k.startswith("bbox_head.bbox_score_stage0.") for k in keys)
    masks = any(k.startswith("mask_head.") for k in keys)
    return f"{'cascade_' if cascade else ''}{'mask' if masks else 'faster'}_rcnn_r50_fpn_gn_2x_coco"


class PaddleFramework:
    """Runs PaddleDetection on an RGB image in paddle's interpreter and returns gnhub's stage names
    (as PaddleReference). `scratch`: files.scratch_dir's folder, alive while this is used."""

    def __init__(self, state_dict: dict[str, Tensor], settings: dict, python: Path, ppdet: Path, config: str,
                 scratch: Path, linear: tuple[str, ...]):
        self.python, self.ppdet, self.config, self.scratch = python, ppdet, config, scratch
        self.settings = settings
        arrays = {k: (v.t() if k in linear else v).float().contiguous().numpy() for k, v in state_dict.items()
                  if isinstance(v, Tensor)}
        self.name = f"{id(self):x}"  # one framework per dtype of the weights (verify_against): files apart
        self.weights = write_file(scratch / f"{self.name}-weights.npz", lambda f: np.savez(f, **arrays), "GNHUB_CACHE")
        self.count = 0

    @torch.inference_mode()
    def __call__(self, rgb: np.ndarray) -> dict[str, Tensor]:
        self.count += 1
        stem = self.scratch / f"{self.name}-{self.count}"
        image = write_file(stem.with_suffix(".image.npz"), lambda f: np.savez(f, rgb=rgb), "GNHUB_CACHE")
        s = self.settings
        request = {"ppdet": str(self.ppdet), "config": self.config, "weights": str(self.weights),
                   "image": str(image), "output": str(stem.with_suffix(".out.npz")),
                   "target_size": [min(s["preprocess.max_size"]), max(s["preprocess.max_size"])],
                   "pre_nms_top_n": int(s["rpn.pre_nms_top_n"]), "post_nms_top_n": int(s["rpn.post_nms_top_n"]),
                   "keep_top_k": int(s["roi_heads.detections_per_image"])}
        path = write_file(stem.with_suffix(".json"), json.dumps(request).encode(), "GNHUB_CACHE")
        _run([str(self.python), str(WORKER), str(path)], self.ppdet, 3600)
        with np.load(request["output"], allow_pickle=False) as out:
            return {k: torch.from_numpy(out[k]) for k in out.files}
