"""What a convention is: the base every framework's convention object extends. The defaults are
what most frameworks do; a convention overrides where its framework differs."""
from __future__ import annotations

__all__ = ["Convention"]


class Convention:
    """A framework's rules for one detector, given to the stages as torchvision gives a BoxCoder.

    `cfg` arguments are the config's section of the stage asking (RPNConfig, RoIHeadsConfig,
    PreprocessConfig): the numbers are the model's, the rules the framework's.
    """

    name: str
    # the training losses: mmdetection's, or (True) detectron2's RPN and box stage
    # (RPN.detectron2_loss, RoIHeads._detectron2_loss), what PaddleDetection computes
    detectron2_losses = False
    # a cascade's 1 / stages: on each stage's losses (PaddleDetection's stage_loss_weights), or
    # (False) on its pooled features' gradient (detectron2's _ScaleGradient)
    stage_loss_weights = False
    cascades = False  # whether it has cascade RoI heads (`refine`)
    width_offset = 0.0  # boxes are x2 - x1 + width_offset wide
    rescale = None  # arrays.rescale: (network-order image, PreprocessConfig) -> (resized, (w, h) factor)

    def untrainable(self, config) -> str | None:
        """Why gnhub cannot train a model of this convention and config (one line), or None."""
        return None

    def base_anchors(self, stride: int, ratios, scales):
        """(A, 4) anchors of one level, centred on its first cell."""
        raise NotImplementedError

    def clip_size(self, image_size, padded):
        """What proposals are clipped to: the resized image (h, w) or the padded batch."""
        return image_size

    def proposals(self, base, objectness, deltas, image_size, b: int, scale, cfg):
        """Proposals (N, 4) and their scores for image `b` of the batch, best first; `base`: each
        level's base anchors; `scale` (resized / original) for rules in original pixels."""
        raise NotImplementedError

    def roi_levels(self, rois, finest_scale: float, num_levels: int):
        """The pyramid level index (0 = finest) of each of (K, 5) RoIs."""
        raise NotImplementedError

    def detection_frame(self, proposals, image_size, original_size, factors):
        """The proposals and image size in the pixels detection happens in (default: the network's)."""
        return proposals, image_size

    rescales_box_only = False  # a detector without a mask head scales its boxes to original pixels before NMS

    def detect(self, proposals, deltas, scores, labels, n: int, k: int, image_size, cfg, factors=None):
        """Boxes, scores and labels, best first, from n proposals each repeated for the k classes
        (n * k rows: proposals, float32 deltas, scores, labels). `factors` (w, h): given where
        rescales_box_only and the detector has no mask head; the boxes then come back in original
        pixels."""
        raise NotImplementedError

    def refine(self, boxes, deltas, stds, image_size):
        """A cascade stage's (N, 4) boxes from the previous stage's boxes and its class-agnostic
        deltas, decoded with that stage's `stds` and clipped to the image (h, w)."""
        raise NotImplementedError

    def stage_scores(self, probs):
        """A cascade's class probabilities from each stage's (a list): their mean, as detectron2's
        CascadeROIHeads computes it (the sum times 1 / stages)."""
        return sum(probs) * (1.0 / len(probs))

    def mask_rois(self, boxes, factors):
        """Detections as the mask head's RoIs, in the network's pixels."""
        return boxes

    def to_original(self, boxes, factors):
        """Detections into original pixels where the exported graph does it (default: nothing)."""
        return boxes

    def postprocess(self, boxes, image_size, original_size):
        """Detections after the graph: (boxes, which to keep or None for all). arrays.postprocess
        is its numpy twin."""
        return boxes, None

    def paste_masks(self, probs, boxes, height: int, width: int, threshold: float):
        """(D, M, M) probabilities into their (D, 4) boxes -> (D, height, width) bool masks."""
        raise NotImplementedError
