"""The GN Mask R-CNN, one file per stage (see docs/layout.md for the tensor names)."""
from .mask_rcnn import GNMaskRCNN

__all__ = ["GNMaskRCNN"]
