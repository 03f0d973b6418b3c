"""detectron2."""

__all__ = ["CARD", "EXPORTS", "RESIZE", "TITLE"]

TITLE = "detectron2"
RESIZE = "Pillow bilinear, as detectron2's ResizeShortestEdge does"
EXPORTS = True
# The model card's paragraph on the conventions (str.format with c = the ModelConfig).
CARD = """Box conventions are detectron2's (`convention: detectron2` in config.json): proposals ranked
by their objectness logits and merged with torchvision's batched NMS, detectron2's RoI level
mapping, boxes clipped before scoring and scaled back by original / resized size, empty boxes
dropped; see docs/layout.md."""
