"""torch.save's files, read without torch.load: the zip format (torch >= 1.6) and the legacy one.

The zip format: `<root>/data.pkl`, a pickle whose persistent ids ('storage', storage type, key,
location, numel) name the entries `<root>/data/<key>` (numel elements each, stored uncompressed
and aligned to 64 bytes), and `<root>/byteorder` ("little"; absent before torch 1.10), beside
version records gnhub does not need. The legacy format (`_use_new_zipfile_serialization=False`,
which mmdetection's `publish_model` still writes): five pickles in a row (the magic number, the
protocol version 1001, a dict of system info, the object, whose persistent ids gain a sixth field,
a view of the storage or None, then the list of storage keys), then each storage in that order as
an 8-byte little-endian element count and its bytes.

Both are read with `gnhub.unpickle.TorchUnpickler` inside the caller's `budget`: a storage must
be exactly as large as its persistent id declares and lie inside the file (a zip entry of that
size, or the bytes that follow the pickles), and every storage is charged to the file's size
before anything is allocated for it, so the storages of a file total at most its size. Zip
storages are mapped from the file (copy-on-write) where torch aligned them, as torch's loader maps them
with `mmap=True`; others are copied. Refusals and corruption are GnhubErrors naming the file;
a malformed file raises what the parsing raised (the caller names it unreadable).
"""
from __future__ import annotations

import io
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch

from .errors import GnhubError
from .unpickle import OBJECT, BoundedFile, Storage, TorchUnpickler, charge, storage_dtype

__all__ = ["LEGACY_MAGIC", "LEGACY_PROTOCOL", "read_torch_file"]

LEGACY_MAGIC, LEGACY_PROTOCOL = 0x1950A86A20F9469CFC6C, 1001
_ALIGNMENT = 64  # torch aligns each entry's data to this; a storage elsewhere is copied, not mapped
_SMALL_RECORD = 64  # byteorder: "little" or "big"


def read_torch_file(path: Path, size: int) -> object:
    """The object a torch.save file of `size` bytes holds (zip or legacy format). Open a `budget`
    of `size` around the call."""
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
        f.seek(0)
        obj = _read_zip(path, f, size) if is_zip else _read_legacy(path, f, size)
    _refuse_bare_storages(obj, path)
    return obj


def _corrupt(path: Path, what: str) -> GnhubError:
    return GnhubError(f"{path}: corrupt: {what}; download it again")


def _unreadable(path: Path, why: str) -> GnhubError:
    return GnhubError(f"{path}: not a readable PyTorch checkpoint ({why})")


def _new_storage(nbytes: int, what: str) -> torch.UntypedStorage:
    """Memory for `nbytes` that the file holds, charged to its storage budget first (allocated by
    numpy, whose allocations tracemalloc sees: the fuzz tests measure them)."""
    charge(nbytes + OBJECT, what, "storage")
    return torch.from_numpy(np.empty(nbytes, np.uint8)).untyped_storage()


def _buffer(storage: torch.UntypedStorage):
    """A writable numpy view of `storage`'s bytes."""
    return torch.empty(0, dtype=torch.uint8).set_(storage).numpy()


# -- zip ------------------------------------------------------------------------------------------

def _data_offset(path: Path, f, info: zipfile.ZipInfo, size: int) -> int:
    """Where a stored entry's bytes begin, checked to lie in the file with all `info.file_size` of them."""
    f.seek(info.header_offset)
    head = f.read(30)
    if len(head) != 30 or head[:4] != b"PK\x03\x04":
        raise _corrupt(path, f"zip entry {info.filename} has no local header where the zip's directory says")
    name_length, extra_length = struct.unpack("<HH", head[26:30])
    offset = info.header_offset + 30 + name_length + extra_length
    if offset + info.file_size > size or info.compress_size != info.file_size:
        raise _corrupt(path, f"zip entry {info.filename} lies outside the file")
    return offset


def _read_zip(path: Path, f, size: int) -> object:
    with zipfile.ZipFile(f) as z:
        infos = z.infolist()
        records: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            if info.filename in records:
                raise GnhubError(f"{path}: refused: zip entry {info.filename} appears twice (torch writes each once)")
            if info.compress_size > size:  # zipfile would allocate what it declares before reading
                raise GnhubError(f"{path}: refused: zip entry {info.filename} declares {info.compress_size:,} bytes "
                                 f"in a {size:,}-byte file")
            records[info.filename] = info
        root = infos[0].filename.split("/", 1)[0] if infos and "/" in infos[0].filename else None
        pkl = records.get(f"{root}/data.pkl")
        if pkl is None:
            raise _unreadable(path, "a zip without torch's data.pkl")
        if pkl.file_size > size:
            raise GnhubError(f"{path}: refused: its data.pkl declares {pkl.file_size:,} bytes in a {size:,}-byte "
                             "file; torch writes checkpoints uncompressed")
        order = records.get(f"{root}/byteorder")
        if order is not None and (order.file_size > _SMALL_RECORD or z.read(order) != b"little"):
            raise _unreadable(path, "written big-endian; gnhub reads little-endian checkpoints")
        data_pkl = z.read(pkl)
        mapped: list[torch.UntypedStorage] = []
        storages: dict[str, Storage] = {}

        def storage(pid) -> Storage:
            if len(pid) != 5:
                raise GnhubError(f"{path}: refused: a persistent id of {len(pid)} fields (torch's zip format writes "
                                 "('storage', type, key, location, numel))")
            _, kind, key, _, numel = pid
            dtype = storage_dtype(kind)
            name = f"data/{key}"
            found = storages.get(key)
            if found is not None:
                if found.dtype != dtype or found.numel != numel:
                    raise _corrupt(path, f"storage {name} is named with two dtypes or sizes")
                return found
            info = records.get(f"{root}/{name}")
            if info is None:
                raise _corrupt(path, f"its pickle names storage {name}, which the zip does not hold")
            nbytes = numel * dtype.itemsize
            if info.file_size != nbytes:
                raise _corrupt(path, f"storage {name} of {numel:,} {str(dtype).removeprefix('torch.')} elements "
                               f"needs {'more' if nbytes > info.file_size else 'fewer'} bytes than its storage in "
                               f"the file holds ({nbytes:,} declared, {info.file_size:,} stored)")
            offset = _data_offset(path, f, info, size) if info.compress_type == zipfile.ZIP_STORED else None
            if offset is not None and offset % _ALIGNMENT == 0:
                charge(nbytes + OBJECT, f"storage {name}", "storage")
                if not mapped:
                    if os.fstat(f.fileno()).st_size != size:
                        raise GnhubError(f"{path}: the file changed while it was read")
                    mapped.append(torch.UntypedStorage.from_file(str(path), False, size))
                data = mapped[0][offset:offset + nbytes]
            else:  # compressed or unaligned: copied (and its CRC checked), within the storage budget
                data = _new_storage(nbytes, f"storage {name}")
                view = memoryview(_buffer(data))
                with z.open(info) as entry:
                    done = 0
                    while done < nbytes:
                        n = entry.readinto(view[done:])
                        if not n:
                            raise _corrupt(path, f"storage {name} ends early")
                        done += n
            storages[key] = Storage(name, dtype, numel, data)
            return storages[key]

        return TorchUnpickler(_memory_file(data_pkl), storage).load()


def _memory_file(data: bytes) -> BoundedFile:
    return BoundedFile(io.BytesIO(data), len(data))


# -- legacy ---------------------------------------------------------------------------------------

def _read_legacy(path: Path, f, size: int) -> object:
    bounded = BoundedFile(f, size)

    def header():
        return TorchUnpickler(bounded).load()  # no persistent ids

    magic = header()
    if type(magic) is not int or magic != LEGACY_MAGIC:
        raise _unreadable(path, "neither torch's zip format nor its legacy format")
    version, info = header(), header()
    if type(version) is not int or version != LEGACY_PROTOCOL:
        raise _unreadable(path, f"legacy protocol {str(version)[:20]}, not {LEGACY_PROTOCOL}")
    if type(info) is not dict or info.get("little_endian") is not True:
        raise _unreadable(path, "written big-endian, or without torch's system info")
    roots: dict[str, Storage] = {}
    views: dict[str, Storage] = {}

    def storage(pid) -> Storage:
        if len(pid) != 6:
            raise GnhubError(f"{path}: refused: a persistent id of {len(pid)} fields (torch's legacy format writes "
                             "('storage', type, key, location, numel, view))")
        _, kind, key, _, numel, view = pid
        dtype = storage_dtype(kind)
        if key in views:
            raise _corrupt(path, f"storage {key} is named both as a view and as a storage")
        root = roots.get(key)
        if root is None:
            nbytes = numel * dtype.itemsize
            if nbytes + 8 > bounded.left:
                raise _corrupt(path, f"storage {key} of {numel:,} {str(dtype).removeprefix('torch.')} elements needs "
                               f"more bytes than its storage in the file holds ({nbytes:,}; {bounded.left:,} are left)")
            root = roots[key] = Storage(f"storage {key}", dtype, numel, _new_storage(nbytes, f"storage {key}"))
        elif root.dtype != dtype or root.numel != numel:
            raise _corrupt(path, f"storage {key} is named with two dtypes or sizes")
        if view is None:
            return root
        if not (type(view) is tuple and len(view) == 3 and type(view[0]) is str and len(view[0]) <= 64
                and all(type(n) is int and n >= 0 for n in view[1:]) and view[1] + view[2] <= numel):
            raise _corrupt(path, f"a view {str(view)[:100]} of storage {key} lies outside it")
        view_key, start, count = view
        if view_key in roots:
            raise _corrupt(path, f"storage {view_key} is named both as a view and as a storage")
        found = views.get(view_key)
        if found is None:
            charge(OBJECT, f"a view of storage {key}", "storage")
            isz = dtype.itemsize
            found = views[view_key] = Storage(f"storage {view_key}", dtype, count,
                                              root.data[start * isz:(start + count) * isz])
        elif found.dtype != dtype or found.numel != count:
            raise _corrupt(path, f"view {view_key} is named with two dtypes or sizes")
        return found

    obj = TorchUnpickler(bounded, storage).load()
    keys = header()
    if type(keys) is not list or not all(type(k) is str for k in keys) or len(set(keys)) != len(keys) \
            or set(keys) != set(roots):
        raise _corrupt(path, "its list of storages is not the storages its pickle names")
    for key in keys:
        s = roots[key]
        head = bounded.read(8)
        if len(head) != 8 or int.from_bytes(head, "little") != s.numel:
            raise _corrupt(path, f"storage {key} of {s.numel:,} {str(s.dtype).removeprefix('torch.')} elements needs "
                           "more bytes than its storage in the file holds")
        if s.data.nbytes() > bounded.left or s.numel and bounded.readinto(_buffer(s.data)) != s.data.nbytes():
            raise _corrupt(path, f"storage {key} ends early ({s.data.nbytes():,} bytes, {bounded.left:,} left in the "
                           "file: it needs more bytes than its storage in the file holds)")
    return obj


def _refuse_bare_storages(obj, path: Path) -> None:
    """A storage outside any tensor is no value of a checkpoint: refused (each container once)."""
    seen: set[int] = set()
    stack = [obj]
    while stack:
        item = stack.pop()
        if type(item) is Storage:
            raise GnhubError(f"{path}: refused: a bare storage ({item.name}) outside any tensor; real checkpoints "
                             "never hold that")
        if isinstance(item, (dict, list, tuple, set)) and id(item) not in seen:
            seen.add(id(item))
            stack.extend(item.values() if isinstance(item, dict) else item)
