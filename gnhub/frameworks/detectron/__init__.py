"""Detectron (Caffe2)."""

__all__ = ["CARD", "EXPORTS", "RESIZE", "TITLE"]

TITLE = "Detectron"
RESIZE = "OpenCV bilinear, after subtracting the mean, as Detectron does"
EXPORTS = False  # its per-level proposal NMS, original-pixel detection and cv2 mask paste are not in the graph
# The model card's paragraph on the conventions (str.format with c = the ModelConfig).
CARD = """Box conventions are Detectron's (`convention: detectron` in config.json): widths `x2 - x1 + 1`,
rounded anchors, per-level RPN NMS on the padded image, RoIAlign without the half-pixel offset
(sampling ratio {c.roi_heads.sampling_ratio}), boxes decoded in original-image pixels, masks pasted with
OpenCV's resize; see docs/layout.md."""
