"""What every gnhub model shares: its config, device and dtype, `inspect`, its directory layout,
and `with_weights`, which builds the model a config's task names."""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..errors import GnhubError
from ..weights import read_model_dir, write_model_dir
from .bfloat16 import memory_format
from .transform import load_image

__all__ = ["DTYPES", "GNModel", "MODELS", "with_weights"]

MODELS: dict[str, type[GNModel]] = {}  # config.task -> model class
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class GNModel(nn.Module):
    """A GN network with its preprocessing and convention; subclasses name the `tasks` they build
    and implement `forward(batch, record=None)` (an ImageBatch to a result per image)."""

    tasks: tuple[str, ...]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        MODELS.update(dict.fromkeys(cls.tasks, cls))

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def device(self) -> torch.device:
        return self.backbone.conv1.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """What the model computes in: its norms' dtype (weight-standardised filters stay float32)."""
        return self.backbone.gn1.weight.dtype

    def predict(self, images, batch_size: int = 1):
        """Results for one image (a dict) or a list of images (a list of dicts); see the class.

        An image is a file path, a PIL image or an HxWx3 uint8 RGB array. Images are batched
        only with images of the same padded size, so a result never depends on what else is in
        the batch (GroupNorm statistics would change with padding).
        """
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        if not items:
            raise GnhubError("predict got an empty list of images")
        if batch_size < 1:
            raise GnhubError(f"batch size must be at least 1, got {batch_size}")
        self.prepare()
        rgbs = [load_image(im) for im in items]
        resized = [self.preprocessor.resize(im) for im in rgbs]
        groups = defaultdict(list)
        div = self.config.preprocess.size_divisor
        for i, (img, _) in enumerate(resized):
            groups[(-(-img.shape[0] // div), -(-img.shape[1] // div))].append(i)
        results: list[dict | None] = [None] * len(items)
        for idx in groups.values():
            for start in range(0, len(idx), batch_size):
                chunk = idx[start : start + batch_size]
                batch = self.preprocessor.batch(
                    [resized[i][0] for i in chunk], [rgbs[i].shape[:2] for i in chunk],
                    [resized[i][1] for i in chunk], self.device, self.dtype,
                )
                for i, res in zip(chunk, self(batch)):
                    results[i] = {k: v.cpu() for k, v in res.items()}
        return results[0] if single else results

    def inspect(self, image) -> dict[str, Tensor]:
        """Every stage of one image, by name (see docs/layout.md, "Stage names")."""
        record: dict[str, Tensor] = {}
        self.prepare()
        self(self.preprocessor([load_image(image)], self.device, self.dtype), record=record)
        return record

    def prepare(self) -> None:
        """Before a forward: the convolution weights in the memory format of this dtype and device
        (bfloat16.memory_format), converted once."""
        fmt = memory_format(self.dtype, self.device)
        if not self.backbone.conv1.weight.is_contiguous(memory_format=fmt):
            with torch.inference_mode(False), torch.no_grad():  # still parameters for training afterwards
                self.to(memory_format=fmt)

    def fingerprint(self) -> str:
        """sha256 of what decides the outputs: the config (without name and provenance) and every
        tensor as it is now (name, dtype, shape, values)."""
        config = {k: v for k, v in self.config.to_dict().items() if k not in ("name", "provenance", "weights_sha256")}
        h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
        for name, t in self.state_dict().items():
            t = t.detach().cpu().contiguous()
            h.update(f"{name} {t.dtype} {tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        return h.hexdigest()

    def save_pretrained(self, path: str | Path, force: bool = False) -> Path:
        return write_model_dir(path, self.config, self.state_dict(), force=force)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> GNModel:
        """The model in a gnhub directory: the class its config.json's task names."""
        config, state_dict = read_model_dir(path)
        model = with_weights(config, state_dict, str(path))
        if not isinstance(model, cls):
            raise GnhubError(f"{path}: holds a {config.task} model, not a {cls.__name__}")
        return model


def with_weights(config: ModelConfig, state_dict: dict[str, Tensor], where: str) -> GNModel:
    """The model for `config.task` whose parameters are the given tensors (no copy, no random
    initialisation). A missing, unexpected or misshapen tensor raises one error naming them."""
    with torch.device("meta"):
        model = MODELS[config.task](config)
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or wrong:
        parts = [
            f"{label} {names[:5]}{' ...' if len(names) > 5 else ''}"
            for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if names
        ]
        raise GnhubError(f"{where}: weights do not fit the model in config.json: {'; '.join(parts)}")
    model.load_state_dict(state_dict, assign=True)
    return model.eval()
