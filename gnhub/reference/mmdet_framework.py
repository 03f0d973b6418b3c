"""mmdetection itself as the reference (`gnhub verify --against mmdet`), where it is installed.

The detector is built from a config the user trusts (mmdetection's own packaged config for a zoo
model, or `--framework-config`): the config embedded in a checkpoint is never executed, and the
checkpoint is never unpickled by mmdetection; the tensors gnhub read safely are loaded with
`load_state_dict(strict=True)`. mmdetection's `inference_detector` runs each image; forward
hooks record its stages under gnhub's names.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import GnhubError

__all__ = ["MMDetFramework", "PACKAGED", "SETUP", "mmdet_version", "packaged_config"]

SETUP = ("--against mmdet needs mmdetection 3.x with mmcv's compiled ops (mmcv 2.0/2.1): "
         "pip install -U openmim && mim install 'mmcv>=2.0.0,<2.2.0' mmdet==3.3.0")

# gnhub zoo name (mmdetection 2.x spelling) -> mmdetection 3.x packaged config, under configs/
PACKAGED = {
    "mask_rcnn_r50_fpn_gn-all_2x_coco": "gn/mask-rcnn_r50_fpn_gn-all_2x_coco.py",
    "mask_rcnn_r50_fpn_gn-all_3x_coco": "gn/mask-rcnn_r50_fpn_gn-all_3x_coco.py",
    "mask_rcnn_r101_fpn_gn-all_2x_coco": "gn/mask-rcnn_r101_fpn_gn-all_2x_coco.py",
    "mask_rcnn_r101_fpn_gn-all_3x_coco": "gn/mask-rcnn_r101_fpn_gn-all_3x_coco.py",
    "mask_rcnn_r50_fpn_gn-all_contrib_2x_coco": "gn/mask-rcnn_r50-contrib_fpn_gn-all_2x_coco.py",
    "mask_rcnn_r50_fpn_gn-all_contrib_3x_coco": "gn/mask-rcnn_r50-contrib_fpn_gn-all_3x_coco.py",
    "faster_rcnn_r50_fpn_gn_ws-all_1x_coco": "gn+ws/faster-rcnn_r50_fpn_gn-ws-all_1x_coco.py",
    "faster_rcnn_r101_fpn_gn_ws-all_1x_coco": "gn+ws/faster-rcnn_r101_fpn_gn-ws-all_1x_coco.py",
    "faster_rcnn_x50_32x4d_fpn_gn_ws-all_1x_coco": "gn+ws/faster-rcnn_x50-32x4d_fpn_gn-ws-all_1x_coco.py",
    "faster_rcnn_x101_32x4d_fpn_gn_ws-all_1x_coco": "gn+ws/faster-rcnn_x101-32x4d_fpn_gn-ws-all_1x_coco.py",
    "mask_rcnn_r50_fpn_gn_ws-all_2x_coco": "gn+ws/mask-rcnn_r50_fpn_gn-ws-all_2x_coco.py",
    "mask_rcnn_r101_fpn_gn_ws-all_2x_coco": "gn+ws/mask-rcnn_r101_fpn_gn-ws-all_2x_coco.py",
    "mask_rcnn_x50_32x4d_fpn_gn_ws-all_2x_coco": "gn+ws/mask-rcnn_x50-32x4d_fpn_gn-ws-all_2x_coco.py",
    "mask_rcnn_x101_32x4d_fpn_gn_ws-all_2x_coco": "gn+ws/mask-rcnn_x101-32x4d_fpn_gn-ws-all_2x_coco.py",
    "mask_rcnn_r50_fpn_gn_ws-all_20_23_24e_coco": "gn+ws/mask-rcnn_r50_fpn_gn-ws-all_20-23-24e_coco.py",
    "mask_rcnn_r101_fpn_gn_ws-all_20_23_24e_coco": "gn+ws/mask-rcnn_r101_fpn_gn-ws-all_20-23-24e_coco.py",
    "mask_rcnn_x50_32x4d_fpn_gn_ws-all_20_23_24e_coco": "gn+ws/mask-rcnn_x50-32x4d_fpn_gn-ws-all_20-23-24e_coco.py",
    "mask_rcnn_x101_32x4d_fpn_gn_ws-all_20_23_24e_coco":
        "gn+ws/mask-rcnn_x101-32x4d_fpn_gn-ws-all_20-23-24e_coco.py",
    "faster_rcnn_r50_fpn_gn-all_scratch_6x_coco": "scratch/faster-rcnn_r50-scratch_fpn_gn-all_6x_coco.py",
    "mask_rcnn_r50_fpn_gn-all_scratch_6x_coco": "scratch/mask-rcnn_r50-scratch_fpn_gn-all_6x_coco.py",
}


def mmdet_version() -> str:
    try:
        # mmdetection is optional: imported only for `--against mmdet`
        import mmdet
        from mmdet.apis import init_detector  # noqa: F401 - needs mmcv's compiled ops
    except Exception as e:  # ImportError, or mmcv's own errors when its ops are missing
        raise GnhubError(f"{SETUP} ({type(e).__name__}: {e})") from None
    return mmdet.__version__


def packaged_config(zoo_name: str | None) -> Path:
    """mmdetection's own config for a zoo model, from the installed package."""
    # mmdetection is optional: imported only for `--against mmdet`
    import mmdet

    if zoo_name not in PACKAGED:
        raise GnhubError(f"`against=mmdet`: {zoo_name or 'this checkpoint'} is not a zoo model; pass "
                         "`framework_config` with the mmdetection config it was trained with (the config inside the "
                         "checkpoint is never executed)")
    path = Path(mmdet.__file__).parent / ".mim" / "configs" / PACKAGED[zoo_name]
    if not path.is_file():
        raise GnhubError(f"{path}: missing from the installed mmdetection; pass `framework_config`")
    return path


class MMDetFramework:
    """Runs mmdetection on an RGB image and returns gnhub's stage names (as MMDetReference)."""

    def __init__(self, state_dict: dict[str, Tensor], settings: dict, config: Path):
        # mmdetection is optional: imported only for `--against mmdet`
        from mmcv.transforms import Compose
        from mmdet.apis import init_detector
        from mmdet.utils import get_test_pipeline_cfg

        self.model = init_detector(str(config), None, device="cpu")
        steps = [s for s in get_test_pipeline_cfg(self.model.cfg.copy()) if "LoadAnnotations" not in s["type"]]
        steps[0]["type"] = "mmdet.LoadImageFromNDArray"  # images come as arrays, without annotations
        self.pipeline = Compose(steps)
        try:
            self.model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)
        except RuntimeError as e:
            raise GnhubError(f"{config}: the checkpoint does not fit this mmdetection config ({e})") from None
        self.record: dict = {}
        m = self.model
        m.backbone.register_forward_pre_hook(lambda mod, args: self.record.__setitem__("input", args[0]))
        m.backbone.register_forward_hook(lambda mod, args, out: self._keep("backbone.c", out))
        m.neck.register_forward_hook(lambda mod, args, out: self._keep("fpn.p", out))
        m.rpn_head.register_forward_hook(lambda mod, args, out: self._rpn(out))
        m.roi_head.bbox_head.register_forward_hook(lambda mod, args, out: self._roi(out))
        if m.roi_head.with_mask:  # Faster R-CNN has none
            m.roi_head.mask_head.register_forward_hook(lambda mod, args, out: self.record.__setitem__("mask_all", out))
        predict = m.rpn_head.predict

        def rpn_predict(*args, **kwargs):
            results = predict(*args, **kwargs)
            self.record["proposals"] = results[0].bboxes
            self.record["proposal_scores"] = results[0].scores
            return results

        m.rpn_head.predict = rpn_predict

    def _keep(self, prefix: str, outputs) -> None:
        self.record.update({f"{prefix}{i + 2}": t for i, t in enumerate(outputs)})

    def _rpn(self, out) -> None:
        objectness, deltas = out
        self._keep("rpn.objectness.p", objectness)
        self._keep("rpn.deltas.p", deltas)

    def _roi(self, out) -> None:
        self.record["roi.cls_logits"], self.record["roi.box_deltas"] = out[0], out[1]

    @torch.inference_mode()
    def __call__(self, rgb: np.ndarray) -> dict[str, Tensor]:
        # mmdetection is optional: imported only for `--against mmdet`
        from mmdet.apis import inference_detector

        self.record = {}
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # as mmdetection's loaders read images
        pred = inference_detector(self.model, bgr, test_pipeline=self.pipeline).pred_instances
        out = {k: v.detach().cpu() for k, v in self.record.items() if k != "mask_all"}
        labels = pred.labels.cpu()
        out.update(boxes=pred.bboxes.cpu(), scores=pred.scores.cpu(), labels=labels)
        if self.model.roi_head.with_mask:
            masks = self.record.get("mask_all")
            out["mask_logits"] = masks[torch.arange(len(labels)), labels].cpu() if masks is not None else \
                torch.zeros(0, 28, 28)
            out["masks"] = pred.masks.cpu().bool()
        return out
