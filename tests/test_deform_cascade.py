"""Deformable convolution v1 in the backbone (detectron2's DeformBottleneckBlock) and the cascade
RoI heads (detectron2's CascadeROIHeads at test time), piece by piece on small inputs."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import small_config

from gnhub import stages as S
from gnhub.config import ModelConfig
from gnhub.errors import GnhubError
from gnhub.modeling.mask_rcnn import GNMaskRCNN
from gnhub.modeling.resnet import Bottleneck


def _block(deform: bool, stride: int) -> Bottleneck:
    cfg = ModelConfig().backbone
    cfg.num_groups, cfg.groups = 2, 2
    torch.manual_seed(0)
    return Bottleneck(8, 8, 16, stride, cfg, deform=deform).eval()


def test_a_deformable_block_with_zero_offsets_is_the_plain_block():
    plain, deform = _block(False, 2), _block(True, 2)
    deform.load_state_dict(plain.state_dict(), strict=False)
    torch.nn.init.zeros_(deform.conv2_offset.weight), torch.nn.init.zeros_(deform.conv2_offset.bias)
    x = torch.randn(1, 8, 9, 11)
    with torch.no_grad():
        torch.testing.assert_close(deform(x), plain(x), rtol=1e-5, atol=1e-5)
    assert deform.conv2_offset.weight.shape == (18, 8, 3, 3) and deform.conv2_offset.stride == (2, 2)


def test_offsets_are_dy_dx_pairs_per_tap_sampling_the_input_there():
    """An offset of (+1, 0) at every tap samples one row lower: inside the map, the plain conv of
    the input moved up a row."""
    block = _block(True, 1)
    torch.nn.init.zeros_(block.conv2_offset.weight)
    block.conv2_offset.bias.data = torch.tensor([1.0, 0.0] * 9)
    seen = {}
    block.gn2.register_forward_pre_hook(lambda m, args: seen.update(conv2=args[0].clone()))
    x = torch.randn(1, 8, 6, 7)
    with torch.no_grad():
        block(x)
        y = F.relu(block.gn1(block.conv1(x)))
        expected = F.conv2d(y[:, :, 1:], block.conv2.weight, padding=1, groups=2)
    torch.testing.assert_close(seen["conv2"][:, :, 1:5], expected[:, :, 1:5], rtol=1e-5, atol=1e-5)


def _cascade_config():
    config = small_config()
    config.convention = "detectron2"
    config.preprocess.max_size = (96, 64)
    config.rpn.pre_nms_top_n, config.rpn.post_nms_top_n = 100, 40
    config.fpn.channels, config.roi_heads.fc_channels, config.roi_heads.num_groups = 32, 64, 8
    config.roi_heads.mask_num_convs, config.roi_heads.num_convs = 2, 1
    config.roi_heads.box_stds = (0.1, 0.1, 0.2, 0.2, 0.05, 0.05, 0.1, 0.1, 1 / 30, 1 / 30, 1 / 15, 1 / 15)
    config.roi_heads.class_agnostic = True
    config.roi_heads.score_thresh = 0.0
    config.check()
    return config


def test_a_cascade_of_identical_stages_without_deltas_keeps_the_proposals_and_the_first_stages_scores():
    config = _cascade_config()
    torch.manual_seed(0)
    model = GNMaskRCNN(config)
    assert model.roi_heads.box_head.bbox_pred.out_features == 4 and len(model.roi_heads.cascade_heads) == 2
    assert len(model.roi_heads.mask_head.convs) == 2
    torch.nn.init.zeros_(model.roi_heads.box_head.bbox_pred.weight)
    torch.nn.init.zeros_(model.roi_heads.box_head.bbox_pred.bias)
    for head in model.roi_heads.cascade_heads:
        head.load_state_dict(model.roi_heads.box_head.state_dict())
    image = np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)
    record = {}
    model(image, record=record)
    with torch.no_grad():
        feats = model.fpn(model.backbone(record[S.INPUT]))[:4]
        size = [tuple(record[S.INPUT].shape[-2:])]
        _, _, probs, deltas, boxes = model.roi_heads.classify(feats, [record[S.PROPOSALS]], size)
    first = F.softmax(record[S.ROI_CLS_LOGITS], dim=-1)
    torch.testing.assert_close(probs, first, rtol=1e-6, atol=1e-7)  # (s + s + s) * (1 / 3)
    torch.testing.assert_close(boxes, record[S.PROPOSALS])  # zero deltas: the proposals, already clipped
    assert torch.equal(deltas, torch.zeros_like(deltas))


@pytest.mark.parametrize("stds, agnostic", [((0.1,) * 6, True), ((0.1,) * 8, False)])
def test_box_stds_are_four_per_stage_and_a_cascade_is_class_agnostic(stds, agnostic):
    data = ModelConfig().to_dict()
    data["roi_heads"].update(box_stds=list(stds), class_agnostic=agnostic)
    with pytest.raises(GnhubError, match=r"roi_heads.box_stds holds \d+ values; expected 4 per stage"):
        ModelConfig.from_dict(data)


def test_a_cascade_under_a_convention_without_one_is_one_clear_error():
    config = _cascade_config()
    config.convention = "mmdet"
    with pytest.raises(GnhubError, match="3 cascade stages, which mmdetection's conventions do not have"):
        GNMaskRCNN(config)
