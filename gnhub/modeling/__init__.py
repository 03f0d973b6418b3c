"""gnhub's models, one file per stage (see docs/layout.md for the tensor names)."""
from .base import DTYPES, GNModel, with_weights
from .classifier import GNResNetClassifier
from .mask_rcnn import GNMaskRCNN

__all__ = ["DTYPES", "GNMaskRCNN", "GNModel", "GNResNetClassifier", "with_weights"]
