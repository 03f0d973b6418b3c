"""Exported models without torch: onnxruntime, numpy and OpenCV. The preprocessing of
`GNMaskRCNN` (the same resize from gnhub.images, normalisation and padding in float32), and its
convention's postprocess and mask pasting in numpy (gnhub/frameworks/NAME/arrays.py); `gnhub
export` checks them against the PyTorch model.

    import gnhub.runtime
    model = gnhub.runtime.load("exported-dir")
    result = model.predict("photo.jpg")   # boxes, scores, labels, masks as numpy arrays
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from . import stages as S
from .config import ModelConfig
from .errors import GnhubError
from .frameworks import arrays, info
from .images import load_image, resize
from .layout import ONNX_FILE, read_export
from .panoptic_merge import combine, semantic_labels
from .resolve import resolve_export
from .settings import HubSettings

__all__ = ["DETECTOR_OUTPUTS", "INPUTS", "load", "network_input", "OnnxPredictor", "OUTPUTS", "outputs_of"]

INPUTS = ("input", "image_size", "scale_factor")  # the network input (1, 3, H, W), (h, w), (w, h)
# The graph's outputs, in order: detections, then what verification compares.
OUTPUTS = ("boxes", "scores", "labels", "mask_probs", "proposals", "proposal_scores", "mask_logits")
DETECTOR_OUTPUTS = ("boxes", "scores", "labels", "proposals", "proposal_scores")  # a Faster R-CNN's


def outputs_of(config: ModelConfig) -> tuple[str, ...]:
    """The graph's outputs: a Panoptic FPN's semantic logits (1, C, Hpad, Wpad) after a Mask R-CNN's."""
    if config.task != "instance-segmentation":
        return DETECTOR_OUTPUTS
    return (*OUTPUTS, S.SEM_SEG_LOGITS) if config.panoptic else OUTPUTS


def network_input(rgb: np.ndarray, config: ModelConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One RGB uint8 image -> the graph's inputs: (1, 3, H, W) float32 normalised and zero-padded
    to the size divisor, the resized (h, w) as int64, the (w, h) scale factor as float32."""
    cfg = config.preprocess
    img, (sw, sh) = resize(rgb, cfg, arrays(config.convention).rescale)
    if img.dtype == np.uint8:
        img = (img.astype(np.float32) - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    h, w = img.shape[:2]
    div = cfg.size_divisor
    x = np.zeros((1, 3, math.ceil(h / div) * div, math.ceil(w / div) * div), np.float32)
    x[0, :, :h, :w] = img.transpose(2, 0, 1)
    return x, np.array([h, w], np.int64), np.array([sw, sh], np.float32)


class OnnxPredictor:
    """An exported GN Mask R-CNN, Faster R-CNN or Panoptic FPN on onnxruntime: `predict(image)`
    gives what `model.predict` gives (`boxes` xyxy in original pixels, `scores`, `labels`, `masks`
    (N, H, W) bool where the model has masks; a Panoptic FPN's `sem_seg`, `panoptic_seg` and
    `segments`) as numpy."""

    @property
    def task(self) -> str:
        return self.config.task

    def __init__(self, onnx_path: str | Path, config: ModelConfig, providers: list[str] | None = None,
                 threads: int | None = None, onnx_sha256: str | None = None):
        try:
            # onnxruntime is optional (gnhub[onnx]): a clear error where it is missing
            import onnxruntime as ort
        except ImportError:
            raise GnhubError("running ONNX models needs onnxruntime: pip install 'gnhub[onnx]'") from None
        if not info(config.convention).EXPORTS:
            raise GnhubError(f"{onnx_path}: config.json names convention {config.convention}, which does not export; "
                             "export the model again")
        self.config = config
        self.twins = arrays(config.convention)
        self.onnx_sha256 = onnx_sha256
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initialisers are not the user's business
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(onnx_path), options, providers=providers or
                                                ["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            if "DeformConv" in str(e):  # deformable convolutions: ONNX DeformConv, in onnxruntime's CPU kernels of 2026
                raise GnhubError(f"{onnx_path}: onnxruntime {ort.__version__} cannot run DeformConv (deformable "
                                 "convolutions): pip install -U onnxruntime") from None
            raise GnhubError(f"{onnx_path}: not a model onnxruntime can run ({str(e).strip()[:200]}); export it "
                             "again") from None
        inputs = {i.name: len(i.shape) for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        self.outputs = outputs_of(config)
        if inputs.get("input") != 4 or not set(inputs) <= set(INPUTS) or outputs != list(self.outputs):
            raise GnhubError(f"{onnx_path}: not a gnhub export of this config (inputs {sorted(inputs)}, outputs "
                             f"{outputs}; expected {', '.join(INPUTS)} -> {', '.join(self.outputs)}); export the "
                             "model again")

    def fingerprint(self) -> str:
        """sha256 of what decides the outputs: the graph and the config (without name and provenance)."""
        config = {k: v for k, v in self.config.to_dict().items() if k not in ("name", "provenance", "weights_sha256")}
        return hashlib.sha256(f"onnx {self.onnx_sha256} {json.dumps(config, sort_keys=True)}".encode()).hexdigest()

    def stages(self, image) -> dict[str, np.ndarray]:
        """The network input, every graph output and the pasted masks of one image; a Panoptic
        FPN's semantic labels, segment map and segments too."""
        rgb = load_image(image)
        x, size, factor = network_input(rgb, self.config)
        feed = {"input": x, "image_size": size, "scale_factor": factor}
        outputs = self.session.run(list(self.outputs), {i.name: feed[i.name] for i in self.session.get_inputs()})
        stages = {"input": x, **dict(zip(self.outputs, outputs))}
        stages["boxes"], keep = self.twins.postprocess(stages["boxes"], size.tolist(), rgb.shape[:2])
        if keep is not None:
            for k in ("scores", "labels", "mask_probs", "mask_logits"):
                if k in stages:
                    stages[k] = stages[k][keep]
        if "mask_probs" in stages:
            stages["masks"] = self.twins.paste_masks(stages["mask_probs"], stages["boxes"], *rgb.shape[:2],
                                                     self.config.roi_heads.mask_threshold)
        if S.SEM_SEG_LOGITS in stages:
            stages[S.SEM_SEG] = semantic_labels(stages[S.SEM_SEG_LOGITS][0], size.tolist(), rgb.shape[:2])
            stages[S.PANOPTIC], stages[S.SEGMENTS] = combine(stages["masks"], stages["scores"], stages["labels"],
                                                             stages[S.SEM_SEG], self.config.semantic)
        return stages

    def predict(self, images, batch_size: int = 1):
        """Detections of one image (a path, PIL image or RGB array), or a list of them for a list
        (the graph takes one image at a time: `batch_size` is accepted for gnhub.predict's sake)."""
        if isinstance(images, (list, tuple)):
            return [self.predict(im) for im in images]
        s = self.stages(images)
        return {k: s[k] for k in ("boxes", "scores", "labels", "masks", S.SEM_SEG, S.PANOPTIC, S.SEGMENTS) if k in s}


def load(model: str | Path, providers: list[str] | None = None, threads: int | None = None,
         hub_dir: str | None = None, endpoint: str | None = None, settings=None) -> OnnxPredictor:
    """The predictor of an exported directory (`gnhub export`), or of the export published with
    a model (a zoo name, hf-hub:ORG/NAME, ORG/NAME in a directory hub; downloaded and cached by
    huggingface_hub). model.onnx's sha256 is checked against the export report. `settings` (a
    gnhub.settings.HubSettings) is overridden by `hub_dir` and `endpoint`."""
    path = resolve_export(model, (settings or HubSettings()).merged(hub_dir=hub_dir, endpoint=endpoint))
    config, report = read_export(path)
    return OnnxPredictor(path / ONNX_FILE, config, providers, threads, report.extra["onnx_sha256"])
