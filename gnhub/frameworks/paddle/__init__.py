"""PaddleDetection."""

__all__ = ["CARD", "EXPORTS", "RESIZE", "TITLE"]

TITLE = "PaddleDetection"
RESIZE = "OpenCV bicubic, normalised in [0, 1] units, as PaddleDetection's Resize and NormalizeImage do"
EXPORTS = True
# The model card's paragraph on the conventions (str.format with c = the ModelConfig).
CARD = """Box conventions are PaddleDetection's (`convention: paddle` in config.json): bicubic resize,
detectron2's anchors, proposals ranked by their objectness logits with paddle's generate_proposals
rules (boxes under one pixel dropped, NMS per level), its FPN level mapping, RoIAlign with
`aligned: {c.roi_heads.aligned}`, multi-class NMS, boxes divided by the scale factor; see
docs/paddle.md."""
