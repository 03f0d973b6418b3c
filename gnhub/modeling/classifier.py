"""GNResNetClassifier: a GN ResNet with its ImageNet classifier (Detectron's R-50-GN.pkl, R-101-GN.pkl)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import stages as S
from ..config import ModelConfig
from ..frameworks import convention as convention_of
from .base import GNModel
from .bfloat16 import network_layout
from .resnet import STAGE_CHANNELS, GNResNet
from .transform import ImageBatch, Preprocessor

__all__ = ["GNResNetClassifier"]


class GNResNetClassifier(GNModel):
    """GN ResNet -> global average pool -> fc (`fc`, Detectron's `pred`); inference only.

    `predict(images)` gives per image the `top_k` best `labels` (indexing `config.classes`) and
    their softmax `scores`. Its `backbone` has the same tensor names as GNMaskRCNN's, so it can
    start a detector: `detector.backbone.load_state_dict(classifier.backbone.state_dict())`.
    """

    tasks = ("image-classification",)

    def __init__(self, config: ModelConfig, top_k: int = 5):
        super().__init__()
        self.config = config
        self.top_k = top_k
        self.convention = convention_of(config.convention)  # only its resize matters here
        self.preprocessor = Preprocessor(config.preprocess, self.convention.rescale)
        self.backbone = GNResNet(config.backbone)
        self.fc = nn.Linear(STAGE_CHANNELS[-1], config.num_classes)
        self.eval()

    @torch.inference_mode()
    def forward(self, batch: ImageBatch, record: dict | None = None) -> list[dict[str, torch.Tensor]]:
        """The `top_k` labels and scores of each image of a preprocessed batch; `record` (if
        given) receives image 0's stages."""
        c = self.backbone(network_layout(batch.tensor))
        logits = self.fc(F.adaptive_avg_pool2d(c[-1], 1).flatten(1))
        scores, labels = logits.float().softmax(dim=1).topk(min(self.top_k, logits.shape[1]), dim=1)
        if record is not None:
            record[S.INPUT] = batch.tensor[:1]
            record.update(S.levels(S.BACKBONE, [x[:1] for x in c]))
            record[S.LOGITS] = logits[:1]
        return [{"labels": lab, "scores": s} for lab, s in zip(labels, scores)]
