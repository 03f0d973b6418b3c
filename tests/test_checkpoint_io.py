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


# -- gnhub's .pth reader gives what torch.load gives ------------------------------------------------

def _checkpoint():
    """What real checkpoints hold: a module's state dict (an OrderedDict with `_metadata`), tensors
    of each dtype, views sharing storages, a parameter, mmcv/mmengine-style meta with numpy values."""
    import collections

    import numpy as np

    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(2, 8), torch.nn.Linear(4, 2))
    state_dict = model.state_dict()
    base = torch.randn(4, 6, generator=g)
    shared = torch.arange(5)
    tensors = {
        "float32": torch.randn(3, 5, generator=g), "float16": torch.randn(7, generator=g).half(),
        "bfloat16": torch.randn(2, 3, generator=g).bfloat16(), "int64": torch.arange(-3, 9).reshape(3, 4),
        "float64": torch.randn(2, generator=g).double(), "bool": torch.tensor([True, False]), "uint8": torch.arange(4,
        dtype=torch.uint8), "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3), "num_batches_tracked":
        torch.tensor(7),
        "views": [base, base[1], base[:, ::2], base.t(), base.view(6, 4)[2:], base[2:, 3:]],
        "same object twice": (shared, shared),
        "channels_last": torch.randn(2, 3, 4, 5, generator=g).contiguous(memory_format=torch.channels_last),
    }
    meta = {"mmdet_version": "2.25.0", "mmcv_version": "1.6.0", "config": "model = dict(type='MaskRCNN')",
            "CLASSES": ("person", "bicycle"), "epoch": 24, "iter": 175872, "time": "Sat Feb  8 01:02:03 2020",
            "env_info": "sys.platform: linux\nPython: 3.7", "seed": np.int64(5),
            "hook_msgs": {"best_score": np.float64(0.41), "last_ckpt": "work/epoch_24.pth",
                          "curve": np.arange(4, dtype=np.float32)},
            "dataset_meta": {"classes": ("a", "b"), "palette": [(220, 20, 60), (119, 11, 32)]},
            "nested": [{"a": (1, 2.5, None, True, b"raw", 1 + 2j)}], "a set": {3, 1, 2},
            "size": torch.Size([1, 2]), "dtype": torch.float16, "device": torch.device("cpu"),
            "counts": collections.Counter("aab"), "bytes": bytearray(b"xy")}
    return {"meta": meta, "state_dict": state_dict, "tensors": tensors,
            "parameter": torch.nn.Parameter(torch.randn(3, generator=g))}


def _tensors_of(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors_of(v, f"{prefix}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors_of(v, f"{prefix}.{i}")


def _assert_same(got, want, where="<root>"):
    import numpy as np

    if isinstance(want, np.ndarray):  # gnhub builds arrays as PickledArray, an ndarray subclass
        assert isinstance(got, np.ndarray) and got.dtype == want.dtype and np.array_equal(got, want), where
        return
    assert type(got) is type(want), (where, type(got), type(want))
    if isinstance(want, torch.Tensor):
        assert (got.dtype, got.shape, got.stride(), got.storage_offset(), got.requires_grad) == \
            (want.dtype, want.shape, want.stride(), want.storage_offset(), want.requires_grad), where
        assert torch.equal(got, want), where
    elif isinstance(want, dict):
        assert list(got) == list(want), where
        assert getattr(got, "_metadata", None) == getattr(want, "_metadata", None), where
        for k in want:
            _assert_same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want)):
            _assert_same(a, b, f"{where}.{i}")
    else:
        assert got == want, where


@pytest.mark.parametrize("form", ["zip", "zip protocol 4", "zip protocol 5", "legacy"])
def test_torch_save_files_read_back_as_torch_load_reads_them(tmp_path, form):
    from gnhub.checkpoint import read_torch_checkpoint

    path = tmp_path / "model.pth"
    protocol = int(form[-1]) if "protocol" in form else 2
    torch.save(_checkpoint(), path, pickle_protocol=protocol, _use_new_zipfile_serialization=form != "legacy")
    got, want = read_torch_checkpoint(path), torch.load(path, weights_only=False)  # the test's own file
    _assert_same(got, want)
    # tensors that share a storage in torch.load's result share one in gnhub's, and only those
    groups = [{name: t.untyped_storage().data_ptr() for name, t in _tensors_of(obj)} for obj in (got, want)]
    assert len(groups[0]) == len(groups[1]) > 20
    pairs = [{(a, b) for a in g for b in g if g[a] == g[b]} for g in groups]
    assert pairs[0] == pairs[1] and ((".tensors.views.0", ".tensors.views.3") in pairs[0])
    # and the data is the file's: a write into a tensor read from a zip changes neither the file nor others
    if form == "zip":
        before = path.read_bytes()
        got["tensors"]["float32"].add_(1)
        assert path.read_bytes() == before
        assert torch.equal(read_torch_checkpoint(path)["tensors"]["float32"], want["tensors"]["float32"])
