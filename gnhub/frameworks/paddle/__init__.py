"""PaddleDetection."""

__all__ = ["CARD", "CASCADE", "EXPORTS", "RESIZE", "TITLE"]

TITLE = "PaddleDetection"
RESIZE = "OpenCV bicubic, normalised in [0, 1] units, as PaddleDetection's Resize and NormalizeImage do"
# CascadeHead (ppdet/modeling/heads/cascade_head.py) as configs/gn/cascade_* build it: three stages,
# bbox_weight (10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15) (its defaults; the last is also
# BBoxPostProcess's RCNNBox prior_box_var) as gnhub's box_stds, reg_class_agnostic (4 deltas a stage).
CASCADE = {"roi_heads.box_stds": tuple(1.0 / w for weights in ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0),
                                                             (30.0, 30.0, 15.0, 15.0)) for w in weights),
           "roi_heads.class_agnostic": True}
EXPORTS = True
# The model card's paragraph on the conventions (str.format with c = the ModelConfig).
CARD = """Box conventions are PaddleDetection's (`convention: paddle` in config.json): bicubic resize,
detectron2's anchors, proposals ranked by their objectness logits with paddle's generate_proposals
rules (boxes under one pixel dropped, NMS per level), its FPN level mapping, RoIAlign with
`aligned: {c.roi_heads.aligned}`, multi-class NMS, boxes divided by the scale factor; see
docs/paddle.md."""
