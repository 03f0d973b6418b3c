"""bfloat16 on the CPU at the speed of its matrix units (AMX, AVX512-BF16): oneDNN's bfloat16
convolutions work in channels_last (NHWC) memory, so activations and weights are kept there, and
the torch kernels that are slow there (ReLU, GroupNorm of small maps, the strided copy to NCHW)
are avoided. Every function leaves float32, and any other device, exactly as it was."""
from __future__ import annotations

import functools
import weakref

import torch
from torch import Tensor, nn

__all__ = ["GroupNorm", "memory_format", "nchw_float", "network_layout", "packable", "packed_conv", "relu_",
           "roi_align_features", "SMALL_MAP"]

SMALL_MAP = 65536  # values per sample: the RoI heads' 256x7x7 and 256x14x14 features


def memory_format(dtype: torch.dtype, device: torch.device) -> torch.memory_format:
    """channels_last for bfloat16 on the CPU: given NCHW, each convolution copied its input and
    weights to NHWC and its output back, 40% of a bfloat16 predict. NCHW otherwise."""
    if device.type == "cpu" and dtype == torch.bfloat16:
        return torch.channels_last
    return torch.contiguous_format


def network_layout(x: Tensor) -> Tensor:
    """An input batch in the memory format of its dtype and device."""
    return x.contiguous(memory_format=memory_format(x.dtype, x.device))


def relu_(x: Tensor) -> Tensor:
    """In-place ReLU. Without autograd, a bfloat16 CPU tensor is clamped as int16: a bfloat16's
    sign is its top bit, so its negative values are the negative integers, and torch's int16 clamp
    runs 2-3x faster than its bfloat16 ReLU (the same values; a NaN with the sign bit becomes 0)."""
    if x.dtype == torch.bfloat16 and x.device.type == "cpu" and not torch.is_grad_enabled():
        x.view(torch.int16).clamp_min_(0)
        return x
    return torch.relu_(x)


def nchw_float(x: Tensor) -> Tensor:
    """(N, C, H, W) as contiguous float32, as torchvision's RoIAlign reads it. A channels_last
    map is transposed image by image as a 2-D (H*W, C) copy, which torch does in cache-sized
    blocks: 8x faster than its element-by-element copy of the 4-D tensor."""
    if x.is_contiguous():
        return x.float()
    n, c, h, w = x.shape
    out = torch.empty(n, c, h, w, dtype=x.dtype, device=x.device)
    for i in range(n):
        out[i].view(c, h * w).copy_(x[i].permute(1, 2, 0).reshape(h * w, c).t())
    return out.float()


def roi_align_features(feats: list[Tensor]) -> list[Tensor]:
    """Pyramid levels as torchvision's RoIAlign reads them: half-precision CPU maps as float32
    NCHW copies (it has no bfloat16 CPU kernel; its float16 one is about 25x slower than float32),
    made once per forward for both heads; other maps as they are."""
    half = (torch.bfloat16, torch.float16)
    return [nchw_float(f) if f.device.type == "cpu" and f.dtype in half else f for f in feats]


@functools.cache
def _onednn_bfloat16() -> bool:
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def packable(x: Tensor) -> bool:
    """Whether a convolution of x runs on prepacked filters: bfloat16 on the CPU, no autograd,
    oneDNN with bfloat16 kernels."""
    return x.dtype == torch.bfloat16 and x.device.type == "cpu" and not torch.is_grad_enabled() and _onednn_bfloat16()


_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # conv -> (weight data, version, filters)


def _version(t: Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # an inference tensor: no version counter; replaced, not changed in place
        return None


def packed_conv(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """conv(x) on its filters (`conv.filters()`) reordered into oneDNN's blocked layout once:
    otherwise oneDNN reorders them at every call, a third of a bfloat16 predict's convolution time.
    They are reordered again when the weight changes (another tensor or an in-place update); the
    weight's data is held with them, so its memory is not reused by another while they are."""
    w = conv.weight
    held = _PACKED.get(conv)
    if held is None or held[0].data_ptr() != w.data_ptr() or held[1] != _version(w):
        filters = torch.ops.mkldnn._reorder_convolution_weight(conv.filters().to(x.dtype), list(conv.padding),
                                                                 list(conv.stride), list(conv.dilation), conv.groups,
                                                                 list(x.shape))
        held = _PACKED[conv] = (w.detach(), _version(w), filters)
    return torch.ops.mkldnn._convolution_pointwise(x, held[2], conv.bias, list(conv.padding), list(conv.stride),
                                                   list(conv.dilation), conv.groups, "none", [], "")


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm (float32 accumulation in any dtype, as torch's kernel has it). A channels_last
    input of small maps (RoI features) is normalised in NCHW, and left so for the next convolution:
    there torch's channels_last kernel walks each sample's groups a few channels at a time, 2-4x
    slower than the copy and its NCHW kernel together."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4 and not x.is_contiguous() and x[0].numel() <= SMALL_MAP:
            x = x.contiguous()
        return super().forward(x)
