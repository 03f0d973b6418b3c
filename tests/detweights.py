"""Deterministic weights and images of the real-run cases (tests/data/real_runs), and their checkpoints.

The team's generator (../shared/fixtures/detweights.py, which made the weights the frameworks ran)
ported unchanged: a tensor depends only on (seed, name, shape) through numpy's default_rng, so a
checkpoint is rebuilt anywhere from a key list. `build_checkpoint` writes a case's checkpoint as
its framework publishes it (the ports of make_mmdet_checkpoint.py and make_d2_checkpoint.py) after
checking that the weights hash to the run's own (`weights_sha256` of the case's reference).

A key list has one tensor a line: `name<TAB>d0,d1,...` (an empty shape for a scalar).
"""
from __future__ import annotations

import hashlib
import json
import math
import pickle
import re
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np

# Names of the final classification layers: their weights are scaled up so that a few classes
# clear the usual 0.05 score threshold and a randomly initialised detector still detects things.
_CLASSIFIER_HINTS = ("fc_cls", "cls_score")


def read_key_list(path) -> list[tuple[str, tuple[int, ...]]]:
    entries = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            name, _, dims = line.partition("\t")
            entries.append((name, tuple(int(d) for d in dims.split(",") if d)))
    return entries


def _kind(name: str, shape: tuple[int, ...]) -> str:
    """conv | linear | norm_weight | norm_bias | bias | buffer"""
    last = name.rsplit(".", 1)[-1] if "." in name else name.rsplit("_", 1)[-1]
    if name.endswith(("num_batches_tracked", "running_mean", "running_var")):
        return "buffer"
    is_norm = any(t in name for t in (".gn", "_gn_", ".norm", ".bn", "_bn_")) or name.startswith(("gn", "bn"))
    if len(shape) == 4:
        return "conv"
    if len(shape) == 2:
        return "linear"
    if last in ("weight", "s"):  # a 1-D weight is always a norm's scale
        return "norm_weight"
    if is_norm and last in ("bias", "b"):
        return "norm_bias"
    return "bias"


def _tensor(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
    kind = _kind(name, shape)
    if kind == "buffer":
        return (np.ones if name.endswith("running_var") else np.zeros)(shape, np.float32)
    if kind == "conv":  # (out, in, kh, kw); a transposed conv stores (in, out, kh, kw): both fine
        std = math.sqrt(2.0 / (shape[1] * shape[2] * shape[3]))
    elif kind == "linear":
        std = math.sqrt(1.0 / shape[1]) * (4.0 if any(h in name for h in _CLASSIFIER_HINTS) else 1.0)
    elif kind == "norm_weight":
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    elif kind == "norm_bias":
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)
    else:
        return (0.05 * rng.standard_normal(shape)).astype(np.float32)
    return (std * rng.standard_normal(shape)).astype(np.float32)


def make_arrays(entries, seed: int = 0) -> dict[str, np.ndarray]:
    return {name: _tensor(name, tuple(shape), seed) for name, shape in entries}


def paddle_arrays(entries, seed: int, linear) -> dict[str, np.ndarray]:
    """The weights of a PaddleDetection run (paddle's names and shapes): each tensor generated
    under its name with paddle's BatchNorm statistics named as torch names them (`running_mean`:
    zeros, `running_var`: ones) and the classifier named `cls_score` (scaled up, so that random
    weights still detect), the `linear` weights in torch's [out, in] layout, then transposed to
    paddle's [in, out] (scripts/record_paddle_run.py ran PaddleDetection with these)."""
    out = {}
    for name, shape in entries:
        gen = name.replace("norm._mean", "norm.running_mean").replace("norm._variance", "norm.running_var")
        gen = gen.replace("bbox_score", "cls_score")
        if name in linear:
            out[name] = _tensor(gen, tuple(shape)[::-1], seed).T.copy()
        else:
            out[name] = _tensor(gen, tuple(shape), seed)
    return out


def frozen_bn_arrays(entries, seed: int = 0) -> dict[str, np.ndarray]:
    """make_arrays for a FrozenBN backbone (gnhub's addition, not in ../shared): running means
    0.1 N(0, 1) and variances U(0.5, 1.5) drawn after the other tensors, the stem's norm scaled by
    0.01 (caffe-style input is 0-255) and each residual branch's last norm (conv3's) by 0.1:
    without batch statistics that match the activations, 16 to 50 residual sums would double the
    features' spread block after block."""
    arrays = make_arrays(entries, seed)
    rng = np.random.default_rng(seed)
    for k, a in arrays.items():
        if k.endswith("running_mean"):
            arrays[k] = (0.1 * rng.standard_normal(a.shape)).astype(np.float32)
        elif k.endswith("running_var"):
            arrays[k] = rng.uniform(0.5, 1.5, a.shape).astype(np.float32)
        elif ".norm." in k and k.endswith(("weight", "bias")) and (".conv3." in k or ".stem." in k):
            arrays[k] = a * np.float32(0.01 if ".stem." in k else 0.1)
    return arrays


def make_state_dict(entries, seed: int = 0):
    import torch

    return {name: torch.from_numpy(a) for name, a in make_arrays(entries, seed).items()}


def make_image(height: int = 427, width: int = 640, seed: int = 0) -> np.ndarray:
    """A photo-like RGB test image: smooth background, texture, and filled shapes."""
    rng = np.random.default_rng([seed, 7])
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, size=3).astype(np.float32)
    slope = rng.uniform(-0.15, 0.15, size=(2, 3)).astype(np.float32)
    img = base + yy[..., None] * slope[0] + xx[..., None] * slope[1]
    img += 8.0 * np.sin(xx / rng.uniform(5, 25))[..., None]
    for _ in range(12):
        color = rng.uniform(0, 255, size=3)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(0.04, 0.25) * height, rng.uniform(0.04, 0.25) * width
        shape = rng.integers(0, 3)
        if shape == 0:  # rectangle
            m = (np.abs(yy - cy) < ry) & (np.abs(xx - cx) < rx)
        elif shape == 1:  # ellipse
            m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1.0
        else:  # triangle
            m = (yy > cy - ry) & (np.abs(xx - cx) < (yy - (cy - ry)) * rx / (2 * ry)) & (yy < cy + ry)
        img[m] = 0.3 * img[m] + 0.7 * color
    img += rng.normal(0, 6.0, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def weights_digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over every tensor's name, shape and float32 bytes, in order."""
    h = hashlib.sha256()
    for name, a in arrays.items():
        h.update(f"{name}\t{','.join(map(str, a.shape))}\n".encode())
        h.update(np.ascontiguousarray(a, np.float32).tobytes())
    return h.hexdigest()


def case_weights(case_dir) -> tuple[dict[str, np.ndarray], int]:
    """A case's tensors (numpy, by the framework's names) and their seed: detectron2 cases name
    it in meta.json, mmdetection ones in the checkpoint's name (`<config>_seed<N>-<hash>.pth`)."""
    case_dir = Path(case_dir)
    meta = json.loads((case_dir / "meta.json").read_text(encoding="utf-8"))
    if "detectron2_version" in meta:
        seed = meta["seed"]
    else:
        seed = int(re.fullmatch(r".+_seed(\d+)-[0-9a-f]{8}\.pth", (case_dir / "source.txt").read_text().strip())[1])
    return make_arrays(read_key_list(case_dir / "keys.txt"), seed), seed


def build_checkpoint(case_dir, out_dir, weights_sha256: str | None = None) -> Path:
    """Writes a case's checkpoint into `out_dir` as its framework publishes it and returns its path:
    mmdetection's {meta, state_dict} as `<config>_seed<N>-<sha256[:8]>.pth`, or detectron2's zoo
    pickle {model: numpy arrays, __author__} under its zoo name (source.txt). With
    `weights_sha256`, the weights must hash to it (they are the run's own)."""
    import torch

    case_dir, out_dir = Path(case_dir), Path(out_dir)
    arrays, seed = case_weights(case_dir)
    if weights_sha256 is not None:
        assert weights_digest(arrays) == weights_sha256, f"{case_dir.name}: the rebuilt weights are not the run's"
    meta = json.loads((case_dir / "meta.json").read_text(encoding="utf-8"))
    source = (case_dir / "source.txt").read_text().strip()
    out_dir.mkdir(parents=True, exist_ok=True)
    if "detectron2_version" in meta:
        path = out_dir / source
        with open(path, "wb") as f:
            pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo"}, f, protocol=meta["pickle_protocol"])
        return path
    meta["dataset_meta"]["classes"] = tuple(meta["dataset_meta"]["classes"])
    config = re.fullmatch(r"(.+)_seed\d+-[0-9a-f]{8}\.pth", source)[1]
    tmp = out_dir / f".{config}_seed{seed}.tmp"
    state_dict = OrderedDict((k, torch.from_numpy(a)) for k, a in arrays.items())
    torch.save({"meta": meta, "state_dict": state_dict}, tmp)
    digest = hashlib.sha256()
    with open(tmp, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    digest = digest.hexdigest()
    return tmp.rename(out_dir / f"{config}_seed{seed}-{digest[:8]}.pth")
