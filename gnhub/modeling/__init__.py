"""gnhub's models, one file per stage (see docs/layout.md for the tensor names)."""
from .base import GNModel, with_weights
from .classifier import GNResNetClassifier
from .mask_rcnn import GNMaskRCNN

__all__ = ["GNMaskRCNN", "GNModel", "GNResNetClassifier", "with_weights"]
