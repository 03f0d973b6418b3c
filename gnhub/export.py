"""`gnhub export`: a GN Mask R-CNN as an ONNX graph from the network input to detections and
their 28x28 mask probabilities (and a Panoptic FPN's semantic logits), verified against the
PyTorch model on the built-in images the way a conversion is verified against its source. Runs
with gnhub.runtime, without torch."""
from __future__ import annotations

import copy
import importlib.util
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from . import __version__
from . import stages as S
from .api import load
from .compare import compare, failure_message, images_for, run_model, with_input_sample
from .errors import GnhubError
from .files import sha256_file
from .frameworks import info
from .images import load_image
from .layout import GOLDEN_FILE, ONNX_FILE, new_export_dir, write_config, write_report
from .modeling import GNMaskRCNN
from .modeling.conv import WSConv2d, standardized
from .modeling.transform import ImageBatch
from .report import Report
from .runtime import INPUTS, OnnxPredictor, network_input, outputs_of
from .runtime import load as load_export
from .samples import sample_images
from .weights import read_golden, write_golden

__all__ = ["DEFORM_OPSET", "DETECTOR_STAGES", "DetectionGraph", "MIN_OPSET", "check_exportable", "export",
    "export_model", "export_onnx", "export_stages", "onnx_stages", "standardized_copy", "tolerance", "verify_export",
    "verify_export_golden"]

MIN_OPSET = 16  # RoiAlign with coordinate_transformation_mode=half_pixel (mmdetection's aligned=True)
DEFORM_OPSET = 19  # DeformConv
DETECTOR_STAGES = (S.INPUT_SAMPLE, S.PROPOSALS, S.PROPOSAL_SCORES, S.BOXES, S.SCORES, S.LABELS)


def export_stages(config) -> tuple[str, ...]:
    """The stages an export keeps as golden outputs: the mask logits too for a Mask R-CNN, and a
    Panoptic FPN's semantic labels, segment map and segments."""
    masks = (S.MASK_LOGITS,) if config.task == "instance-segmentation" else ()
    return DETECTOR_STAGES + masks + ((S.SEM_SEG, S.PANOPTIC, S.SEGMENTS) if config.panoptic else ())


class DetectionGraph(nn.Module):
    """What the ONNX graph computes: the model's own forward on one image's normalised, padded
    input (1, 3, H, W), its resized size (h, w) and scale factor (w, h), stopped where
    gnhub.runtime takes over (`finish=False`: the convention's postprocess and mask pasting,
    in numpy) -> runtime.outputs_of's outputs, in order."""

    def __init__(self, model: GNMaskRCNN):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, image_size: Tensor, scale_factor: Tensor):
        out = self.model(ImageBatch(x, [image_size], [None], [scale_factor]), finish=False)[0]
        return tuple(out[k] for k in outputs_of(self.model.config))


def tolerance(config) -> str:
    """The tolerances an export is held to: "onnx", or "onnx-ws" for a weight-standardised model."""
    ws = config.backbone.weight_std or config.fpn.weight_std or config.roi_heads.box_weight_std or \
        config.roi_heads.mask_weight_std
    return "onnx-ws" if ws else "onnx"


def standardized_copy(model: GNMaskRCNN) -> GNMaskRCNN:
    """The model for tracing: every weight-standardised conv replaced by a plain one holding the
    standardised filters torch computes (onnxruntime's reductions would round them otherwise).
    The model itself keeps its weights, and its standardisation."""
    if not any(isinstance(m, WSConv2d) for m in model.modules()):
        return model
    traced = copy.deepcopy(model)
    for module in list(traced.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, WSConv2d):
                plain = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                  child.padding, child.dilation, child.groups, child.bias is not None)
                plain.weight.data = standardized(child.weight).detach()
                plain.bias = child.bias
                setattr(module, name, plain)
    return traced


def check_exportable(model) -> None:
    """One clear error for what does not export (never a silently different graph)."""
    c = model.config
    if model.task == "image-classification":
        raise GnhubError(f"{c.name}: ONNX export covers GN Mask R-CNN and Faster R-CNN models, not the ImageNet "
                         "classifier")
    if not info(c.convention).EXPORTS:
        raise GnhubError(f"{c.name}: has {info(c.convention).TITLE}'s conventions (convention in config.json); ONNX "
                         "export covers mmdetection-, detectron2- and PaddleDetection-convention models")
    if model.dtype != torch.float32:
        raise GnhubError(f"{c.name}: holds {str(model.dtype).replace('torch.', '')} weights; ONNX export is float32 "
                         "only: convert or load the model in float32")


def export_onnx(model: GNMaskRCNN, path: Path, opset: int) -> None:
    """Traces the graph on the first built-in image and writes it with dynamic height and width."""
    import torchvision.ops  # noqa: F401 - registers the ONNX forms of torchvision::nms and ::roi_align

    if opset < MIN_OPSET:
        raise GnhubError(f"`opset={opset}`: needs {MIN_OPSET} or later (ONNX RoiAlign with half_pixel coordinates, "
                         "mmdetection's aligned RoIAlign)")
    if opset < DEFORM_OPSET and any(model.config.backbone.deform_stages):
        raise GnhubError(f"{model.config.name}: `opset={opset}`: deformable convolutions (backbone.deform_stages in "
                         f"config.json) need {DEFORM_OPSET} or later (ONNX DeformConv)")
    x, size, factor = (torch.from_numpy(a) for a in network_input(load_image(sample_images()[0]), model.config))
    outputs = outputs_of(model.config)
    dynamic = {"input": {2: "height", 3: "width"}, **{o: {0: "detections"} for o in outputs}}
    dynamic["proposals"] = dynamic["proposal_scores"] = {0: "proposals"}
    if S.SEM_SEG_LOGITS in outputs:  # a Panoptic FPN's semantic logits, at the padded input's size
        dynamic[S.SEM_SEG_LOGITS] = {2: "height", 3: "width"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python values; the tests cover other sizes
        try:
            torch.onnx.export(DetectionGraph(standardized_copy(model)).eval(), (x, size, factor), str(path),
                              opset_version=opset,
                              input_names=list(INPUTS), output_names=list(outputs),
                              dynamic_axes=dynamic, dynamo=False)
        except Exception as e:  # the exporter's many error types: a failure to export is one message
            raise GnhubError(f"{model.config.name}: ONNX export failed at opset {opset} "
                             f"({str(e).strip().splitlines()[0][:200]})") from None


def verify_export(model: GNMaskRCNN, onnx_path: Path) -> tuple[Report, dict[str, Tensor]]:
    """The ONNX graph through gnhub.runtime against the PyTorch model on the built-in images:
    input, proposals, detections (IoU, label, score), mask logits and pasted masks, a Panoptic
    FPN's semantic logits, labels and panoptic segments. Returns the
    report and the PyTorch model's stages as golden outputs."""
    predictor = OnnxPredictor(onnx_path, model.config)
    checks, golden = [], {}
    for name, rgb in images_for(None):
        ref = run_model(model, rgb)
        got = onnx_stages(predictor, rgb)
        checks += compare(name, got, {k: v for k, v in ref.items() if k in got}, tolerance(model.config))
        golden.update({f"{name}/{k}": ref[k].contiguous() for k in export_stages(model.config)})
        if not all(c.passed for c in checks):
            break
    return Report(checks, tolerance(model.config), f"gnhub {model.config.name} in PyTorch {torch.__version__}"), golden


def onnx_stages(predictor: OnnxPredictor, rgb) -> dict[str, Tensor]:
    """The runtime's stages of one image as tensors, with `input.sample`, for `compare.compare`."""
    return with_input_sample({k: torch.from_numpy(v) for k, v in predictor.stages(rgb).items()})


def export_model(model: str | Path, out: str | Path | None = None, *, opset: int | None = None, verify: bool = True,
                 force: bool = False, settings=None, log=lambda msg: None) -> dict:
    """`gnhub export`: onnx and onnxruntime checked first, `model` (anything gnhub.load takes)
    loaded, then `export` to `out` (default ./NAME-onnx)."""
    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise GnhubError(f"ONNX export needs {' and '.join(missing)}: pip install 'gnhub[onnx]'")
    m = load(model, settings=settings)
    return export(m, out or Path(f"{m.config.name}-onnx"), opset=opset, verify=verify, force=force, log=log)


def export(model: GNMaskRCNN, out: str | Path, *, opset: int | None = None, verify: bool = True, force: bool = False,
           log=lambda msg: None) -> dict:
    """Writes OUT/model.onnx beside the model's config.json, and with `verify` the export report
    (verification.json) and golden.safetensors; a failed verification writes nothing. `opset`
    defaults to 17, or 19 (DEFORM_OPSET) for a model with deformable convolutions."""
    check_exportable(model)
    opset = opset or (DEFORM_OPSET if any(model.config.backbone.deform_stages) else 17)
    start = time.perf_counter()
    out = Path(out)
    with new_export_dir(out, force) as tmp:
        log(f"exporting {model.config.name} to ONNX (opset {opset}) ...")
        export_onnx(model, tmp / ONNX_FILE, opset)
        exported = time.perf_counter() - start
        write_config(tmp, model.config)
        report, golden = Report([], tolerance(model.config), "not verified"), None
        if verify:
            log("verifying the ONNX graph against the PyTorch model on the built-in images ...")
            report, golden = verify_export(model, tmp / ONNX_FILE)
            if not report.passed:
                raise GnhubError(f"{model.config.name}: the ONNX export does not verify, nothing written: "
                                 f"{failure_message(report)}")
            write_golden(tmp, golden)
        report.extra = {"onnx_sha256": sha256_file(tmp / ONNX_FILE), "opset": opset,
                        "exporter": f"gnhub {__version__}, torch {torch.__version__}"}
        write_report(tmp, report)
    return {"output": str(out), "opset": opset, "verified": report.passed if verify else None,
            "bytes": (out / ONNX_FILE).stat().st_size, "export_seconds": round(exported, 2),
            "seconds": round(time.perf_counter() - start, 2)}


def verify_export_golden(directory: Path) -> Report:
    """`gnhub verify DIR` of an export: the graph on this machine's onnxruntime against the
    PyTorch model's outputs stored at export (every stage of every built-in image)."""
    predictor = load_export(directory)
    path = directory / GOLDEN_FILE
    stored = read_golden(path, "missing or unreadable", "export again with verification")
    checks = []
    stages = export_stages(predictor.config)
    for name, rgb in images_for(None):
        ref = {s: stored[f"{name}/{s}"] for s in stages if f"{name}/{s}" in stored}
        if len(ref) != len(stages):
            raise GnhubError(f"{path}: golden outputs of {name} incomplete; export again with verification")
        checks += compare(name, onnx_stages(predictor, rgb), ref, tolerance(predictor.config))
    return Report(checks, tolerance(predictor.config), "golden outputs of the PyTorch model")
