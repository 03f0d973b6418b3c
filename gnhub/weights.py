"""The model directory's tensor files: model.safetensors (written while it is hashed, read with
its sha256 checked) and golden.safetensors (the golden outputs a verification leaves beside a
model or an export). The torch half of gnhub/layout.py, which names the files and reads and
writes the rest; between them they are the only readers and writers of a model directory."""
from __future__ import annotations

import contextlib
import hashlib
import json
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .errors import GnhubError, first_line
from .layout import GOLDEN_FILE, WEIGHTS_FILE, check_model_dir, new_model_dir, write_config, write_report
from .report import Report

__all__ = ["read_golden", "read_model_dir", "save_safetensors", "write_golden", "write_model_dir",
    "write_model_files", "write_results"]


_SAFETENSORS_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path | BinaryIO, metadata: dict[str, str],
                     each=None) -> str:
    """Writes a safetensors file (a path, or a file open for writing) and returns its sha256,
    hashing each tensor while it is written; `each(name)` (if given) runs after tensor `name` is
    written, while its hash is computed."""
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
    opened = open(path, "wb") if isinstance(path, (str, Path)) else contextlib.nullcontext(path)
    with opened as f, ThreadPoolExecutor(1) as pool:
        f.write(prefix)
        for name, buf in zip(tensors, items):
            hashed = pool.submit(digest.update, buf)  # hashlib and write both release the GIL
            f.write(buf)
            if each is not None:
                each(name)
            hashed.result()
    return digest.hexdigest()


def write_model_files(
    directory: Path, config: ModelConfig, state_dict: dict[str, torch.Tensor], before_config=None, each=None
) -> None:
    """model.safetensors, then config.json carrying its sha256 (`before_config()` runs between;
    `each`: see save_safetensors)."""
    config.weights_sha256 = save_safetensors(state_dict, directory / WEIGHTS_FILE, {"format": "pt"}, each)
    if before_config is not None:
        before_config()
    write_config(directory, config)


def write_model_dir(
    dest: str | Path, config: ModelConfig, state_dict: dict[str, torch.Tensor], force: bool = False
) -> Path:
    """Writes config.json + model.safetensors into `dest`, atomically."""
    with new_model_dir(dest, force) as tmp:
        write_model_files(tmp, config, state_dict)
    return Path(dest)


def read_model_dir(path: str | Path, check_hash: bool = True) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """config.json + model.safetensors of a gnhub model directory, the weights' sha256 checked."""
    config = check_model_dir(path, check_hash)
    weights = Path(path) / WEIGHTS_FILE
    try:
        state_dict = load_file(weights)
    except (SafetensorError, OSError) as e:
        raise GnhubError(f"{weights}: not a readable safetensors file ({first_line(e)})") from None
    return config, state_dict


def write_golden(directory: Path, golden: dict[str, torch.Tensor]) -> None:
    """golden.safetensors: the golden outputs, by "IMAGE/STAGE"."""
    save_file(golden, directory / GOLDEN_FILE)


def write_results(directory: Path, report: Report, golden: dict[str, torch.Tensor]) -> None:
    """A verification's verification.json and golden.safetensors."""
    write_report(directory, report)
    write_golden(directory, golden)


def read_golden(path: Path, problem: str, advice: str) -> dict[str, torch.Tensor]:
    """The golden outputs at `path`; one error where they cannot be read: "PATH: PROBLEM (why); ADVICE"."""
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise GnhubError(f"{path}: {problem} ({str(e).strip()[:100]}); {advice}") from None
