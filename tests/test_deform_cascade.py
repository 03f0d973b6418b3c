"""Deformable convolution v1 in the backbone (detectron2's DeformBottleneckBlock) and the cascade
RoI heads (detectron2's CascadeROIHeads at test time), piece by piece on small inputs."""
import torch
import torch.nn.functional as F

from gnhub.config import ModelConfig
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
