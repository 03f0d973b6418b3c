"""GNMaskRCNN: the whole detector, its predict/inspect API and its directory layout."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch
from torch import Tensor, nn

from ..checkpoint import read_model_dir, write_model_dir
from ..config import ModelConfig
from ..errors import GnhubError
from .fpn import FPN
from .masks import paste_masks
from .resnet import STAGE_CHANNELS, GNResNet
from .roi_heads import RoIHeads
from .rpn import RPN
from .transform import ImageBatch, Preprocessor, load_image


class GNMaskRCNN(nn.Module):
    """GN Mask R-CNN (ResNet-FPN) with its preprocessing; inference only.

    `predict(images)` gives boxes, scores, labels and masks per image in original pixels;
    `inspect(image)` gives every intermediate stage of one image under stable names.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.preprocessor = Preprocessor(config.preprocess)
        self.backbone = GNResNet(config.backbone)
        self.fpn = FPN(STAGE_CHANNELS, config.fpn)
        self.rpn = RPN(config.fpn.channels, config.rpn)
        self.roi_heads = RoIHeads(
            config.fpn.channels, config.num_classes, config.rpn.strides[:4], config.roi_heads
        )
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.backbone.conv1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.conv1.weight.dtype

    # -- inference --------------------------------------------------------------------------

    @torch.inference_mode()
    def run(self, batch: ImageBatch, record: dict | None = None) -> list[dict[str, Tensor]]:
        """Detections for a preprocessed batch; `record` (if given) receives image 0's stages."""
        c = self.backbone(batch.tensor)
        p = self.fpn(c)
        objectness, deltas = self.rpn.head(p)
        props = [self.rpn.proposals(objectness, deltas, s, b) for b, s in enumerate(batch.image_sizes)]
        rois = _to_rois([boxes for boxes, _ in props])
        cls_logits, box_deltas = self.roi_heads.box_head(self.roi_heads.box_pool(p[:4], rois))
        counts = [len(boxes) for boxes, _ in props]
        dets = [
            self.roi_heads.detect(logit, delta, boxes, size)
            for logit, delta, (boxes, _), size in zip(
                cls_logits.split(counts), box_deltas.split(counts), props, batch.image_sizes
            )
        ]
        mask_rois = _to_rois([boxes for boxes, _, _ in dets])
        labels = torch.cat([lab for _, _, lab in dets])
        mask_logits = self.roi_heads.mask_logits(p[:4], mask_rois, labels).split([len(d[0]) for d in dets])

        results = []
        for (boxes, scores, labels), logits, sf, (h, w) in zip(
            dets, mask_logits, batch.scale_factors, batch.original_sizes
        ):
            boxes = boxes / boxes.new_tensor(sf).repeat(2)
            masks = paste_masks(logits.sigmoid(), boxes, h, w, self.config.roi_heads.mask_threshold)
            results.append({"boxes": boxes.float(), "scores": scores.float(), "labels": labels, "masks": masks})

        if record is not None:
            record["input"] = batch.tensor[:1]
            record.update({f"backbone.c{i + 2}": x[:1] for i, x in enumerate(c)})
            record.update({f"fpn.p{i + 2}": x[:1] for i, x in enumerate(p)})
            record.update({f"rpn.objectness.p{i + 2}": x[:1] for i, x in enumerate(objectness)})
            record.update({f"rpn.deltas.p{i + 2}": x[:1] for i, x in enumerate(deltas)})
            record["proposals"], record["proposal_scores"] = props[0]
            record["roi.cls_logits"] = cls_logits[: counts[0]]
            record["roi.box_deltas"] = box_deltas[: counts[0]]
            record["mask_logits"] = mask_logits[0]
            record.update(results[0])
        return results

    def predict(self, images, batch_size: int = 1):
        """Detections for one image (a dict) or a list of images (a list of dicts).

        An image is a file path, a PIL image or an HxWx3 uint8 RGB array. Each result has
        `boxes` (N, 4) xyxy in original pixels, `scores` (N,), `labels` (N,) indexing
        `config.classes`, and `masks` (N, H, W) bool. Images are batched only with images of
        the same padded size, so a result never depends on what else is in the batch.
        """
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        if not items:
            raise GnhubError("predict got an empty list of images")
        if batch_size < 1:
            raise GnhubError(f"batch size must be at least 1, got {batch_size}")
        rgbs = [load_image(im) for im in items]
        resized = [self.preprocessor.resize(im) for im in rgbs]
        groups = defaultdict(list)
        div = self.config.preprocess.size_divisor
        for i, (img, _) in enumerate(resized):
            groups[(-(-img.shape[0] // div), -(-img.shape[1] // div))].append(i)
        results: list[dict | None] = [None] * len(items)
        for idx in groups.values():
            for start in range(0, len(idx), batch_size):
                chunk = idx[start : start + batch_size]
                batch = self.preprocessor.batch(
                    [resized[i][0] for i in chunk],
                    [rgbs[i].shape[:2] for i in chunk],
                    [resized[i][1] for i in chunk],
                    self.device,
                    self.dtype,
                )
                for i, res in zip(chunk, self.run(batch)):
                    results[i] = {k: v.cpu() for k, v in res.items()}
        return results[0] if single else results

    def inspect(self, image) -> dict[str, Tensor]:
        """Every stage of one image, by name (see docs/layout.md, "Stage names")."""
        record: dict[str, Tensor] = {}
        self.run(self.preprocessor([load_image(image)], self.device, self.dtype), record)
        return record

    # -- layout -----------------------------------------------------------------------------

    def save_pretrained(self, path: str | Path, force: bool = False) -> Path:
        return write_model_dir(path, self.config, self.state_dict(), force=force)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> GNMaskRCNN:
        config, state_dict = read_model_dir(path)
        return with_weights(config, state_dict, str(path))


def with_weights(config: ModelConfig, state_dict: dict[str, Tensor], where: str) -> GNMaskRCNN:
    """A model whose parameters are the given tensors (no copy, no random initialisation).

    A missing, unexpected or misshapen tensor raises one error naming them.
    """
    with torch.device("meta"):
        model = GNMaskRCNN(config)
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or wrong:
        parts = [
            f"{label} {names[:5]}{' ...' if len(names) > 5 else ''}"
            for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if names
        ]
        raise GnhubError(f"{where}: weights do not fit the model in config.json: {'; '.join(parts)}")
    model.load_state_dict(state_dict, assign=True)
    return model.eval()


def _to_rois(boxes: list[Tensor]) -> Tensor:
    """Per-image (N_i, 4) boxes -> (sum N_i, 5) RoIs with the batch index first."""
    return torch.cat([torch.cat([b.new_full((len(b), 1), i), b], dim=1) for i, b in enumerate(boxes)])
