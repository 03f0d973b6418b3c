"""detectron2's primitives in gnhub/modeling and gnhub/images.py, one at a time, against values
worked out by hand from detectron2's own code (box_regression.py Box2BoxTransform.apply_deltas,
proposal_utils.py find_top_rpn_proposals, poolers.py assign_boxes_to_levels, postprocessing.py
detector_postprocess, transforms ResizeShortestEdge); the real-run tests hold them end to end."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from gnhub.config import PreprocessConfig, RoIHeadsConfig, RPNConfig
from gnhub.frameworks.detectron2 import arrays
from gnhub.frameworks.detectron2.convention import CONVENTION, decode_boxes
from gnhub.images import resize
from gnhub.modeling.roi_heads import MultiLevelRoIAlign
from gnhub.modeling.rpn import RPN

R2 = math.sqrt(2)


def test_box_decoding_divides_by_the_weights_and_clamps_dw_dh_from_above_only():
    # weights (10, 10, 5, 5) = 1 / box_stds; box (10, 20, 50, 100): w 40, h 80, centre (30, 60)
    boxes = torch.tensor([[10.0, 20.0, 50.0, 100.0]] * 2)
    deltas = torch.tensor([[1.0, -2.0, 0.5, 10.0],  # dx 0.1, dy -0.2, dw 0.1, dh 2
                           [0.0, 0.0, 50.0, -50.0]])  # dw 10 -> log(1000 / 16); dh -10 stays
    got = decode_boxes(boxes, deltas, (0.1, 0.1, 0.2, 0.2))
    w, h = math.exp(0.1) * 40, math.exp(2.0) * 80  # centre (0.1 * 40 + 30, -0.2 * 80 + 60) = (34, 44)
    tiny = math.exp(-10.0) * 80
    expected = torch.tensor([[34 - w / 2, 44 - h / 2, 34 + w / 2, 44 + h / 2],
                             [30 - 1250.0, 60 - tiny / 2, 30 + 1250.0, 60 + tiny / 2]])  # 62.5 x 40 wide
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-4)


def test_proposals_rank_logits_per_level_then_overall_with_nms_per_level():
    cfg = RPNConfig(pre_nms_top_n=2, post_nms_top_n=5, nms_iou=0.2)
    rpn = RPN(8, cfg, CONVENTION)
    # one location per level, anchors of ratio (0.5, 1, 2) centred on (0, 0), clipped to the image
    logits = [[5.0, 1.0, 3.0], [4.0, 4.5, -1.0], [0.1, 0.2, 0.3], [-2.0, -3.0, -4.0], [2.0, 6.0, -5.0]]
    objectness = [torch.tensor(v).view(1, 3, 1, 1) for v in logits]
    deltas = [torch.zeros(1, 12, 1, 1) for _ in logits]
    boxes, scores = rpn.proposals(objectness, deltas, (1000, 1000), 0, cfg=cfg)
    # each level's best 2; in a level the runner-up overlaps the best by IoU 1/3 or 0.55 > 0.2: gone.
    # Across levels IoU 0.25 (level 0's 5.0 box and level 1's 4.5 one) suppresses nothing.
    assert scores.tolist() == [6.0, 5.0, 4.5, pytest.approx(0.3), -2.0]  # logits, not probabilities
    expected = torch.tensor([[0, 0, 256, 256], [0, 0, 16 * R2, 8 * R2], [0, 0, 32, 32], [0, 0, 32 * R2, 64 * R2],
                             [0, 0, 128 * R2, 64 * R2]], dtype=torch.float32)
    torch.testing.assert_close(boxes, expected, rtol=1e-6, atol=1e-4)


def test_proposals_drop_boxes_not_wider_and_taller_than_min_size():
    cfg = RPNConfig(pre_nms_top_n=3, post_nms_top_n=20, nms_iou=1.0, min_size=16.0)
    rpn = RPN(8, cfg, CONVENTION)
    objectness = [torch.tensor([3.0, 2.0, 1.0]).view(1, 3, 1, 1)] + [torch.full((1, 3, 1, 1), -9.0)] * 4
    deltas = [torch.zeros(1, 12, 1, 1) for _ in range(5)]
    boxes, scores = rpn.proposals(objectness, deltas, (1000, 1000), 0, cfg=cfg)
    # level 0 (side 32): (0, 0, 22.6, 11.3), (0, 0, 16, 16) and (0, 0, 11.3, 22.6): none is > 16 both ways
    assert 2.0 not in scores.tolist() and 3.0 not in scores.tolist() and len(scores) == 12


def test_level_mapping_is_floor_of_4_plus_log2_of_size_over_224_clamped_to_p2_p5():
    pooler = MultiLevelRoIAlign(7, (4, 8, 16, 32), RoIHeadsConfig(), CONVENTION)
    sides = [224.0, 223.5, 112.0, 111.5, 448.0, 10000.0, 1.0, 447.0]
    rois = torch.tensor([[0.0, 5.0, 5.0, 5.0 + s, 5.0 + s] for s in sides])
    # floor(4 + log2(s / 224 + 1e-8)): 4, 3, 3, 2, 5, 9 -> 5, -4 -> 2, 4; minus the 2 of P2
    assert pooler.levels(rois).tolist() == [2, 1, 1, 0, 3, 3, 0, 2]


def test_detector_postprocess_scales_clips_and_drops_empty_boxes_in_torch_and_numpy_alike():
    boxes = torch.tensor([[10.0, 20.0, 100.0, 60.0], [-10.0, -10.0, 400.0, 250.0], [290.0, 10.0, 320.0, 50.0],
                          [310.0, 10.0, 320.0, 50.0]])
    resized, original = (200, 300), (100, 150)  # (h, w): scale 0.5 both ways
    out, nonempty = CONVENTION.postprocess(boxes, resized, original)
    expected = torch.tensor([[5.0, 10.0, 50.0, 30.0], [0.0, 0.0, 150.0, 100.0], [145.0, 5.0, 150.0, 25.0],
                             [150.0, 5.0, 150.0, 25.0]])
    assert torch.equal(out, expected) and nonempty.tolist() == [True, True, True, False]
    out_np, nonempty_np = arrays.postprocess(boxes.numpy(), resized, original)
    assert np.array_equal(out_np, out.numpy()) and nonempty_np.tolist() == nonempty.tolist()


@pytest.mark.parametrize("shape, size", [((480, 640), (800, 1067)), ((427, 640), (800, 1199)),
                                         ((640, 480), (1067, 800)), ((100, 1000), (133, 1333)),
                                         ((500, 500), (800, 800))])
def test_resize_shortest_edge_sizes_and_pils_bilinear(shape, size):
    # 800 / min side, unless the longer passes 1333 (then 1333 / longer); int(x + 0.5)
    rgb = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    img, factors = resize(rgb, PreprocessConfig(channel_order="BGR"), arrays.rescale)
    assert img.shape[:2] == size and factors == (size[1] / shape[1], size[0] / shape[0])
    pil = np.asarray(Image.fromarray(np.ascontiguousarray(rgb[:, :, ::-1])).resize(size[::-1], Image.BILINEAR))
    assert np.array_equal(img, pil)  # detectron2's ResizeTransform on uint8: PIL's bilinear, BGR as read
