import hashlib

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from gnhub.weights import save_safetensors


def test_safetensors_writer_matches_the_official_reader(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": torch.randn(3, 5, 7, generator=g),
        "half": torch.randn(9, generator=g).half(),
        "bf": torch.randn(2, 3, generator=g).bfloat16(),
        "ints": torch.arange(5),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "flags": torch.tensor([True, False, True]),
        "strided": torch.randn(4, 6, generator=g)[:, ::2],
    }
    path = tmp_path / "x.safetensors"
    digest = save_safetensors(tensors, path, {"format": "pt"})
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    back = load_file(path)
    assert list(back) == sorted(tensors) or set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    with safe_open(path, "pt") as f:
        assert f.metadata() == {"format": "pt"}


def test_unsupported_dtype_is_an_error(tmp_path):
    with pytest.raises(KeyError):
        save_safetensors({"c": torch.zeros(2, dtype=torch.complex64)}, tmp_path / "x", {})
