"""mmdetection 3.3 (and gnhub's defaults)."""

__all__ = ["CARD", "EXPORTS", "RESIZE", "TITLE"]

TITLE = "mmdetection"
RESIZE = "OpenCV bilinear"
EXPORTS = True
CARD = ""  # the model card's paragraph on the conventions: none, they are gnhub's defaults
