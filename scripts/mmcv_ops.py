"""Builds mmcv 2.1.0's own `nms` and `roi_align` CPU ops (all an R-CNN uses) into `mmcv._ext`, for
`--against mmdet` and scripts/record_faster_rcnn_run.py, in minutes instead of mmcv's full build.

    cd mmcv-2.1.0  # the sdist, unpacked
    MMCV_WITH_OPS=0 pip install --no-build-isolation --no-deps .
    python /path/to/gnhub/scripts/mmcv_ops.py build_ext --inplace
    cp mmcv/_ext*.so "$(python -c 'import mmcv, os; print(os.path.dirname(mmcv.__file__))')"

then make mmcv/utils/ext_loader.py's load_ext skip functions `_ext` lacks (its `assert hasattr`):
only nms and roi_align are ever called.
"""
from pathlib import Path

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

CSRC = Path("mmcv/ops/csrc")
BINDINGS = CSRC / "pytorch" / "pybind_gnhub.cpp"
BINDINGS.write_text("""// mmcv 2.1.0's nms and roi_align, bound with its own argument names (pybind.cpp, abridged).
#include <torch/extension.h>
using at::Tensor;
Tensor nms(Tensor boxes, Tensor scores, float iou_threshold, int offset);
Tensor softnms(Tensor boxes, Tensor scores, Tensor dets, float iou_threshold, float sigma, float min_score,
               int method, int offset);
std::vector<std::vector<int>> nms_match(Tensor dets, float iou_threshold);
void roi_align_forward(Tensor input, Tensor rois, Tensor output, Tensor argmax_y, Tensor argmax_x,
                       int aligned_height, int aligned_width, float spatial_scale, int sampling_ratio,
                       int pool_mode, bool aligned);
void roi_align_backward(Tensor grad_output, Tensor rois, Tensor argmax_y, Tensor argmax_x, Tensor grad_input,
                        int aligned_height, int aligned_width, float spatial_scale, int sampling_ratio,
                        int pool_mode, bool aligned);
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("nms", &nms, py::arg("boxes"), py::arg("scores"), py::arg("iou_threshold"), py::arg("offset"));
  m.def("softnms", &softnms, py::arg("boxes"), py::arg("scores"), py::arg("dets"), py::arg("iou_threshold"),
        py::arg("sigma"), py::arg("min_score"), py::arg("method"), py::arg("offset"));
  m.def("nms_match", &nms_match, py::arg("dets"), py::arg("iou_threshold"));
  m.def("roi_align_forward", &roi_align_forward, py::arg("input"), py::arg("rois"), py::arg("output"),
        py::arg("argmax_y"), py::arg("argmax_x"), py::arg("aligned_height"), py::arg("aligned_width"),
        py::arg("spatial_scale"), py::arg("sampling_ratio"), py::arg("pool_mode"), py::arg("aligned"));
  m.def("roi_align_backward", &roi_align_backward, py::arg("grad_output"), py::arg("rois"), py::arg("argmax_y"),
        py::arg("argmax_x"), py::arg("grad_input"), py::arg("aligned_height"), py::arg("aligned_width"),
        py::arg("spatial_scale"), py::arg("sampling_ratio"), py::arg("pool_mode"), py::arg("aligned"));
}
""")
SOURCES = [BINDINGS] + [CSRC / "pytorch" / d / f for d in ("", "cpu") for f in ("nms.cpp", "roi_align.cpp")]
setup(name="mmcv-gnhub-ops", cmdclass={"build_ext": BuildExtension},
      ext_modules=[CppExtension("mmcv._ext", [str(s) for s in SOURCES],
                                include_dirs=[str((CSRC / d).resolve()) for d in ("common", "common/pytorch")],
                                extra_compile_args={"cxx": ["-std=c++20", "-O2"]})])
