"""What an untrusted pickle may build beyond plain containers, numbers and strings.

Numpy arrays, dtypes and scalars are built only through the calls numpy itself writes
(`_reconstruct(ndarray, (0,), b'b')` then `__setstate__`, `_frombuffer`, `scalar`, `dtype`), never
of object dtype, and every byte of data they copy out of the file is charged to a budget of the
file's own size *before* it is allocated (bytes and OrderedDict entries to a second one): a file
cannot make the reader build more data than it holds. `budget(where, size)` opens that budget
around one read; a refusal is a GnhubError naming the file. `RestrictedUnpickler` is gnhub's
reader for `.pkl` files; `TORCH_GLOBALS` are the same stand-ins, for `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import pickle
from collections import OrderedDict

import numpy as np

from .errors import GnhubError

__all__ = ["BoundedFile", "budget", "NUMPY_GLOBALS", "PickledArray", "RestrictedUnpickler", "TORCH_GLOBALS"]

try:
    from numpy._core import multiarray
except ImportError:  # numpy < 1.26
    from numpy.core import multiarray


class _Budget:
    """The file's size, once for array data (arrays, scalars) and once for the bytes (and
    OrderedDict entries) copied out of it: protocol 2 writes an array's data as bytes first."""

    def __init__(self, where: str, size: int):
        self.where, self.size, self.left = where, size, {"array": size, "bytes": size}


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
        raise GnhubError(f"{b.where}: refused: {what} needs {nbytes:,} bytes, but the whole file holds "
                         f"{b.size:,} bytes and its earlier {kind} data took {b.size - b.left[kind]:,} (a pickle "
                         "that declares more data than it carries)")
    b.left[kind] -= nbytes


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
        raise pickle.UnpicklingError(f"global _codecs.encode of {type(text).__name__} with encoding "
                                     f"{str(encoding)[:20]!r} is not allowed")
    _take(len(text), "bytes", "bytes")
    return text.encode("latin1")


def _ordered_dict(items=()):
    """`collections.OrderedDict(items)`: each entry charged, as a copy of what the file holds."""
    if not isinstance(items, (list, tuple)):
        raise _refuse(f"an OrderedDict built from a {type(items).__name__}")
    _take(len(items), f"an OrderedDict of {len(items):,} entries", "bytes")
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

# For torch.load(weights_only=True), which builds only the types it is given (BUILD): the array
# class above, and the dtypes numpy pickles of numbers hold.
TORCH_GLOBALS = [
    *((obj, name) for name, obj in NUMPY_GLOBALS.items()),
    PickledArray,
    *{type(np.dtype(t)) for t in "?bBhHiIlLqQefdgFDG"},
]

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
        line = self.f.readline()
        self.left -= len(line)
        return line


class RestrictedUnpickler(pickle._Unpickler):  # the Python one reads a length before allocating it
    """Plain containers, numbers and strings, and `_PICKLE_GLOBALS`; open a `budget` around `load`."""

    def find_class(self, module: str, name: str):
        found = _PICKLE_GLOBALS.get(f"{module}.{name}")
        if found is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return found

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed")
