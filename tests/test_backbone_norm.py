"""The backbone's normalisation as a config option: GroupNorm or detectron2's FrozenBatchNorm2d
(its inference formula), ResNet-152, and an FPN without norm (convs with biases)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gnhub.config import ModelConfig
from gnhub.convert import infer_config
from gnhub.errors import GnhubError
from gnhub.modeling.fpn import FPN
from gnhub.modeling.mask_rcnn import GNMaskRCNN
from gnhub.modeling.norm import FrozenBatchNorm2d
from gnhub.modeling.resnet import GNResNet


def _random_statistics(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, FrozenBatchNorm2d):
            n = m.weight.numel()
            m.weight.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.copy_(torch.randn(n, generator=g))
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.1)


def test_frozen_batchnorm_is_detectron2s_formula():
    bn = FrozenBatchNorm2d(8, eps=1e-5)
    x = torch.randn(2, 8, 5, 7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(bn(x), x, rtol=1e-6, atol=1e-6)  # the identity as built (running_var 1 - eps)
    _random_statistics(bn, 1)
    # detectron2's training-time branch: x * scale + bias, with the statistics folded in
    scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
    folded = x * scale.view(1, -1, 1, 1) + (bn.bias - bn.running_mean * scale).view(1, -1, 1, 1)
    torch.testing.assert_close(bn(x), folded, rtol=1e-6, atol=1e-6)
    assert not list(bn.parameters()) and set(bn.state_dict()) == {"weight", "bias", "running_mean", "running_var"}


def test_a_frozen_batchnorm_resnet_computes_what_torch_batchnorm_computes():
    config = ModelConfig()
    config.backbone.norm = "FrozenBN"
    torch.manual_seed(0)
    net = GNResNet(config.backbone).eval()
    _random_statistics(net, 2)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = net(x)
        for name, m in list(net.named_modules()):  # torch's own BatchNorm2d, eval mode, same buffers
            if isinstance(m, FrozenBatchNorm2d):
                bn = nn.BatchNorm2d(m.weight.numel(), m.eps).eval()
                bn.load_state_dict(m.state_dict(), strict=False)
                parent, _, child = name.rpartition(".")
                setattr(net.get_submodule(parent) if parent else net, child, bn)
        theirs = net(x)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_resnext152_frozen_bn_with_a_plain_fpn_is_inferred_from_its_tensors():
    config = ModelConfig()
    config.backbone.depth, config.backbone.norm, config.backbone.groups, config.backbone.base_width = 152, \
        "FrozenBN", 32, 8
    config.fpn.norm = "none"
    with torch.device("meta"):
        model = GNMaskRCNN(config)
    assert [len(getattr(model.backbone, f"layer{i}")) for i in range(1, 5)] == [3, 8, 36, 3]
    assert model.backbone.layer1[0].conv2.weight.shape == (256, 8, 3, 3)  # 32 groups of 8 channels
    assert model.fpn.lateral[0].norm is None and model.fpn.lateral[0].conv.bias is not None
    inferred = infer_config(model.state_dict(), "x152.pkl")
    assert (inferred.backbone.depth, inferred.backbone.norm, inferred.backbone.groups, inferred.backbone.base_width,
            inferred.fpn.norm) == (152, "FrozenBN", 32, 8, "none")
    assert inferred.architecture == "Mask R-CNN, ResNeXt-152 32x8d-FPN, FrozenBN backbone, GN heads"
    assert ModelConfig.from_dict(config.to_dict()) == config


def test_an_fpn_without_norm_is_conv_plus_bias():
    config = ModelConfig().fpn
    config.norm, config.channels = "none", 8
    torch.manual_seed(0)
    fpn = FPN((4, 6), config)
    feats = [torch.randn(1, 4, 8, 8), torch.randn(1, 6, 4, 4)]
    with torch.no_grad():
        p2, p3, p4 = fpn(feats)
        l2, l3 = (F.conv2d(f, m.conv.weight, m.conv.bias) for f, m in zip(feats, fpn.lateral))
        l2 = l2 + F.interpolate(l3, size=(8, 8), mode="nearest")
        torch.testing.assert_close(p2, F.conv2d(l2, fpn.output[0].conv.weight, fpn.output[0].conv.bias, padding=1))
    assert p4.shape[-1] == 2  # P6 of these two levels: P3 subsampled


@pytest.mark.parametrize("path, value", [("backbone", {"norm": "BN"}), ("fpn", {"norm": "GN+WS"}),
                                         ("backbone", {"depth": 34})])
def test_an_unknown_norm_or_depth_in_config_json_is_one_clear_error(path, value):
    data = ModelConfig().to_dict()
    data[path].update(value)
    with pytest.raises(GnhubError, match=rf"config: {path}\.(norm|depth) is"):
        ModelConfig.from_dict(data)
