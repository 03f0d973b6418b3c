"""Reading source checkpoints safely: torch.load restricted to tensors and plain data (with
gnhub/unpickle.py's numpy globals), Detectron's pickles through gnhub/unpickle.py's unpickler,
both bounded by the file's size. Model directories are read and written by gnhub/layout.py and
gnhub/weights.py."""
from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path

import torch

from .errors import GnhubError, first_line
from .torchfile import read_torch_file
from .unpickle import BoundedFile, RefusedGlobal, RestrictedUnpickler, budget

__all__ = ["IMAGE_MAGIC", "MAX_OBJECTS", "check_bounded", "check_input_file", "read_pickle", "read_torch_checkpoint"]

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
        raise GnhubError(f"{path}: not a readable PyTorch checkpoint ({first_line(e)})") from None
    except (EOFError, ValueError, zipfile.BadZipFile, OSError, struct.error, KeyError, IndexError, TypeError,
            AttributeError, UnicodeError, MemoryError, OverflowError, RecursionError, AssertionError, LookupError,
            RuntimeError, NotImplementedError) as e:
        raise GnhubError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {first_line(e)})") from None
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


def read_pickle(path: str | Path) -> object:
    """A (Python 2 or 3) pickle of numpy arrays in plain containers, as Detectron and detectron2
    write them and as `paddle.save` writes a state dict (.pdparams).

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
        raise GnhubError(f"{path}: not a readable pickle ({type(e).__name__}: {first_line(e)})") from None
    check_bounded(obj, str(path))
    return obj
