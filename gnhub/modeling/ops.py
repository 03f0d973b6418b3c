"""torchvision's compiled NMS, RoIAlign and deformable convolution (torch.ops.torchvision) for
inference without importing the torchvision package, whose import pulls in all of
torchvision.models and torch._dynamo (about 1.5 s on top of torch's own): the same kernels, so
the same bits. Where gradients or autocast are on, the package is imported, since torchvision
registers their rules in Python."""
from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import sys
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from ..errors import GnhubError

__all__ = ["deform_conv2d", "nms", "roi_align"]


@functools.cache
def _load_kernels() -> None:
    """Loads torchvision's extension library (`_C_stable`, `_C` before 0.29) on its own, or
    imports the package where the library does not load by itself."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        raise GnhubError("gnhub needs torchvision (its NMS and RoIAlign kernels): pip install torchvision")
    finder = importlib.machinery.FileFinder(
        spec.submodule_search_locations[0],
        (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES))
    for name in ("_C_stable", "_C"):
        extension = finder.find_spec(name)
        if extension is not None:
            try:
                torch.ops.load_library(extension.origin)
                return
            except OSError:  # e.g. it needs the package's DLL directories (Windows)
                break
    # the fallback: torchvision's Python package registers its ops
    import torchvision  # noqa: F401


def _ops(x: Tensor):
    if "torchvision" not in sys.modules:
        if torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type):
            import torchvision  # noqa: F401 - registers the kernels' autograd and autocast rules
        else:
            _load_kernels()
    return torch.ops.torchvision


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices of the boxes kept by greedy NMS, by decreasing score (torchvision.ops.nms)."""
    return _ops(boxes).nms(boxes, scores, iou_threshold)


def deform_conv2d(x: Tensor, offset: Tensor, weight: Tensor, stride: tuple[int, int],
                  padding: tuple[int, int]) -> Tensor:
    """Deformable convolution v1 (torchvision.ops.deform_conv2d without mask or bias): groups as
    the weight says, one offset group per 2 * kh * kw offset channels."""
    kh, kw = weight.shape[-2:]
    groups, offset_groups = x.shape[1] // weight.shape[1], offset.shape[1] // (2 * kh * kw)
    if torch.jit.is_tracing():
        with torch.no_grad():  # with grad on (GNMaskRCNN traces outside inference mode) the tracer loses its output
            return _TracedDeformConv.apply(x, offset, weight, (kh, kw, *stride, *padding, groups, offset_groups))
    return _ops(x).deform_conv2d(x, weight, offset, x.new_zeros(x.shape[0], 1), x.new_zeros(weight.shape[0]),
                                 *stride, *padding, 1, 1, groups, offset_groups, False)


class _TracedDeformConv(torch.autograd.Function):
    """deform_conv2d in a traced graph, exported as ONNX DeformConv (opset 19): the tracer cannot
    record torchvision's kernel (0.29's op leaves a broken graph), so the kernel runs untraced and
    the exporter writes the Function's `symbolic`. `ints`: kernel (h, w), stride, padding, groups,
    offset groups."""

    @staticmethod
    def forward(ctx, x, offset, weight, ints):
        state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)
        try:
            return deform_conv2d(x, offset, weight, ints[2:4], ints[4:6])
        finally:
            torch._C._set_tracing_state(state)

    @staticmethod
    def symbolic(g, x, offset, weight, ints):
        kh, kw, sh, sw, ph, pw, groups, offset_groups = ints
        return g.op("DeformConv", x, weight, offset, kernel_shape_i=[kh, kw], strides_i=[sh, sw],
                    pads_i=[ph, pw, ph, pw], dilations_i=[1, 1], group_i=groups, offset_group_i=offset_groups)


_MIN_ROIS_PER_THREAD = 16  # fewer RoIs than this per thread: one call


def roi_align(features: Tensor, rois: Tensor, output_size: int, spatial_scale: float, sampling_ratio: int,
              aligned: bool) -> Tensor:
    """(K, C, output_size, output_size) RoIAlign of (K, 5) RoIs (batch index, x1, y1, x2, y2):
    torchvision.ops.roi_align with a tensor of RoIs.

    torchvision's CPU kernel runs on one thread, so in eager inference on a CPU the RoIs are split
    among torch's intra-op threads (the kernel releases the GIL); each RoI is computed alone, so
    the result is bit-identical."""
    op = _ops(features).roi_align  # here: grad mode is per thread, and the pool's threads start with it on

    def align(r: Tensor) -> Tensor:
        return op(features, r, spatial_scale, output_size, output_size, sampling_ratio, aligned)

    chunks = min(torch.get_num_threads(), len(rois) // _MIN_ROIS_PER_THREAD)
    if chunks < 2 or features.device.type != "cpu" or torch.is_grad_enabled() or torch.jit.is_tracing():
        return align(rois)
    with ThreadPoolExecutor(chunks) as pool:  # threads made per call: safe across fork, ~0.1 ms
        return torch.cat(list(pool.map(align, rois.tensor_split(chunks))))

