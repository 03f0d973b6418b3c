"""Reading checkpoints safely and writing model directories atomically."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import struct
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .config import ModelConfig
from .errors import GnhubError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

try:
    from numpy._core import multiarray
except ImportError:  # numpy < 1.26
    from numpy.core import multiarray

# Beyond tensors and plain containers, the only objects a real checkpoint's `meta` holds are
# numpy scalars and arrays (mmcv/mmengine record seeds and versions with them). Pickles name
# numpy's internals by the module path of the numpy that wrote them: admit both spellings.
_NUMPY_GLOBALS = [
    np.dtype,
    np.ndarray,
    *{type(np.dtype(t)) for t in "?bBhHiIlLqQefdgFDG"},
    *[(fn, f"{mod}.multiarray.{fn.__name__}") for fn in (multiarray._reconstruct, multiarray.scalar)
      for mod in ("numpy.core", "numpy._core")],
]


def sha256_file(path: str | Path) -> str:
    """In 16 MiB chunks: hashing releases the GIL, so few chunks let it run beside other work."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def check_input_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise GnhubError(f"{path}: no such file")
    if path.is_dir():
        raise GnhubError(f"{path}: is a directory, expected a checkpoint file")
    if path.stat().st_size == 0:
        raise GnhubError(f"{path}: the file is empty; download it again")
    return path


def read_torch_checkpoint(path: str | Path) -> object:
    """torch.load with weights_only=True (no code runs); numpy scalars/arrays are admitted.

    Zip checkpoints are memory-mapped: tensors are read from the file as they are used.
    """
    path = check_input_file(path)
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines()]
        refused = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported global" in ln), None)
        if refused is None:
            raise GnhubError(f"{path}: not a readable PyTorch checkpoint ({lines[0] if lines else e})") from None
        raise GnhubError(
            f"{path}: refused to unpickle: {refused}. gnhub only reads tensors, numbers, strings "
            "and containers, so nothing in the file can run code"
        ) from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as e:
        raise GnhubError(f"{path}: not a readable PyTorch checkpoint ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@contextmanager
def atomic_dir(dest: str | Path, force: bool = False):
    """Yields a fresh temporary directory beside `dest` that becomes `dest` on success.

    On any error (or interrupt) the temporary directory is removed and an existing `dest` is
    left as it was. An existing `dest` is replaced only with `force`.
    """
    dest = Path(dest)
    if dest.exists() and not force:
        raise GnhubError(f"{dest}: already exists; choose another output or pass --force")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        yield tmp
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            os.replace(dest, old / "x")
            os.replace(tmp, dest)
            shutil.rmtree(old)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


_SAFETENSORS_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> str:
    """Writes a safetensors file and returns its sha256, hashing each tensor while it is written."""
    if sys.byteorder != "little":
        raise GnhubError("writing safetensors needs a little-endian machine")
    header: dict = {"__metadata__": metadata}
    items, offset = [], 0
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        size = t.numel() * t.element_size()
        dtype = _SAFETENSORS_DTYPES[t.dtype]
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        items.append(t.reshape(-1).view(torch.uint8).numpy() if size else b"")
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    prefix = struct.pack("<Q", len(text)) + text
    digest = hashlib.sha256(prefix)
    with open(path, "wb") as f, ThreadPoolExecutor(1) as pool:
        f.write(prefix)
        for buf in items:
            hashed = pool.submit(digest.update, buf)  # hashlib and write both release the GIL
            f.write(buf)
            hashed.result()
    return digest.hexdigest()


def write_model_files(directory: Path, config: ModelConfig, state_dict: dict[str, torch.Tensor]) -> None:
    """model.safetensors, then config.json carrying its sha256."""
    config.weights_sha256 = save_safetensors(state_dict, directory / WEIGHTS_FILE, {"format": "pt"})
    config.save(directory / CONFIG_FILE)


def write_model_dir(
    dest: str | Path, config: ModelConfig, state_dict: dict[str, torch.Tensor], force: bool = False
) -> Path:
    """Writes config.json + model.safetensors into `dest`, atomically."""
    with atomic_dir(dest, force) as tmp:
        write_model_files(tmp, config, state_dict)
    return Path(dest)


def read_model_dir(path: str | Path, check_hash: bool = True) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """config.json + model.safetensors of a gnhub model directory, the weights' sha256 checked."""
    path = Path(path)
    if not path.is_dir():
        raise GnhubError(f"{path}: not a gnhub model directory (expected {CONFIG_FILE} and {WEIGHTS_FILE})")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise GnhubError(f"{path}: {name} is missing; convert the model again")
    config = ModelConfig.load(path / CONFIG_FILE)
    weights = path / WEIGHTS_FILE
    if check_hash and config.weights_sha256 and sha256_file(weights) != config.weights_sha256:
        raise GnhubError(
            f"{weights}: sha256 does not match config.json's weights_sha256; the file is corrupt "
            "or was changed: download or convert it again"
        )
    try:
        state_dict = load_file(weights)
    except (SafetensorError, OSError) as e:
        raise GnhubError(f"{weights}: not a readable safetensors file ({_first_line(e)})") from None
    return config, state_dict
