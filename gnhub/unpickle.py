"""What an untrusted pickle may build beyond plain containers, numbers and strings.

Numpy arrays, dtypes and scalars are built only through the calls numpy itself writes
(`_reconstruct(ndarray, (0,), b'b')` then `__setstate__`, `_frombuffer`, `scalar`, `dtype`), never
of object dtype, and every byte of data they copy out of the file is charged to a budget of the
file's own size *before* it is allocated (bytes and container entries to a second one): a file
cannot make the reader build more data than it holds. `budget(where, size)` opens that budget
around one read; a refusal is a GnhubError naming the file. `RestrictedUnpickler` is gnhub's
reader for `.pkl` files.

`TorchUnpickler` reads the pickles of `torch.save` (`gnhub.torchfile` reads the files around
them): the same stand-ins, and stand-ins for the globals torch writes (`_rebuild_tensor_v2`,
`_rebuild_parameter`, storage types, dtypes, `torch.Size`, `set`, ...), each a function of
gnhub's that checks its arguments and charges what it builds; none calls the torch function it
stands for. A tensor is a view of a `Storage` the file holds, checked to lie inside it, and its
elements are charged to a budget of TENSOR_VIEWS times the file's size (views cannot multiply
the data a conversion then copies). Both readers take BUILD, SETITEM(S), APPEND(S) and ADDITEMS
only as pickles of numpy arrays, state dicts and plain containers use them: never, say, a
tensor's own `__setstate__` or `__setitem__`.
"""
from __future__ import annotations

import _compat_pickle
import contextlib
import contextvars
import math
import pickle
import struct
from collections import Counter, OrderedDict

import numpy as np
import torch

from .errors import GnhubError

__all__ = ["BoundedFile", "budget", "charge", "NUMPY_GLOBALS", "PickledArray", "RefusedGlobal", "RestrictedUnpickler",
           "Storage", "TENSOR_DTYPES", "TORCH_PICKLE_GLOBALS", "TorchUnpickler", "storage_dtype"]

try:
    from numpy._core import multiarray
except ImportError:  # numpy < 1.26
    from numpy.core import multiarray


TENSOR_VIEWS = 4  # the elements of a .pth's tensors may total this many times the file's size
ENTRY = 16  # what one entry of a container built by a call (OrderedDict, set, Counter) is charged
OBJECT = 64  # what one tensor or storage object is charged, beyond its bytes


class _Budget:
    """The file's size, once for array data (arrays, scalars), once for the bytes (and container
    entries) copied out of it (protocol 2 writes an array's data as bytes first), once for the
    storages of a .pth, and TENSOR_VIEWS times for the elements of its tensors."""

    def __init__(self, where: str, size: int):
        self.where, self.size = where, size
        self.left = {"array": size, "bytes": size, "storage": size, "tensor": TENSOR_VIEWS * size}


_budget: contextvars.ContextVar[_Budget] = contextvars.ContextVar("gnhub_unpickle_budget")


@contextlib.contextmanager
def budget(where: str, size: int):
    """While reading file `where` of `size` bytes: what the stand-ins below may build."""
    token = _budget.set(_Budget(where, size))
    try:
        yield
    finally:
        _budget.reset(token)


def _refuse(what: str) -> GnhubError:
    b = _budget.get(None)
    return GnhubError(f"{b.where if b else 'pickle'}: refused: {what}; real checkpoints never hold that")


def _take(nbytes: int, what: str, kind: str = "array") -> None:
    """Charges `nbytes` of `kind` data built from the file, before they are allocated."""
    b = _budget.get(None)
    if b is None:
        raise pickle.UnpicklingError("this data is built only inside budget(), while gnhub reads a file")
    if nbytes > b.left[kind]:
        limit = b.size * (TENSOR_VIEWS if kind == "tensor" else 1)
        raise GnhubError(f"{b.where}: refused: {what} needs {nbytes:,} bytes, but the file's {kind} data may take "
                         f"{limit:,} bytes ({f'{TENSOR_VIEWS}x ' if kind == 'tensor' else ''}the file's size) and "
                         f"its earlier {kind} data took {limit - b.left[kind]:,} (a pickle that declares more "
                         "data than it carries)")
    b.left[kind] -= nbytes


def charge(nbytes: int, what: str, kind: str) -> None:
    """Charges `nbytes` of `kind` ("array", "bytes", "storage", "tensor") to the open budget."""
    _take(nbytes, what, kind)


def _a(obj) -> str:
    """'a list', 'an int': the type of `obj`, for a message."""
    name = type(obj).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _checked_dtype(dtype, what: str) -> np.dtype:
    if not isinstance(dtype, np.dtype):
        raise _refuse(f"{what} with a dtype that is not a numpy dtype ({type(dtype).__name__})")
    if dtype.hasobject:
        raise _refuse(f"{what} of numpy dtype {dtype}, which holds Python objects")
    return dtype


def _nbytes(shape, dtype: np.dtype, what: str) -> int:
    if not (type(shape) is tuple and len(shape) <= 64 and all(type(n) is int and n >= 0 for n in shape)):
        raise _refuse(f"{what} with shape {str(shape)[:80]}, not a tuple of sizes")
    return math.prod(shape) * dtype.itemsize


class _ArrayClass:
    """What `numpy.ndarray` names in a pickle: only an argument of `_reconstruct`, never called."""

    def __new__(cls, *args, **kwargs):
        raise _refuse("a numpy.ndarray called directly (numpy pickles arrays through _reconstruct)")


class PickledArray(np.ndarray):
    """A numpy array as a pickle builds it: `__setstate__` checks the state numpy wrote and charges
    its bytes before numpy allocates them. Otherwise a plain ndarray."""

    def __new__(cls, *args, **kwargs):
        raise _refuse("a numpy array built directly (numpy pickles arrays through _reconstruct)")

    def __setstate__(self, state):
        what = "a numpy array"
        if not (type(state) is tuple and (len(state) == 4 or len(state) == 5 and state[0] == 1)):
            raise _refuse(f"{what} whose state is not what numpy writes")
        shape, dtype, _, data = state[-4:]
        dtype = _checked_dtype(dtype, what)
        nbytes = _nbytes(shape, dtype, what)
        if not isinstance(data, (bytes, str)) or len(data) != nbytes:  # str: Python 2's bytes, read as latin-1
            raise _refuse(f"{what} of shape {shape} and dtype {dtype} whose data is not its {nbytes:,} bytes")
        _take(nbytes, f"a numpy array of shape {shape} and dtype {dtype}")
        super().__setstate__(state)

    def __reduce__(self):  # pickled again (outside gnhub's readers), it is a plain array
        return self.view(np.ndarray).__reduce__()


def _reconstruct(subtype, shape, typecode):
    """numpy's `_reconstruct`, with the only arguments numpy writes; `__setstate__` gives the array."""
    if not (subtype is _ArrayClass and type(shape) is tuple and shape == (0,) and typecode in ("b", b"b")):
        raise _refuse(f"numpy _reconstruct of {str(shape)[:80]}, {str(typecode)[:20]} (numpy itself writes "
                      "_reconstruct(ndarray, (0,), b'b') and gives the array in its state)")
    return np.ndarray.__new__(PickledArray, (0,), "b")


def _frombuffer(buf, dtype, shape, order):
    """numpy's `_frombuffer` (pickle protocol 5): an array over bytes the file holds."""
    what = "a numpy array (protocol 5)"
    dtype = _checked_dtype(dtype, what)
    nbytes = _nbytes(shape, dtype, what)
    if not isinstance(buf, (bytes, bytearray)) or len(buf) != nbytes or order not in ("C", "F"):
        raise _refuse(f"{what} of shape {shape} and dtype {dtype} whose data is not its {nbytes:,} bytes")
    _take(nbytes, f"a numpy array of shape {shape} and dtype {dtype}")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


def _scalar(dtype, data):
    """numpy's `scalar`: one number from its bytes."""
    dtype = _checked_dtype(dtype, "a numpy scalar")
    if not isinstance(data, (bytes, str)) or len(data) != dtype.itemsize:
        raise _refuse(f"a numpy scalar of dtype {dtype} whose data is not its {dtype.itemsize} bytes")
    _take(dtype.itemsize, f"a numpy scalar of dtype {dtype}")
    return multiarray.scalar(dtype, data)


def _dtype(spec, align=False, copy=True):
    """`numpy.dtype(spec, align, copy)` as numpy writes it: a new (copied) dtype from its name."""
    if not (isinstance(spec, str) and len(spec) <= 64 and align in (False, True) and copy is not False
            and copy in (True, 1)):
        raise _refuse(f"numpy.dtype({str(spec)[:64]!r}, {align!r}, {copy!r}) (numpy writes dtype(name, align, True))")
    dtype = np.dtype(spec, bool(align), True)
    if dtype.hasobject:
        raise _refuse(f"numpy dtype {dtype}, which holds Python objects")
    return dtype


def _bytes(*args):
    """`bytes()`: how pickle protocol 2 writes empty bytes (an empty numpy array's data)."""
    if args:
        raise _refuse("bytes called with arguments (pickle protocol 2 writes only bytes() for empty data)")
    return b""


def _latin1_encode(text, encoding="latin1"):
    """How Python 3 writes bytes in pickle protocols 0-2 (`_codecs.encode`), latin-1 only: a codec
    name taken from the file could make the codec registry import modules."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _refuse(f"_codecs.encode of {_a(text)} with encoding {str(encoding)[:20]!r} (pickle "
                      "writes bytes as latin-1 text)")
    _take(len(text), "bytes", "bytes")
    return text.encode("latin1")


def _entries(items, what: str, kinds=(list, tuple)) -> None:
    """A container built by a call copies `items` (which the file may give once and use many times):
    each entry is charged."""
    if type(items) not in kinds:
        raise _refuse(f"{what} built from {_a(items)}")
    _take(ENTRY * len(items), f"{what} of {len(items):,} entries", "bytes")


def _ordered_dict(items=()):
    """`collections.OrderedDict(items)`: each entry charged, as a copy of what the file holds."""
    _entries(items, "an OrderedDict")
    return OrderedDict(items)


_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")  # numpy 1.x and 2.x write their own
_NUMERIC = ("numpy.core.numeric", "numpy._core.numeric")
NUMPY_GLOBALS = {
    **{f"{m}._reconstruct": _reconstruct for m in _MULTIARRAY},
    **{f"{m}.scalar": _scalar for m in _MULTIARRAY},
    **{f"{m}._frombuffer": _frombuffer for m in _NUMERIC},
    "numpy.ndarray": _ArrayClass,
    "numpy.dtype": _dtype,
    "builtins.bytes": _bytes,
}

_PICKLE_GLOBALS = {
    **NUMPY_GLOBALS,
    "__builtin__.bytes": _bytes,
    "_codecs.encode": _latin1_encode,
    "collections.OrderedDict": _ordered_dict,
}


class BoundedFile:
    """A file whose reads may not ask for more than the file still holds (no giant allocations)."""

    def __init__(self, f, size: int):
        self.f, self.left = f, size

    def _take(self, n: int) -> None:
        if n > self.left:
            raise pickle.UnpicklingError(f"claims {n} bytes where only {self.left} remain")

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else n
        self._take(n)
        data = self.f.read(n)
        self.left -= len(data)
        return data

    def readinto(self, buf) -> int:
        self._take(len(buf))
        n = self.f.readinto(buf)
        self.left -= n
        return n

    def readline(self) -> bytes:
        line = self.f.readline(self.left)  # never past the end: a line may not take what follows
        self.left -= len(line)
        return line


class RefusedGlobal(pickle.UnpicklingError):
    """A global the reader does not admit; `name` is module.name."""

    def __init__(self, name: str):
        super().__init__(f"global {name} is not allowed")
        self.name = name


class _Opcodes(dict):
    def __missing__(self, key: int):
        raise pickle.UnpicklingError(f"invalid load key, {bytes([key])!r} (not a pickle, or a corrupt one)")


class RestrictedUnpickler(pickle._Unpickler):  # the Python one reads a length before allocating it
    """Plain containers, numbers and strings, and `_PICKLE_GLOBALS`; open a `budget` around `load`."""

    GLOBALS = _PICKLE_GLOBALS
    dispatch = _Opcodes(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str):
        if self.proto < 3 and self.fix_imports:  # Python 2's names, as pickle maps them
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        found = self.GLOBALS.get(f"{module}.{name}")
        if found is None:
            raise RefusedGlobal(f"{module}.{name}")
        return found

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed")

    def load_build(self):
        if len(self.stack) < 2:
            raise pickle.UnpicklingError("BUILD with nothing to build")
        state, inst = self.stack[-1], self.stack[-2]
        if type(inst) is OrderedDict and type(state) is dict and all(type(k) is str for k in state):
            self.stack.pop()  # a state dict's `_metadata` (module versions), as torch's state_dict() sets it
            inst.__dict__.update(state)
        elif type(inst) is PickledArray or isinstance(inst, np.dtype):
            pickle._Unpickler.load_build(self)  # their own __setstate__: numpy's, checked (PickledArray)
        else:
            raise _refuse(f"BUILD (the state of {_a(inst)} set by the pickle; numpy arrays and dtypes "
                          "and state dicts are the only ones that hold state)")

    def load_setitem(self):
        if len(self.stack) < 3:
            raise pickle.UnpicklingError("SETITEM with nothing to set")
        self._check_target(self.stack[-3], (dict, OrderedDict, Counter), "SETITEM")
        pickle._Unpickler.load_setitem(self)

    def load_setitems(self):
        self._check_target(self._under_mark(), (dict, OrderedDict, Counter), "SETITEMS")
        pickle._Unpickler.load_setitems(self)

    def load_append(self):
        if len(self.stack) < 2:
            raise pickle.UnpicklingError("APPEND with nothing to append to")
        self._check_target(self.stack[-2], (list,), "APPEND")
        pickle._Unpickler.load_append(self)

    def load_appends(self):
        self._check_target(self._under_mark(), (list,), "APPENDS")
        pickle._Unpickler.load_appends(self)

    def load_additems(self):
        self._check_target(self._under_mark(), (set,), "ADDITEMS")
        pickle._Unpickler.load_additems(self)

    def load_bytearray8(self):
        """As pickle's, but the bytes are read before the bytearray is made (pickle allocates the
        length the file claims first; a file cannot hold more than it has)."""
        (n,) = struct.unpack("<Q", self.read(8))
        data = self.read(n)
        if len(data) != n:
            raise pickle.UnpicklingError(f"BYTEARRAY8 claims {n} bytes where only {len(data)} remain")
        self.append(bytearray(data))

    def _under_mark(self):
        """The object under the topmost MARK (what APPENDS, SETITEMS and ADDITEMS fill)."""
        if not self.metastack or not self.metastack[-1]:
            raise pickle.UnpicklingError("a MARK is missing, or nothing is under it")
        return self.metastack[-1][-1]

    def _check_target(self, target, kinds: tuple, op: str) -> None:
        if type(target) not in kinds:
            raise _refuse(f"{op} on {_a(target)} (pickles fill only dicts, lists and sets that way)")

    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.SETITEM[0]] = load_setitem
    dispatch[pickle.SETITEMS[0]] = load_setitems
    dispatch[pickle.APPEND[0]] = load_append
    dispatch[pickle.APPENDS[0]] = load_appends
    dispatch[pickle.ADDITEMS[0]] = load_additems
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8




# -- torch.save's pickles -----------------------------------------------------------------------

# The dtypes a tensor of a checkpoint may have, by the name torch pickles them under; any of torch's
# dtypes may be a value (torch pickles one as the global `torch.<name>`).
TENSOR_DTYPES = {str(d): d for d in (
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16, torch.int8,
    torch.uint8, torch.bool, torch.complex64, torch.complex128)}
# torch's storage classes (also `torch.cuda.*`: the location is ignored, everything is read to the CPU)
_STORAGE_DTYPES = {"Double": torch.float64, "Float": torch.float32, "Half": torch.float16, "BFloat16": torch.bfloat16,
                   "Long": torch.int64, "Int": torch.int32, "Short": torch.int16, "Char": torch.int8,
                   "Byte": torch.uint8, "Bool": torch.bool, "ComplexFloat": torch.complex64,
                   "ComplexDouble": torch.complex128}


class _StorageType:
    """What `torch.FloatStorage` & co. name in a pickle: a persistent id's dtype, never called."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: torch.dtype):
        self.name, self.dtype = name, dtype

    def __call__(self, *args, **kwargs):
        raise _refuse(f"{self.name} called (torch names storage types only in the ids of its storages)")

    def __reduce__(self):
        raise TypeError("a storage type of gnhub's reader is not pickled again")


_STORAGE_TYPES = {
    **{f"torch.{prefix}{name}Storage": _StorageType(f"torch.{prefix}{name}Storage", dtype)
       for name, dtype in _STORAGE_DTYPES.items() for prefix in ("", "cuda.")},
    **{name: _StorageType(name, torch.uint8) for name in ("torch.storage.UntypedStorage", "torch.UntypedStorage")},
}


def storage_dtype(storage_type) -> torch.dtype:
    """The dtype of a storage type named in a persistent id (a gnhub stand-in, never a torch class)."""
    if type(storage_type) is not _StorageType:
        raise _refuse(f"a storage whose type is {_a(storage_type)}, not one of torch's storage types")
    return storage_type.dtype


class Storage:
    """A storage the file holds (a view of the file, or bytes read from it), `numel` elements of
    the dtype it was written with; only ever the first argument of a tensor's rebuild function
    (`gnhub.torchfile` refuses one left anywhere else)."""

    __slots__ = ("name", "dtype", "numel", "data")
    __hash__ = None  # never a key or a set's member

    def __init__(self, name: str, dtype: torch.dtype, numel: int, data: torch.UntypedStorage):
        self.name, self.dtype, self.numel, self.data = name, dtype, numel, data

    @property
    def nbytes(self) -> int:
        return self.data.nbytes()

    def __reduce__(self):
        raise TypeError("a storage of gnhub's reader is not pickled again")


def _sizes(value, what: str) -> tuple[int, ...]:
    if not (type(value) in (tuple, list, torch.Size) and len(value) <= 64
            and all(type(n) is int and 0 <= n < 2**62 for n in value)):
        raise _refuse(f"{what} {str(value)[:80]}, not a tuple of sizes")
    return tuple(value)


def _no_hooks(hooks, what: str) -> None:
    if not (hooks is None or type(hooks) in (dict, OrderedDict) and not hooks):
        raise _refuse(f"{what} with backward hooks (torch.save never writes them)")


def _tensor_on(storage, storage_offset, size, stride, requires_grad, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A tensor as torch rebuilds one: a view of `storage`, every element of which lies in it."""
    what = "a tensor"
    if type(storage) is not Storage:
        raise _refuse(f"{what} on {_a(storage)}, not on a storage the file holds")
    dtype = storage.dtype if dtype is None else dtype
    if dtype not in TENSOR_DTYPES.values():
        raise _refuse(f"{what} of dtype {str(dtype)[:40]}")
    size, stride = _sizes(size, f"{what} of shape"), _sizes(stride, f"{what} with strides")
    if len(size) != len(stride) or type(storage_offset) is not int or not 0 <= storage_offset < 2**62:
        raise _refuse(f"{what} of shape {size}, strides {stride} and offset {str(storage_offset)[:40]}")
    if type(requires_grad) is not bool or (requires_grad and not (dtype.is_floating_point or dtype.is_complex)):
        raise _refuse(f"{what} of dtype {dtype} with requires_grad={str(requires_grad)[:20]}")
    itemsize = dtype.itemsize
    elements = storage.nbytes // itemsize
    numel = math.prod(size)
    end = storage_offset + (sum((n - 1) * st for n, st in zip(size, stride)) + 1 if numel else 0)
    if end > elements:
        b = _budget.get(None)
        raise GnhubError(f"{b.where if b else 'pickle'}: corrupt: a tensor of shape {list(size)} (strides "
                         f"{list(stride)}, offset {storage_offset}) needs more bytes than its storage {storage.name} "
                         f"holds ({end * itemsize:,} of {storage.nbytes:,}); download it again")
    _take(numel * itemsize + OBJECT, f"a tensor of shape {list(size)} and dtype {dtype}", "tensor")
    t = torch.empty((0,), dtype=dtype).set_(storage.data, storage_offset, size, stride)
    return t.requires_grad_(requires_grad) if requires_grad else t


def _rebuild_tensor(storage, storage_offset, size, stride):
    """torch's `_rebuild_tensor` (older files)."""
    return _tensor_on(storage, storage_offset, size, stride, False)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    """torch's `_rebuild_tensor_v2`: how torch.save writes a tensor."""
    _no_hooks(backward_hooks, "a tensor")
    if not (metadata is None or type(metadata) is dict and not metadata):
        raise _refuse("a tensor with metadata (conjugate or negative views; torch.save of a plain tensor writes none)")
    return _tensor_on(storage, storage_offset, size, stride, requires_grad)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    """torch's `_rebuild_tensor_v3`: a tensor of `dtype` on an untyped storage."""
    _no_hooks(backward_hooks, "a tensor")
    if not (metadata is None or type(metadata) is dict and not metadata):
        raise _refuse("a tensor with metadata (conjugate or negative views; torch.save of a plain tensor writes none)")
    if type(dtype) is not torch.dtype:
        raise _refuse(f"a tensor whose dtype is {_a(dtype)}")
    return _tensor_on(storage, storage_offset, size, stride, requires_grad, dtype)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    """torch's `_rebuild_parameter(_with_state)`: an nn.Parameter around a tensor just rebuilt
    (a parameter's Python attributes, `state`, are not set: they hold no weights)."""
    if type(data) is not torch.Tensor or type(requires_grad) is not bool:
        raise _refuse(f"a parameter of {_a(data)}, not of a tensor")
    if requires_grad and not (data.is_floating_point() or data.is_complex()):
        raise _refuse(f"a parameter of dtype {data.dtype} with requires_grad=True")
    _no_hooks(backward_hooks, "a parameter")
    if not (state is None or type(state) in (dict, tuple)):
        raise _refuse(f"a parameter whose state is {_a(state)}")
    _take(OBJECT, "a parameter", "tensor")
    return torch.nn.Parameter(data, requires_grad)


class _TensorClass:
    """What `torch.Tensor` names in a pickle: only an argument of `_rebuild_from_type_v2`, never called."""

    def __new__(cls, *args, **kwargs):
        raise _refuse("torch.Tensor called directly (torch writes tensors through _rebuild_tensor_v2)")


class _ParameterClass:
    """What `torch.nn.parameter.Parameter` names in a pickle: never called."""

    def __new__(cls, *args, **kwargs):
        raise _refuse("torch.nn.Parameter called directly (torch writes parameters through _rebuild_parameter)")


def _rebuild_from_type_v2(func, new_type, args, state):
    """torch's `_rebuild_from_type_v2`: a tensor or parameter with Python attributes (`state`),
    which are not set: they hold no weights."""
    if func not in (_rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter) or type(args) is not tuple:
        raise _refuse("_rebuild_from_type_v2 of anything but a tensor rebuilt as torch writes it")
    if new_type not in (_TensorClass, _ParameterClass):
        raise _refuse(f"_rebuild_from_type_v2 to {_a(new_type)}, not to a tensor or parameter")
    if not (state is None or type(state) in (dict, tuple)):
        raise _refuse(f"a tensor whose state is {_a(state)}")
    ret = func(*args)
    if new_type is _ParameterClass and type(ret) is not torch.nn.Parameter:
        raise _refuse("_rebuild_from_type_v2 of a tensor to a parameter")
    return ret


def _torch_size(sizes=()):
    """`torch.Size(sizes)`."""
    _entries(sizes, "a torch.Size")
    if len(sizes) > 64 or not all(type(n) is int for n in sizes):
        raise _refuse(f"a torch.Size of {str(sizes)[:80]}")
    return torch.Size(sizes)


def _torch_device(kind, index=None):
    """`torch.device(kind[, index])`, as torch pickles a device."""
    if not (type(kind) is str and len(kind) <= 32 and (index is None or type(index) is int and 0 <= index < 2**16)):
        raise _refuse(f"a torch.device of {str(kind)[:40]!r}, {str(index)[:20]}")
    try:
        return torch.device(kind) if index is None else torch.device(kind, index)
    except (RuntimeError, ValueError):
        raise _refuse(f"a torch.device of {kind!r}") from None


def _set(items=()):
    """`set(items)`."""
    _entries(items, "a set")
    return set(items)


def _counter(items=()):
    """`collections.Counter(items)`: Counter pickles itself as Counter(dict)."""
    _entries(items, "a Counter", (dict, list, tuple))
    return Counter(items)


def _bytearray(data=b""):
    """`bytearray(bytes)`: how pickle protocols 0-4 write a bytearray."""
    if type(data) is not bytes:
        raise _refuse(f"bytearray({type(data).__name__}) (pickle writes bytearray(bytes))")
    _take(len(data), f"a bytearray of {len(data):,} bytes", "bytes")
    return bytearray(data)


def _complex(real=0.0, imag=0.0):
    """`complex(real, imag)`, of two numbers."""
    if type(real) not in (int, float) or type(imag) not in (int, float):
        raise _refuse(f"a complex of {_a(real)} and {_a(imag)}")
    return complex(real, imag)


TORCH_PICKLE_GLOBALS = {
    **_PICKLE_GLOBALS,
    **_STORAGE_TYPES,
    **{str(obj): obj for name in dir(torch) for obj in [getattr(torch, name)] if isinstance(obj, torch.dtype)},
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch.Tensor": _TensorClass,
    "torch.nn.parameter.Parameter": _ParameterClass,
    "torch.Size": _torch_size,
    "torch.device": _torch_device,
    "builtins.set": _set,
    "builtins.bytearray": _bytearray,
    "builtins.complex": _complex,
    "collections.Counter": _counter,
}


class TorchUnpickler(RestrictedUnpickler):
    """A pickle `torch.save` wrote: `TORCH_PICKLE_GLOBALS`, and persistent ids
    ('storage', storage type, key, location, numel[, view]) resolved by `storage(pid)` (the file
    format's reader gives the `Storage`; None: persistent ids are refused). Strings of Python 2
    are read as latin-1, as numpy arrays in them need. Open a `budget` around `load`."""

    GLOBALS = TORCH_PICKLE_GLOBALS

    def __init__(self, file, storage=None):
        super().__init__(file, encoding="latin1")
        self._storage = storage

    def persistent_load(self, pid):
        if self._storage is None:
            raise pickle.UnpicklingError("persistent ids are not allowed here")
        if not (type(pid) is tuple and len(pid) in (5, 6) and pid[0] == "storage" and type(pid[2]) is str
                and 0 < len(pid[2]) <= 64 and type(pid[3]) is str and len(pid[3]) <= 64
                and type(pid[4]) is int and 0 <= pid[4] < 2**62):
            if type(pid) is tuple and pid[:1] == ("module",):
                raise _refuse("a pickled nn.Module (torch.save(model) needs the model's code; gnhub reads state "
                              "dicts)")
            raise _refuse(f"a persistent id {str(pid)[:100]} (torch writes ('storage', type, key, location, numel))")
        storage_dtype(pid[1])
        return self._storage(pid)
