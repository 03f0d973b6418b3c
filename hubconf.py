"""torch.hub entry points, one per zoo model, named with underscores for dashes:
torch.hub.load("<path or GitHub repo of gnhub>", "mask_rcnn_r50_fpn_gn_all_2x_coco")."""
dependencies = ["torch", "torchvision", "safetensors", "huggingface_hub", "numpy", "cv2", "PIL", "jinja2", "yaml"]

from gnhub import load as _load  # noqa: E402
from gnhub.zoo import models as _models  # noqa: E402


def _entry(name):
    def entry(**kwargs):
        return _load(name, **kwargs)

    e = _models()[name]
    entry.__name__ = name.replace("-", "_")
    entry.__doc__ = f"{e.architecture}: the zoo model {name}, pretrained ({e.results_text}, {e.source_format})."
    return entry


globals().update({f.__name__: f for f in map(_entry, _models())})
