"""Reading checkpoints safely and writing model directories atomically."""
from __future__ import annotations

import hashlib
import json
import pickle
import struct
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .config import ModelConfig
from .errors import GnhubError
from .layout import WEIGHTS_FILE, check_model_dir, new_model_dir, write_config
from .torchfile import read_torch_file
from .unpickle import BoundedFile, RefusedGlobal, RestrictedUnpickler, budget

__all__ = ["IMAGE_MAGIC", "MAX_OBJECTS", "check_bounded", "check_input_file", "read_model_dir", "read_pickle",
    "read_torch_checkpoint", "save_safetensors", "write_model_dir", "write_model_files"]

MAX_OBJECTS = 1_000_000  # objects a checkpoint may hold, counting every reference (real ones: thousands)


def check_bounded(obj, where: str, limit: int = MAX_OBJECTS) -> None:
    """Refuses a structure of containers that refers to itself, or whose objects, counted once per
    reference, exceed `limit` (a pickle that nests shared lists expands exponentially, and every
    walk over it would too). Linear in the distinct objects; no recursion."""
    size: dict[int, int] = {}
    open_ids: set[int] = set()
    stack = [(obj, False)]
    while stack:
        item, done = stack.pop()
        key = id(item)
        if key in size:
            continue
        children = _children(item)
        if children is None:
            size[key] = 1
        elif not done:
            if key in open_ids:
                raise GnhubError(f"{where}: refused: a container in it holds itself; real checkpoints never do")
            open_ids.add(key)
            stack.append((item, True))
            stack.extend((c, False) for c in children if id(c) not in size)
        else:
            if any(id(c) not in size for c in children):
                raise GnhubError(f"{where}: refused: a container in it holds itself; real checkpoints never do")
            size[key] = min(1 + sum(size[id(c)] for c in children), limit + 1)
            open_ids.discard(key)
    if size[id(obj)] > limit:
        raise GnhubError(f"{where}: refused: it expands to more than {limit:,} objects (shared references nested "
                         "in shared references); real checkpoints hold thousands")


def _children(obj) -> list | None:
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return list(obj)
    return None


def _check_zip_sizes(path: Path, size: int) -> None:
    """A zip checkpoint may not declare more content than a real one could hold (torch stores its
    entries uncompressed): a small file that inflates to gigabytes is refused before reading."""
    try:
        with zipfile.ZipFile(path) as z:
            declared = sum(i.file_size for i in z.infolist())
    except Exception:  # noqa: BLE001 - a zip zipfile cannot take: read_torch_file names what is wrong with it
        return
    if declared > 4 * size + (64 << 20):
        raise GnhubError(f"{path}: refused: its zip entries declare {declared / 2**20:,.0f} MiB in a "
                         f"{size / 2**20:,.1f} MiB file (a zip bomb?); torch writes checkpoints uncompressed")


# the first bytes of image files, which users pass to convert in place of a checkpoint
IMAGE_MAGIC = {b"\x89PNG": "PNG", b"\xff\xd8\xff": "JPEG", b"GIF8": "GIF", b"BM": "BMP", b"II*\x00": "TIFF",
               b"MM\x00*": "TIFF"}


def check_input_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise GnhubError(f"{path}: no such file")
    if path.is_dir():
        raise GnhubError(f"{path}: is a directory, expected a checkpoint file")
    if path.stat().st_size == 0:
        raise GnhubError(f"{path}: the file is empty; download it again")
    with open(path, "rb") as f:
        head = f.read(12)
    kind = next((k for magic, k in IMAGE_MAGIC.items() if head.startswith(magic)), None)
    if kind or (head[:4] == b"RIFF" and head[8:] == b"WEBP"):
        raise GnhubError(f"{path}: is an image ({kind or 'WebP'}), not a checkpoint; to run a model on it: "
                         f"gnhub predict {path} --model MODEL")
    return path


def read_torch_checkpoint(path: str | Path) -> object:
    """A torch.save file (zip or legacy format), read by gnhub's own unpickler (nothing in the file
    can run code): tensors, numpy scalars/arrays, numbers, strings and containers, built only as
    torch and numpy write them and bounded by the file's size (`gnhub.unpickle`).

    Zip checkpoints are memory-mapped: tensors are read from the file as they are used.
    """
    path = check_input_file(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    if is_zip:
        _check_zip_sizes(path, size)
    try:
        with budget(str(path), size):
            obj = read_torch_file(path, size)
    except RefusedGlobal as e:
        raise GnhubError(f"{path}: refused to unpickle: GLOBAL {e.name} is not allowed. gnhub only reads tensors, "
                         "numbers, strings and containers, so nothing in the file can run code") from None
    except pickle.UnpicklingError as e:
        raise GnhubError(f"{path}: not a readable PyTorch checkpoint ({_first_line(e)})") from None
    except (EOFError, ValueError, zipfile.BadZipFile, OSError, struct.error, KeyError, IndexError, TypeError,
            AttributeError, UnicodeError, MemoryError, OverflowError, RecursionError, AssertionError, LookupError,
            RuntimeError, NotImplementedError) as e:
        raise GnhubError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {_first_line(e)})") from None
    check_bounded(obj, str(path))
    short = next((name for name, t in _tensors(obj) if not _storage_holds(t)), None)
    if short is not None:
        raise GnhubError(f"{path}: corrupt: tensor {short} needs more bytes than its storage in the file holds; "
                         "download it again")
    return obj


def _tensors(obj):
    """(name, tensor) of every tensor in nested dicts and lists (each container visited once)."""
    seen: set[int] = set()
    stack = [("", obj)]
    while stack:
        prefix, item = stack.pop()
        if isinstance(item, torch.Tensor):
            yield prefix or "<root>", item
        elif isinstance(item, (dict, list, tuple)) and id(item) not in seen:
            seen.add(id(item))
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            stack.extend((f"{prefix}.{k}" if prefix else str(k), v) for k, v in pairs)


def _storage_holds(t: torch.Tensor) -> bool:
    """The tensor's elements all lie inside its storage (a truncated zip entry does not)."""
    if t.numel() == 0:
        return True
    last = t.storage_offset() + sum((n - 1) * st for n, st in zip(t.shape, t.stride()))
    return (last + 1) * t.element_size() <= t.untyped_storage().nbytes()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def read_pickle(path: str | Path) -> object:
    """A (Python 2 or 3) pickle of numpy arrays in plain containers, as Detectron writes them.

    Only numpy arrays, dtypes and scalars are admitted beyond containers, strings and numbers;
    anything else is refused before it is built, so nothing in the file can run code.
    """
    path = check_input_file(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f, budget(str(path), size):
            obj = RestrictedUnpickler(BoundedFile(f, size), encoding="latin1").load()
    except pickle.UnpicklingError as e:
        if "not allowed" in str(e):
            raise GnhubError(f"{path}: refused to unpickle: {e}. gnhub only reads numpy arrays, numbers, "
                             "strings and containers, so nothing in the file can run code") from None
        raise GnhubError(f"{path}: not a readable pickle ({e})") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError,
            UnicodeError, OverflowError, RecursionError, struct.error, AssertionError, LookupError) as e:
        raise GnhubError(f"{path}: not a readable pickle ({type(e).__name__}: {_first_line(e)})") from None
    check_bounded(obj, str(path))
    return obj


_SAFETENSORS_DTYPES = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str], each=None) -> str:
    """Writes a safetensors file and returns its sha256, hashing each tensor while it is written;
    `each(name)` (if given) runs after tensor `name` is written, while its hash is computed."""
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
        raise GnhubError(f"{weights}: not a readable safetensors file ({_first_line(e)})") from None
    return config, state_dict
