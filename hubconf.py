"""torch.hub entry points: torch.hub.load("<this repo>", "mask_rcnn_r50_fpn_gn-all_2x_coco")."""
dependencies = ["torch", "torchvision", "safetensors", "huggingface_hub", "numpy", "cv2", "PIL", "jinja2"]

from gnhub import load as _load  # noqa: E402
from gnhub.zoo import MODELS as _MODELS  # noqa: E402


def _entry(name):
    def entry(**kwargs):
        return _load(name, **kwargs)

    entry.__name__ = name
    e = _MODELS[name]
    entry.__doc__ = f"GN Mask R-CNN {name}, pretrained (COCO box AP {e.box_ap}, mask AP {e.mask_ap})."
    return entry


globals().update({name.replace("-", "_"): _entry(name) for name in _MODELS})
