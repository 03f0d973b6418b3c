"""The numpy arrays of a pickle (Detectron, detectron2) as tensors."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["as_tensors"]


def as_tensors(items) -> dict:
    """(name, value) pairs as name -> tensor sharing each numpy array's memory. A value that is not
    an array, or an array torch cannot share (str, datetime, structured or long double dtype, a
    foreign byte order), stays as it is: the engine names it where it is needed."""
    out = {}
    for key, value in items:
        if isinstance(value, np.ndarray):
            try:
                value = torch.from_numpy(value)
            except (TypeError, ValueError):
                pass
        out[str(key)] = value
    return out
