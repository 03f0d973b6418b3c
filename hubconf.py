"""torch.hub entry points: torch.hub.load("<this repo>", "mask_rcnn_r50_fpn_gn-all_2x_coco")."""
dependencies = ["torch", "torchvision", "safetensors", "huggingface_hub", "numpy", "cv2", "PIL", "jinja2", "yaml"]

from gnhub import load as _load  # noqa: E402
from gnhub.zoo import models as _models  # noqa: E402


def _entry(name):
    def entry(**kwargs):
        return _load(name, **kwargs)

    entry.__name__ = name
    e = _models()[name]
    what = "GN ResNet ImageNet classifier" if e.task == "image-classification" else "GN Mask R-CNN"
    entry.__doc__ = f"{what} {name}, pretrained ({e.results_text}, {e.source_format})."
    return entry


globals().update({name.replace("-", "_"): _entry(name) for name in _models()})
