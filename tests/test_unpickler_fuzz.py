"""Hypothesis-built hostile pickles for both readers (gnhub's .pkl unpickler, torch.load of a .pth's
data.pkl): numpy arrays with random shapes (up to 2**62 elements), dtypes (object, structured,
str, datetime, long double) and data; numpy's own calls with random arguments; allowed and refused
globals; calls repeated through memo references; nested containers; now and then a flipped byte.

For every file, accepted or refused: it parses or raises one line of GnhubError (nothing else), no
allocation failed (a MemoryError would show that something tried to build more than the file
holds), and the peak of what Python and numpy allocated while reading it (tracemalloc) stays below
PER_BYTE x its size + SLACK. PER_BYTE is Python's own price of the smallest objects (an empty
list, 3 bytes of pickle, is a 72-byte object); data costs at most twice its bytes in the file
(protocol 2 builds an array's data as bytes, then the array).
"""
import math
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hostile import (
    EMPTY_ARRAY_ARGS,
    RECONSTRUCT,
    as_pth,
    op_array,
    op_bytes,
    op_call,
    op_dtype,
    op_get,
    op_global,
    op_int,
    op_list,
    op_memo,
    op_str,
    op_tuple,
    pickled,
    traced_peak,
)

from gnhub.checkpoint import read_pickle, read_torch_checkpoint
from gnhub.errors import GnhubError

PER_BYTE, SLACK = 64, 1 << 20
EXAMPLES = 100  # per reader

SCALAR = op_global("numpy.core.multiarray.scalar")
FROMBUFFER = op_global("numpy._core.numeric._frombuffer")
DTYPES = ["f4", "<f8", ">f4", "f2", "i8", "u1", "b", "?", "c8", "g", "O", "V8", "V1000", "U3", "S2", "M8[D]",
          "(2,)f4", "f4,O", "f4,i4", "", "x"]
NUMPY = ["numpy.core.multiarray._reconstruct", "numpy._core.multiarray.scalar", "numpy._core.numeric._frombuffer",
         "numpy.ndarray", "numpy.dtype", "__builtin__.bytes", "builtins.bytes", "gnhub.unpickle.PickledArray"]
# torch's own weights_only globals: its unpickler looks them up before gnhub's, so a .pth can make
# them allocate (test_torch_own_globals_are_not_bounded_yet); the .pkl reader is fuzzed with them
TORCH_OWN = ["_codecs.encode", "collections.OrderedDict", "builtins.bytearray", "builtins.set", "collections.Counter",
             "torch.Tensor", "torch.Size"]
REFUSED = ["os.system", "builtins.eval", "builtins.getattr", "numpy.zeros", "numpy.frombuffer", "torch.zeros",
           "torch._utils._rebuild_tensor_v2", "copy_reg._reconstructor"]

counts = st.one_of(st.integers(0, 8), st.integers(0, 30_000_000), st.integers(2**44, 2**62))
shapes = st.one_of(st.lists(st.integers(0, 8), max_size=4), counts.map(lambda n: [n]),
                   st.lists(counts, min_size=2, max_size=3)).filter(
    lambda s: not 30_000_000 < math.prod(s) < 2**44)  # were a regression to build these: fail fast, never swap
shape_ops = shapes.map(lambda s: op_tuple(*map(op_int, s)))
plain_dtypes = st.sampled_from(DTYPES).map(op_dtype)
structured = st.builds(  # numpy's state of a structured dtype with one field
    lambda field, offset, size: op_dtype(f"V{size}") + op_tuple(
        op_int(3), op_str("|"), b"N", op_tuple(op_str("a")),
        b"}" + op_str("a") + op_tuple(field, op_int(offset)) + b"s", op_int(size), op_int(1), op_int(63)) + b"b",
    plain_dtypes, st.integers(0, 16), st.integers(0, 16))
dtypes = st.one_of(plain_dtypes, structured)
datas = st.one_of(st.integers(0, 1100).map(lambda n: op_bytes(bytes(n))), st.sampled_from([b"]", b"N", op_int(3)]))
leaves = st.one_of(
    st.integers(-2**70, 2**70).map(op_int), st.text(max_size=12).map(op_str), st.binary(max_size=24).map(op_bytes),
    st.sampled_from([b"N", b"\x88", b"\x89", b"G" + struct.pack(">d", 1.5)]), dtypes)
numpy_values = st.one_of(
    st.builds(lambda s, d, x: op_array(s, d, x), shapes.map(tuple), dtypes, datas),
    st.builds(lambda s, c: op_call(RECONSTRUCT, op_global("numpy.ndarray"), s, op_bytes(c)), shape_ops,
              st.sampled_from([b"b", b"O", b"f8", b"V8"])),
    st.builds(lambda x, d, s, o: op_call(FROMBUFFER, x, d, s, op_str(o)), datas, dtypes, shape_ops,
              st.sampled_from(["C", "F", "K"])),
    st.builds(lambda d, x: op_call(SCALAR, d, x), dtypes, datas),
    st.builds(lambda s, d: op_call(op_global("numpy.ndarray"), s, op_str(d)), shape_ops, st.sampled_from(DTYPES)))


def values(globals_: list[str]):
    """Opcodes that push one value: a leaf, a numpy value, a call of one of `globals_`, a call
    or an array's state repeated through memo references, or a container of values."""
    def grow(children):
        calls = st.builds(lambda g, args: op_call(op_global(g), *args), st.sampled_from(globals_),
                          st.lists(children, max_size=3))
        repeated_calls = st.builds(
            lambda g, args, k: op_list(op_memo(0, op_global(g)), op_memo(1, op_tuple(*args)),
                                       *[op_get(0) + op_get(1) + b"R"] * k),
            st.sampled_from(globals_), st.lists(children, max_size=2), st.integers(0, 3000))
        repeated_arrays = st.builds(
            lambda state, k: op_list(op_memo(0, RECONSTRUCT), op_memo(1, EMPTY_ARRAY_ARGS), op_memo(2, state),
                                     *[op_get(0) + op_get(1) + b"R" + op_get(2) + b"b"] * k),
            st.builds(lambda s, d, x: op_tuple(op_int(1), s, d, b"\x89", x), shape_ops, dtypes, datas),
            st.integers(0, 3000))
        dicts = st.lists(st.tuples(st.text(max_size=6).map(op_str), children), max_size=4).map(
            lambda kv: b"}(" + b"".join(k + v for k, v in kv) + b"u")
        return st.one_of(calls, repeated_calls, repeated_arrays, dicts,
                         st.lists(children, max_size=4).map(lambda c: op_list(*c)),
                         st.lists(children, max_size=4).map(lambda c: op_tuple(*c)))
    return st.recursive(st.one_of(leaves, numpy_values), grow, max_leaves=12)


@st.composite
def hostile_pickles(draw, globals_: list[str]):
    raw = bytearray(pickled(draw(values(globals_))))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    return bytes(raw)


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """A folder for the files; both readers ran once, so that no lazy import counts as a file's memory."""
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "a.pkl").write_bytes(pickled(op_array((2,), op_dtype("f4"), op_bytes(bytes(8)))))
    read_pickle(folder / "a.pkl")
    read_torch_checkpoint(as_pth(folder / "a.pth", pickled(op_list(op_int(1)))))
    return folder


def _check(path, reader):
    outcome, peak = traced_peak(reader, path)
    if isinstance(outcome, Exception):
        assert isinstance(outcome, GnhubError), repr(outcome)
        message = str(outcome)
        assert message.startswith(str(path)) and "\n" not in message, message
        assert "MemoryError" not in message and "allocate" not in message, message
    size = path.stat().st_size
    assert peak <= PER_BYTE * size + SLACK, f"{peak:,} bytes allocated reading a {size:,}-byte file"


FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(data=hostile_pickles(NUMPY + TORCH_OWN + REFUSED))
def test_a_hostile_pkl_parses_or_is_refused_within_its_size(warm, data):
    path = warm / "fuzz.pkl"
    path.write_bytes(data)
    _check(path, read_pickle)


@FUZZ
@given(data=hostile_pickles(NUMPY + REFUSED))
def test_a_hostile_pth_parses_or_is_refused_within_its_size(warm, data):
    _check(as_pth(warm / "fuzz.pth", data), read_torch_checkpoint)


@pytest.mark.xfail(strict=True, reason="torch.load(weights_only=True) calls its own allowed globals (bytearray, "
                   "set, OrderedDict, Counter, _codecs.encode, torch.Tensor) before gnhub's: not bounded yet")
@pytest.mark.parametrize("case", ["bytearray(n)", "encode repeated"])
def test_torch_own_globals_are_not_bounded_yet(warm, case):
    body = {"bytearray(n)": op_call(op_global("builtins.bytearray"), op_int(20_000_000)),
            "encode repeated": op_list(op_memo(0, op_global("_codecs.encode")),
                                       op_memo(1, op_tuple(op_str("x" * 1000), op_str("latin1"))),
                                       *[op_get(0) + op_get(1) + b"R"] * 5000)}[case]
    _check(as_pth(warm / "own.pth", pickled(body)), read_torch_checkpoint)
