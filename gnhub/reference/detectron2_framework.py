"""detectron2 itself as the reference (`gnhub verify --against detectron2`), where it is installed.

The model is built from a config the user trusts (detectron2's own model-zoo config of a zoo
model, `configs/Misc/NAME.yaml`, or `--d2-config`); the checkpoint is never unpickled by
detectron2: the tensors gnhub read safely are loaded with `load_state_dict(strict=True)`. Each
image runs as `DefaultPredictor` runs it (BGR in, ResizeShortestEdge, the model's own
postprocess); forward hooks record its stages under gnhub's names.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .. import stages as S
from ..errors import GnhubError

__all__ = ["Detectron2Framework", "SETUP", "detectron2_version", "zoo_config"]

SETUP = ("--against detectron2 needs detectron2 importable in gnhub's interpreter (its source on PYTHONPATH, built "
         "with `python setup.py build_ext --inplace` for its deformable convolution); see docs/detectron2_oracle.md")


def detectron2_version() -> str:
    try:
        # detectron2 is optional: imported only for `--against detectron2`
        import detectron2
        from detectron2.modeling import build_model  # noqa: F401
    except Exception as e:  # ImportError, or its own errors where a dependency is missing
        raise GnhubError(f"{SETUP} ({type(e).__name__}: {e})") from None
    return detectron2.__version__


def zoo_config(zoo_name: str | None) -> Path:
    """detectron2's own model-zoo config of a zoo model (`Misc/NAME.yaml`), from the installed package."""
    from ..zoo import MODELS  # the zoo is needed only for `--against detectron2`

    entry = MODELS.get(zoo_name or "")
    if entry is None or entry.source_format != "detectron2":
        raise GnhubError(f"`against=detectron2`: {zoo_name or 'this checkpoint'} is not a detectron2 zoo model; pass "
                         "`d2_config` with the detectron2 config it was trained with")
    # detectron2 is optional: imported only for `--against detectron2`
    from detectron2 import model_zoo

    try:
        return Path(model_zoo.get_config_file(f"Misc/{entry.name}.yaml"))
    except RuntimeError as e:
        raise GnhubError(f"Misc/{entry.name}.yaml: missing from the installed detectron2 ({e}); pass `d2_config`") \
            from None


class Detectron2Framework:
    """Runs detectron2 on an RGB image and returns gnhub's stage names (as Detectron2Reference)."""

    def __init__(self, state_dict: dict[str, Tensor], settings: dict, config: Path):
        # detectron2 is optional: imported only for `--against detectron2`
        import detectron2.data.transforms as T
        from detectron2.config import get_cfg
        from detectron2.modeling import build_model

        cfg = get_cfg()
        try:
            cfg.merge_from_file(str(config))
        except Exception as e:  # yacs' and yaml's own errors: the file is the user's
            raise GnhubError(f"{config}: not a detectron2 config detectron2 can read ({type(e).__name__}: {e})") \
                from None
        cfg.MODEL.DEVICE = "cpu"
        self.model = build_model(cfg).eval()
        try:
            self.model.load_state_dict({k: v.float() for k, v in state_dict.items() if isinstance(v, Tensor)},
                                       strict=True)
        except RuntimeError as e:
            raise GnhubError(f"{config}: the checkpoint does not fit this detectron2 config ({e})") from None
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT
        self.record: dict = {}
        m = self.model
        m.backbone.register_forward_pre_hook(lambda mod, args: self.record.__setitem__(S.INPUT, args[0]))
        m.backbone.bottom_up.register_forward_hook(
            lambda mod, args, out: self.record.update(S.levels(S.BACKBONE, [out[f"res{i}"] for i in range(2, 6)])))
        m.backbone.register_forward_hook(
            lambda mod, args, out: self.record.update(S.levels(S.FPN, [out[f"p{i}"] for i in range(2, 7)])))
        m.proposal_generator.rpn_head.register_forward_hook(lambda mod, args, out: self.record.update(
            {**S.levels(S.RPN_OBJECTNESS, out[0]), **S.levels(S.RPN_DELTAS, out[1])}))
        m.proposal_generator.register_forward_hook(lambda mod, args, out: self.record.update(
            {S.PROPOSALS: out[0][0].proposal_boxes.tensor, S.PROPOSAL_SCORES: out[0][0].objectness_logits}))
        roi = m.roi_heads
        first = roi.box_predictor[0] if isinstance(roi.box_predictor, torch.nn.ModuleList) else roi.box_predictor
        first.register_forward_hook(lambda mod, args, out: self.record.update(
            {S.ROI_CLS_LOGITS: out[0], S.ROI_BOX_DELTAS: out[1]}))
        self.masks = getattr(roi, "mask_on", False)
        if self.masks:
            roi.mask_head.predictor.register_forward_hook(
                lambda mod, args, out: self.record.__setitem__("mask_all", out))

    @torch.inference_mode()
    def __call__(self, rgb: np.ndarray) -> dict[str, Tensor]:
        # detectron2 is optional: imported only for `--against detectron2`
        from detectron2.modeling.postprocessing import detector_postprocess

        self.record = {}
        image = np.ascontiguousarray(rgb if self.input_format == "RGB" else rgb[:, :, ::-1])  # DefaultPredictor
        height, width = image.shape[:2]
        resized = self.aug.get_transform(image).apply_image(image)
        inputs = {"image": torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)),
                  "height": height, "width": width}
        inst = self.model.inference([inputs], do_postprocess=False)[0]
        inst.set("index", torch.arange(len(inst)))  # which detections detector_postprocess keeps
        kept = detector_postprocess(inst, height, width)
        out = {k: v.detach() for k, v in self.record.items() if k != "mask_all"}
        labels = kept.pred_classes
        out.update({S.BOXES: kept.pred_boxes.tensor, S.SCORES: kept.scores, S.LABELS: labels})
        if self.masks:
            logits = self.record.get("mask_all", torch.zeros(0, 1, 28, 28))  # no detection: no mask head run
            own = logits[torch.arange(len(inst)), inst.pred_classes.clamp(max=logits.shape[1] - 1)] \
                if logits.shape[1] > 1 else logits[:, 0]
            out[S.MASK_LOGITS] = own[kept.index]
            out[S.MASKS] = kept.pred_masks.bool()
        return out
