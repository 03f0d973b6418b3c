import math

import torch

from gnhub.frameworks.mmdet.convention import base_anchors
from gnhub.modeling.anchors import grid_anchors
from gnhub.modeling.boxes import batched_nms, decode_boxes, encode_boxes


def test_base_anchors_match_hand_computed_table():
    # stride 4, scale 8 -> side 32; ratio = h / w: w = 32 / sqrt(r), h = 32 * sqrt(r)
    got = base_anchors(4, (0.5, 1.0, 2.0), (8.0,))
    r = math.sqrt(0.5)
    w, h = 32 / r, 32 * r  # ratio 0.5: wide
    expected = torch.tensor([
        [-w / 2, -h / 2, w / 2, h / 2],
        [-16.0, -16.0, 16.0, 16.0],
        [-h / 2, -w / 2, h / 2, w / 2],
    ])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert got[0, 0] != round(float(got[0, 0]))  # unrounded, centre offset 0


def test_grid_anchors_order_is_y_x_anchor():
    base = base_anchors(8, (0.5, 1.0, 2.0), (8.0,))
    grid = grid_anchors(base, 8, height=2, width=3)
    assert grid.shape == (2 * 3 * 3, 4)
    # element (y=1, x=2, anchor=1) sits at index (1 * 3 + 2) * 3 + 1, shifted by (16, 8)
    torch.testing.assert_close(grid[(1 * 3 + 2) * 3 + 1], base[1] + torch.tensor([16.0, 8.0, 16.0, 8.0]))
    torch.testing.assert_close(grid[:3], base)


def test_decode_known_values_and_clipping():
    # mmdetection's documented example for delta2bbox with max_shape (32, 32)
    rois = torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [5, 5, 5, 5]])
    deltas = torch.tensor([[0.0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 2, -1], [0.7, -1.9, -0.5, 0.3]])
    got = decode_boxes(rois, deltas, (1.0, 1.0, 1.0, 1.0), (32, 32))
    expected = torch.tensor([
        [0.0000, 0.0000, 1.0000, 1.0000],
        [0.1409, 0.1409, 2.8591, 2.8591],
        [0.0000, 0.3161, 4.1945, 0.6839],
        [5.0000, 5.0000, 5.0000, 5.0000],
    ])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


def test_encode_decode_round_trip():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 500
    boxes = torch.cat([xy, xy + 20 + torch.rand(200, 2, generator=g) * 280], 1)
    xy2 = torch.rand(200, 2, generator=g) * 500
    targets = torch.cat([xy2, xy2 + 20 + torch.rand(200, 2, generator=g) * 280], 1)  # within exp(4.13)
    stds = (0.1, 0.1, 0.2, 0.2)
    back = decode_boxes(boxes, encode_boxes(boxes, targets, stds), stds)
    torch.testing.assert_close(back, targets, rtol=0, atol=1e-3)


def test_batched_nms_groups_do_not_suppress_each_other():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    keep = batched_nms(boxes, scores, torch.tensor([0, 1, 0, 0]), 0.5)
    assert keep.tolist() == [0, 1, 3]  # box 2 overlaps box 0 of its own group only


def test_batched_nms_split_path_equals_single_call():
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(3000, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + 5 + torch.rand(3000, 2, generator=g) * 50], 1)
    scores = torch.rand(3000, generator=g)
    groups = torch.randint(0, 7, (3000,), generator=g)
    assert torch.equal(batched_nms(boxes, scores, groups, 0.5), batched_nms(boxes, scores, groups, 0.5, split=100))
