"""load(): a model directory, `hf-hub:owner/repo[@rev]` or a zoo name -> a ready model in eval mode."""
from __future__ import annotations

from pathlib import Path

import torch

from .errors import GnhubError
from .modeling import DTYPES, GNModel
from .precision import auto_dtype
from .resolve import resolve
from .settings import HubSettings

__all__ = ["check_device", "load"]


def load(
    name_or_path: str | Path,
    device: str = "cpu",
    *,
    endpoint: str | None = None,
    org: str | None = None,
    hub_dir: str | None = None,
    token: str | None = None,
    source_mirror: str | None = None,
    quiet: bool | None = None,
    classes: list[str] | None = None,
    dtype: str | None = None,
    settings: HubSettings | None = None,
) -> GNModel:
    """The model (a GNMaskRCNN, or a GNResNetClassifier for a bare backbone), its weights'
    sha256 checked against config.json.

    A zoo name (see `gnhub.list_models()`) comes from gnhub's cache (GNHUB_CACHE), else from
    ORG/NAME on the hub: the Hugging Face Hub through huggingface_hub's cache (HF_HUB_OFFLINE
    works once cached), or a directory hub (`hub_dir` / GNHUB_HUB_DIR); `endpoint` /
    GNHUB_ENDPOINT and `org` / GNHUB_ORG select a mirror. Where the hub has no such repository,
    the zoo's own upstream file is downloaded (`source_mirror` / GNHUB_SOURCE_MIRROR replaces
    its host), hash-checked, converted, verified and cached. `quiet` turns off progress output;
    `settings` (gnhub.settings.HubSettings) holds all of these at once, the keywords override it.
    `classes` gives the model new class-dependent layers for fine-tuning (`with_classes`);
    `dtype` (float32, float16 or bfloat16) casts the weights; by default they stay as stored;
    "auto" is bfloat16 where the device has bfloat16 matrix units (gnhub.precision), else float32.
    """
    target = check_device(device)
    if dtype == "auto":
        dtype = auto_dtype(str(target))
    if dtype is not None and dtype not in DTYPES:
        raise GnhubError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)} or auto")
    hub = (settings or HubSettings()).merged(endpoint=endpoint, org=org, hub_dir=hub_dir, token=token,
                                             source_mirror=source_mirror, quiet=quiet)
    model = GNModel.from_pretrained(resolve(name_or_path, hub))
    if classes is not None:
        if not hasattr(model, "with_classes"):
            raise GnhubError(f"{name_or_path}: an ImageNet classifier; new classes need a Mask R-CNN")
        model = model.with_classes(classes)
    return model.to(target, DTYPES[dtype] if dtype else None).eval()


def check_device(device) -> torch.device:
    """`device` as a torch.device that exists on this machine, else one clear error."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise GnhubError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise GnhubError(f"device {device!r}: no CUDA GPU is available here; use `device=cpu`")
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        raise GnhubError(f"device {device!r}: only {torch.cuda.device_count()} CUDA GPUs are here")
    if d.type == "mps" and not torch.backends.mps.is_available():
        raise GnhubError(f"device {device!r}: MPS is not available here; use `device=cpu`")
    if d.type not in ("cpu", "cuda", "mps"):
        raise GnhubError(f"device {device!r}: gnhub runs on cpu, cuda or mps")
    return d
