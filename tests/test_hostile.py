"""Hostile and broken inputs: nothing executes, nothing is lost, one clear error."""
import builtins
import functools
import importlib
import io
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PADDLE_TABLE, paddle_bytes, sigint_default
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cli import assert_one_line_error, run

from gnhub.checkpoint import read_pickle, read_torch_checkpoint
from gnhub.config import ModelConfig
from gnhub.convert import convert
from gnhub.errors import GnhubError
from gnhub.layout import write_config
from gnhub.weights import read_model_dir, write_model_dir


class Payload:
    """Unpickling it calls `fn(*args)`; every variant tries to create the marker file."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def payloads(marker: Path):
    touch = f"open({str(marker)!r}, 'w').write('x')"
    return {
        "os.system": Payload(os.system, (f"touch {marker}",)),
        "builtins.exec": Payload(builtins.exec, (touch,)),
        "builtins.eval": Payload(builtins.eval, (touch,)),
        "subprocess.Popen": Payload(subprocess.Popen, (["touch", str(marker)],)),
        "importlib.import_module": Payload(importlib.import_module, ("antigravity",)),
    }


def hostile_files(tmp_path: Path, marker: Path):
    """(name, path) of checkpoints carrying each payload in each place gnhub reads from."""
    weights = OrderedDict([("backbone.conv1.weight", torch.zeros(2, 3, 1, 1))])
    files = []
    for name, p in payloads(marker).items():
        places = {
            "meta": {"meta": {"config": p}, "state_dict": weights},
            "tensor": {"meta": {}, "state_dict": OrderedDict([("backbone.conv1.weight", p)])},
        }
        for where, obj in places.items():
            for proto in (2, 4, 5):
                path = tmp_path / f"{name}_{where}_zip_p{proto}.pth"
                torch.save(obj, path, pickle_protocol=proto)
                files.append((path.name, path))
            path = tmp_path / f"{name}_{where}_legacy.pth"
            torch.save(obj, path, _use_new_zipfile_serialization=False)
            files.append((path.name, path))
        for proto in range(6):  # a Detectron .pkl: Python 2-style blobs dict
            path = tmp_path / f"{name}_blobs_p{proto}.pkl"
            path.write_bytes(pickle.dumps({"blobs": {"conv1_w": np.zeros(3, np.float32), "pred_w": p}},
                                          protocol=proto))
            files.append((path.name, path))
        for proto in (2, 3, 4, 5):  # a detectron2 model-zoo .pkl: in place of a tensor, or its author
            weights = {"backbone.bottom_up.stem.conv1.weight": np.zeros(3, np.float32)}
            for where, obj in (("model", {"model": {**weights, "roi_heads.box_head.fc1.weight": p}}),
                               ("author", {"model": weights, "__author__": p})):
                path = tmp_path / f"{name}_d2_{where}_p{proto}.pkl"
                path.write_bytes(pickle.dumps(obj, protocol=proto))
                files.append((path.name, path))
        for proto in (2, 3, 4):  # a paddle.save state dict (.pdparams): in place of an array, or in its name table
            weights = {"backbone.res2.res2a.branch2a.conv.weight": np.zeros(3, np.float32)}
            for where, obj in (("array", {**weights, "bbox_head.bbox_score.weight": p}),
                               ("table", {**weights, PADDLE_TABLE: {"x": p}})):
                path = tmp_path / f"{name}_paddle_{where}_p{proto}.pdparams"
                path.write_bytes(pickle.dumps(obj, protocol=proto))
                files.append((path.name, path))
    # a .pth zip whose data.pkl alone is replaced by a hostile pickle
    good = tmp_path / "good.pth"
    torch.save({"meta": {}, "state_dict": weights}, good)
    evil = tmp_path / "zip_with_hostile_data_pkl.pth"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(evil, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename.endswith("data.pkl"):
                data = pickle.dumps(Payload(os.system, (f"touch {marker}",)), protocol=2)
            zout.writestr(item, data)
    files.append((evil.name, evil))
    return files


def test_no_hostile_checkpoint_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    files = hostile_files(tmp_path, marker)
    assert len(files) > 90
    for name, path in files:
        with pytest.raises(GnhubError) as e:
            convert(path, tmp_path / "out", verify=False)
        assert str(path) in str(e.value), name
        assert "refused" in str(e.value) and "weights_only=False" not in str(e.value), (name, str(e.value))
        assert not marker.exists(), name
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["convert", "verify", "info"])
def test_every_cli_reading_path_refuses(tmp_path, small_dir_for_cli, command):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"meta": {"x": Payload(os.system, (f"touch {marker}",))}, "state_dict": {}}, path)
    args = {"convert": ["convert", path, "-o", tmp_path / "o"], "info": ["info", path],
            "verify": ["verify", small_dir_for_cli, "--source", path]}[command]
    assert_one_line_error(run(*args), str(path), "refused to unpickle", "posix.system")
    assert not marker.exists()


@pytest.fixture(scope="module")
def small_dir_for_cli(small_source, session_dir):
    out = session_dir("cli") / "m"
    convert(small_source, out, verify=False)
    return out


# -- broken files ---------------------------------------------------------------------------

def _small_checkpoints():
    sd = OrderedDict((f"backbone.layer1.{i}.conv1.weight", torch.randn(4, 4, 1, 1)) for i in range(3))
    out = {}
    for legacy in (False, True):
        buf = io.BytesIO()
        torch.save({"meta": {"mmdet_version": "2.0"}, "state_dict": sd}, buf, _use_new_zipfile_serialization=not legacy)
        out["legacy" if legacy else "zip"] = buf.getvalue()
    out["pkl"] = pickle.dumps({"blobs": {k: v.numpy() for k, v in sd.items()}}, protocol=2)
    out["pdparams"] = paddle_bytes({k: v.numpy() for k, v in sd.items()})
    return out


SMALL = _small_checkpoints()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(sorted(SMALL)), cut=st.floats(0, 1, exclude_max=True))
def test_truncated_checkpoints_give_one_clear_error(tmp_path, kind, cut):
    data = SMALL[kind]
    path = tmp_path / f"t.{kind if kind in ('pkl', 'pdparams') else 'pth'}"
    path.write_bytes(data[: int(cut * len(data))])
    reader = read_pickle if kind in ("pkl", "pdparams") else read_torch_checkpoint
    with pytest.raises(GnhubError, match=str(path)):
        reader(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(sorted(SMALL)), data=st.data())
def test_fuzzed_checkpoints_never_escape_as_other_errors(tmp_path, kind, data):
    raw = bytearray(SMALL[kind])
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path / f"f.{kind if kind in ('pkl', 'pdparams') else 'pth'}"
    path.write_bytes(bytes(raw))
    try:
        (read_pickle if kind in ("pkl", "pdparams") else read_torch_checkpoint)(path)
    except GnhubError:
        pass


def test_giant_size_claims_are_refused_before_allocating(tmp_path):
    path = tmp_path / "giant.pkl"
    path.write_bytes(b"\x80\x04\x8e" + (10**15).to_bytes(8, "little") + b"xx")
    with pytest.raises(GnhubError, match="claims 1000000000000000 bytes where only 2 remain"):
        read_pickle(path)


def _timed(fn, *args):
    start = time.perf_counter()
    try:
        fn(*args)
    finally:
        assert time.perf_counter() - start < 10  # bounded work: refused in seconds, not minutes


def test_shared_references_nested_in_shared_references_are_refused(tmp_path):
    x = [0.0]
    for _ in range(8):
        x = [x] * 30  # 2.4 kB on disk, 30**8 objects to every walk over it
    for legacy in (False, True):
        path = tmp_path / f"memo{legacy}.pth"
        torch.save({"meta": {"x": x}, "state_dict": {"backbone.conv1.weight": torch.zeros(1)}}, path,
                   _use_new_zipfile_serialization=not legacy)
        assert path.stat().st_size < 10_000
        with pytest.raises(GnhubError, match="expands to more than 1,000,000 objects"):
            _timed(read_torch_checkpoint, path)
    cycle = []
    cycle.append(cycle)
    path = tmp_path / "cycle.pkl"
    path.write_bytes(pickle.dumps({"blobs": {"conv1_w": cycle}}, protocol=2))
    with pytest.raises(GnhubError, match="a container in it holds itself"):
        read_pickle(path)
    path = tmp_path / "memo.pkl"
    path.write_bytes(pickle.dumps({"blobs": {"conv1_w": x}}, protocol=2))
    with pytest.raises(GnhubError, match="expands to more than"):
        _timed(read_pickle, path)


def test_a_yaml_alias_bomb_in_a_detectron_cfg_is_refused(detweights, tmp_path):
    from conftest import Py2Pickler, detectron_blobs

    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    lines.append("PIXEL_MEANS: [*a8, *a8]")
    blobs = detweights.make_arrays(detectron_blobs(50, True), seed=1)
    path = tmp_path / "bomb.pkl"
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump({"blobs": blobs, "cfg": "\n".join(lines)})
    with pytest.raises(GnhubError, match=f"{path}: refused: its cfg YAML expands to more than 100,000 nodes"):
        _timed(convert, path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_zip_that_inflates_far_beyond_its_size_is_refused(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"meta": {}, "state_dict": {"backbone.conv1.weight": torch.zeros(1)}}, good)
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            zout.writestr(item.filename, zin.read(item))
        zout.writestr("good/data/99", bytes(256 << 20))  # 256 MiB of zeros, 250 kB deflated
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(GnhubError, match=r"refused: its zip entries declare 256 MiB in a 0.\d MiB file"):
        _timed(read_torch_checkpoint, bomb)


def test_plausible_but_odd_checkpoints_are_one_clear_error(detweights, tmp_path):
    from conftest import detectron_blobs, detectron_pickle

    blobs = detweights.make_arrays([b for b in detectron_blobs(50, True) if not b[0].startswith("cls_score")], seed=1)
    path = detectron_pickle(tmp_path / "no_cls_score.pkl", blobs)
    with pytest.raises(GnhubError, match="no box classifier or ImageNet classifier found"):
        convert(path, tmp_path / "out")


def test_random_bytes_and_foreign_zip(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(GnhubError, match="not a readable PyTorch checkpoint"):
        read_torch_checkpoint(junk)
    foreign = tmp_path / "foreign.pth"
    with zipfile.ZipFile(foreign, "w") as z:
        z.writestr("hello.txt", "not a checkpoint")
    with pytest.raises(GnhubError, match="not a readable PyTorch checkpoint"):
        read_torch_checkpoint(foreign)


def test_an_image_passed_as_a_checkpoint_is_named_an_image(tmp_path):
    import cv2

    from gnhub.samples import sample_images

    image = cv2.imread(str(sample_images()[3]))
    for name, encoding, kind in [("photo.jpg", ".jpg", "JPEG"), ("photo.png", ".png", "PNG"),
                                 ("model.pkl", ".png", "PNG")]:
        (tmp_path / name).write_bytes(cv2.imencode(encoding, image)[1].tobytes())
        with pytest.raises(GnhubError, match=r"photo.jpg: is an image \(JPEG\), not a checkpoint; .*gnhub predict"
                           if kind == "JPEG" else rf"{name}: is an image \(PNG\)"):
            convert(tmp_path / name, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _model_dir(tmp_path):
    config = ModelConfig()
    config.backbone.depth = 50
    from gnhub.demo import deterministic_weights
    from gnhub.modeling import GNMaskRCNN

    model = GNMaskRCNN(config)
    return write_model_dir(tmp_path / "m", config, deterministic_weights(model))


@pytest.mark.parametrize("lie", ["offsets", "dtype", "header_length"])
def test_safetensors_whose_header_lies(tmp_path, lie):
    import json
    import struct

    m = _model_dir(tmp_path)
    path = m / "model.safetensors"
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    if lie == "offsets":
        header[name]["data_offsets"][1] += 10**12
    elif lie == "dtype":
        header[name]["dtype"] = "F64"
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    length = 10**15 if lie == "header_length" else len(text)
    path.write_bytes(struct.pack("<Q", length) + text + raw[8 + n:])
    with pytest.raises(GnhubError, match=str(path)):
        read_model_dir(m, check_hash=False)


def test_nan_weights_warn_by_default_and_are_refused_with_strict(small_source, tmp_path):
    obj = torch.load(small_source, weights_only=True)
    obj["state_dict"] = OrderedDict(obj["state_dict"])
    obj["state_dict"]["rpn_head.rpn_conv.bias"] = obj["state_dict"]["rpn_head.rpn_conv.bias"].clone()
    obj["state_dict"]["rpn_head.rpn_conv.bias"][3] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(obj, path)
    messages = []
    summary = convert(path, tmp_path / "out", verify=False, log=messages.append)
    assert summary["nonfinite"] == ["rpn.conv.bias"] and "NaN or Inf" in messages[0]
    with pytest.raises(GnhubError, match="refused because of `strict=True`"):
        convert(path, tmp_path / "out2", verify=False, strict=True)
    assert not (tmp_path / "out2").exists()


def test_r101_weights_under_an_r50_zoo_name(detweights, tmp_path):
    from conftest import REAL_RUNS

    entries = detweights.read_key_list(str(REAL_RUNS / "keys" / "mmdet_mask-rcnn_r101_fpn_gn-all.txt"))
    path = tmp_path / "mask_rcnn_r50_fpn_gn-all_2x_coco_20200206-8eee02a6.pth"
    torch.save({"meta": {}, "state_dict": detweights.make_state_dict(entries, 1)}, path)
    with pytest.raises(GnhubError, match="named like zoo model mask_rcnn_r50_fpn_gn-all_2x_coco .* ResNet-101"):
        convert(path, tmp_path / "out", check_hash=False, verify=False)


# -- nothing lost -----------------------------------------------------------------------------

def _writing(folder: Path) -> bool:
    """A temporary output directory beside the destination has its first file: the write has begun."""
    try:
        return any(p.name.startswith(".gnhub-tmp.") and p.is_dir() and len(list(p.iterdir())) > 1
                   for p in folder.iterdir())
    except OSError:  # removed meanwhile
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupted_conversion_leaves_the_previous_output_intact(reference_checkpoint, tmp_path, sig):
    out = tmp_path / "out"
    convert(reference_checkpoint, out, verify=False)
    previous = (out / "config.json").read_text()
    proc = subprocess.Popen([sys.executable, "-m", "gnhub", "convert", str(reference_checkpoint), "-o", str(out),
                             "--force", "--no-verify"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=sigint_default)
    deadline = time.monotonic() + 60
    while not _writing(tmp_path):
        assert proc.poll() is None and time.monotonic() < deadline, "conversion ended before it could be interrupted"
        time.sleep(0.001)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and b"Traceback" not in err
    assert (out / "config.json").read_text() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial files


def test_full_disk_gives_one_error_and_no_partial_output(reference_checkpoint, tmp_path):
    import resource

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (10 * 2**20, 10 * 2**20))

    proc = subprocess.run([sys.executable, "-m", "gnhub", "convert", str(reference_checkpoint), "-o",
                           str(tmp_path / "out"), "--no-verify"], capture_output=True, text=True,
                          preexec_fn=limit_file_size, timeout=300)
    assert_one_line_error(proc, "writing failed", "nothing was written")
    assert not any(p for p in tmp_path.iterdir())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_safetensors_never_escape_as_other_errors(session_dir, data):
    from gnhub.weights import save_safetensors

    d = session_dir("st")
    path = d / "model.safetensors"
    save_safetensors({"a": torch.arange(12.0).reshape(3, 4), "b": torch.ones(5, dtype=torch.float16)}, path, {})
    raw = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 6))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    raw = raw[: data.draw(st.integers(0, len(raw)))]
    path.write_bytes(bytes(raw))
    write_config(d, ModelConfig())
    try:
        read_model_dir(d, check_hash=False)
    except GnhubError:
        pass


def test_a_zip_storage_shorter_than_its_tensor_is_corrupt(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"meta": {}, "state_dict": {"backbone.conv1.weight": torch.ones(64, 3, 7, 7)}}, good)
    short = tmp_path / "short.pth"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(short, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            zout.writestr(item, data[: len(data) // 2] if item.filename.endswith("data/0") else data)
    with pytest.raises(GnhubError, match="corrupt: .* needs more bytes than its storage"):
        read_torch_checkpoint(short)


def test_refusals_carry_no_torch_advice_or_warnings(tmp_path):
    import warnings

    path = tmp_path / "evil.pth"
    torch.save({"meta": Payload(builtins.eval, ("1",)), "state_dict": {}}, path)
    proc = run("convert", path, "-o", tmp_path / "o")
    assert_one_line_error(proc, "refused to unpickle: GLOBAL", "eval is not allowed")
    assert "add_safe_globals" not in proc.stderr
    for proto in (3, 4, 5):
        path = tmp_path / f"p{proto}.pth"
        torch.save({"meta": {}, "state_dict": {"x": torch.zeros(2)}}, path, pickle_protocol=proto)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            try:
                read_torch_checkpoint(path)
            except GnhubError:
                pass
        assert not seen, [str(w.message) for w in seen]


# -- numpy inside pickles: only what numpy writes, never more data than the file holds ------------
# Hand-assembled pickles (protocol 2, torch.save's own), each small,
# each declaring far more than it holds; every one is read as a .pkl and as a .pth's data.pkl.

def op_global(name: str) -> bytes:
    module, _, attr = name.rpartition(".")
    return b"c" + module.encode() + b"\n" + attr.encode() + b"\n"


def op_int(n: int) -> bytes:
    if -2**31 <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def op_str(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def op_tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def op_list(*items: bytes) -> bytes:
    return b"](" + b"".join(items) + b"e"


def op_call(fn: bytes, *args: bytes) -> bytes:
    return fn + op_tuple(*args) + b"R"


def op_bytes(b: bytes) -> bytes:
    """bytes as protocol 2 writes them: _codecs.encode(text, 'latin1')."""
    return op_call(op_global("_codecs.encode"), op_str(b.decode("latin1")), op_str("latin1"))


def op_memo(i: int, value: bytes) -> bytes:
    """`value`, kept in memo slot `i` too."""
    return value + b"q" + bytes([i])


def op_get(i: int) -> bytes:
    return b"h" + bytes([i])


def op_dtype(spec: str) -> bytes:
    return op_call(op_global("numpy.dtype"), op_str(spec), b"\x89", b"\x88")


RECONSTRUCT = op_global("numpy.core.multiarray._reconstruct")
EMPTY_ARRAY_ARGS = op_tuple(op_global("numpy.ndarray"), op_tuple(op_int(0)), op_bytes(b"b"))


def op_array(shape: tuple, dtype: bytes, data: bytes) -> bytes:
    """An array as numpy pickles one: _reconstruct(ndarray, (0,), b'b'), then its state."""
    state = op_tuple(op_int(1), op_tuple(*map(op_int, shape)), dtype, b"\x89", data)
    return RECONSTRUCT + EMPTY_ARRAY_ARGS + b"R" + state + b"b"


def pickled(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


@functools.cache
def _empty_pth() -> bytes:
    buf = io.BytesIO()
    torch.save({"meta": {}, "state_dict": {}}, buf)
    return buf.getvalue()


def as_pth(path: Path, data_pkl: bytes) -> Path:
    """A zip .pth as torch writes one, whose data.pkl is `data_pkl`."""
    with zipfile.ZipFile(io.BytesIO(_empty_pth())) as zin, zipfile.ZipFile(path, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item, data_pkl if item.filename.endswith("data.pkl") else zin.read(item))
    return path


def traced_peak(fn, *args):
    """(what fn(*args) returned or the exception it raised, the peak of what Python and numpy
    allocated meanwhile)."""
    import tracemalloc

    tracemalloc.start()
    try:
        outcome = fn(*args)
    except Exception as e:  # noqa: BLE001 - returned for the caller to check
        outcome = e
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return outcome, peak


BIG = 20_000_000  # elements: 160 MB of object pointers, were anything to allocate them
_STATE_OF_1000_BYTES = op_tuple(op_int(1), op_tuple(op_int(125)), op_dtype("f8"), b"\x89", op_bytes(bytes(1000)))
NUMPY_BOMBS = {
    "object array by _reconstruct": op_call(RECONSTRUCT, op_global("numpy.ndarray"), op_tuple(op_int(BIG)),
                                            op_bytes(b"O")),
    "int8 array by _reconstruct": op_call(RECONSTRUCT, op_global("numpy.ndarray"), op_tuple(op_int(BIG)),
                                          op_bytes(b"b")),
    "ndarray called": op_call(op_global("numpy.ndarray"), op_tuple(op_int(BIG)), op_str("O")),
    "object dtype in the state": op_array((BIG,), op_dtype("O"), b"]"),
    "object field in a structured dtype": op_array(
        (BIG,), op_dtype("V8") + op_tuple(op_int(3), op_str("|"), b"N", op_tuple(op_str("a")),
                                          b"}" + op_str("a") + op_tuple(op_dtype("O"), op_int(0)) + b"s",
                                          op_int(8), op_int(1), op_int(63)) + b"b", b"]"),
    "shape larger than its data": op_array((BIG,), op_dtype("f8"), op_bytes(bytes(8))),
    "protocol 5 object array": op_call(op_global("numpy.core.numeric._frombuffer"), op_bytes(b""),
                                       op_dtype("O"), op_tuple(op_int(BIG)), op_str("C")),
    # 8 bytes of the file for each copy of 1000 bytes (numpy copies array data up to 1000 bytes)
    "one array's data built 20000 times": op_list(
        op_memo(0, RECONSTRUCT), op_memo(1, EMPTY_ARRAY_ARGS), op_memo(2, _STATE_OF_1000_BYTES),
        *[op_get(0) + op_get(1) + b"R" + op_get(2) + b"b"] * 20000),
    "a scalar's data built 20000 times": op_list(
        op_memo(0, op_global("numpy.core.multiarray.scalar")),
        op_memo(1, op_tuple(op_dtype("V1000"), op_bytes(bytes(1000)))), *[op_get(0) + op_get(1) + b"R"] * 20000),
    "bytes(n)": op_call(op_global("__builtin__.bytes"), op_int(BIG)),
}


@pytest.mark.parametrize("kind", ["pkl", "pth"])
@pytest.mark.parametrize("case", sorted(NUMPY_BOMBS))
def test_numpy_in_a_pickle_is_built_only_as_numpy_writes_it(tmp_path, case, kind):
    """Each was accepted (allocating 19-153 MB from a file of 0.1-160 kB), or, with an object
    dtype, crashed the process in numpy (SIGSEGV); now each is refused before anything is built."""
    path = tmp_path / f"bomb.{kind}"
    if kind == "pkl":
        path.write_bytes(pickled(NUMPY_BOMBS[case]))
    else:
        as_pth(path, pickled(NUMPY_BOMBS[case]))
    error, peak = traced_peak(read_pickle if kind == "pkl" else read_torch_checkpoint, path)
    assert isinstance(error, GnhubError) and str(error).startswith(f"{path}: refused: "), repr(error)
    assert peak < 4 * path.stat().st_size + (1 << 20), f"{peak:,} bytes allocated"


@pytest.mark.parametrize("command", ["info", "convert"])
def test_an_object_array_bomb_is_one_line_at_the_cli(tmp_path, command):
    from gnhub.unpickle import multiarray

    pkl = tmp_path / "bomb.pkl"  # 100 bytes: _reconstruct(ndarray, (BIG,), b'O') at protocol 2
    pkl.write_bytes(pickled(op_call(RECONSTRUCT, op_global("numpy.ndarray"), op_tuple(op_int(BIG)), op_bytes(b"O"))))
    pdparams = tmp_path / "bomb.pdparams"  # the same named as paddle.save's files: read by the same unpickler
    pdparams.write_bytes(pkl.read_bytes())
    pth = tmp_path / "bomb.pth"  # the same through a __reduce__ in meta, as torch.save writes it
    torch.save({"meta": {"x": Payload(multiarray._reconstruct, (np.ndarray, (BIG,), b"O"))}, "state_dict": {}}, pth)
    for path in (pkl, pdparams, pth):
        args = ["info", path] if command == "info" else ["convert", path, "-o", tmp_path / "out"]
        proc, peak = traced_peak(run, *args)
        assert_one_line_error(proc, str(path), "refused: numpy _reconstruct")
        assert peak < 64 << 20, f"{peak:,} bytes allocated"  # the first run imports the CLI
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("protocol", range(6))
def test_numpy_arrays_read_back_in_every_protocol(tmp_path, protocol):
    """Protocols 0-2 write an empty array's data as `bytes()` (__builtin__.bytes), which was
    refused as hostile; Python 3's protocol 2 writes data as bytes first, then as the array (both
    are within the file's size)."""
    arrays = {"empty": np.zeros(0, np.float32), "none": np.zeros((2, 0), np.int64), "three": np.arange(3.0),
              "scalar": np.float32(2.5), "most of the file": np.arange(50_000, dtype=np.float32)}
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"model": arrays}, protocol=protocol))
    got = read_pickle(path)["model"]
    if protocol >= 2:  # torch.save's default and the later ones
        pth = tmp_path / "model.pth"
        torch.save({"meta": arrays, "state_dict": {}}, pth, pickle_protocol=protocol)
        assert read_torch_checkpoint(pth)["meta"].keys() == arrays.keys()
    for k, v in arrays.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape and np.array_equal(got[k], v), k


D2_CONV1 = "backbone.bottom_up.stem.conv1.weight"


@pytest.mark.parametrize("array,says", [
    (np.array(["a", "bc"]), "is a numpy array of dtype <U2, not weights torch can read"),
    (np.array(["2020-01-01"], "datetime64[D]"), "is a numpy array of dtype datetime64[D]"),
    (np.zeros(2, [("a", "<f4"), ("b", "<i4")]), "is a numpy array of dtype [('a', '<f4'), ('b', '<i4')]"),
    (np.zeros(2, np.longdouble), f"is a numpy array of dtype {np.dtype(np.longdouble)}"),
    (np.zeros(2, np.complex64), "holds complex64 values, not floating-point weights"),
    (np.zeros(2, np.int64), "holds int64 values"),
    (np.zeros(2, np.bool_), "holds bool values"),
    (np.zeros(2, np.uint64), "holds uint64 values"),
])
def test_weights_that_are_not_floating_point_are_one_clear_error(tmp_path, array, says):
    """A detectron2 pickle: str, datetime, structured and long double arrays were a traceback in
    torch.from_numpy; complex, integer and bool ones were cast to float32."""
    path = tmp_path / "model_final_odd.pkl"
    model = {D2_CONV1: array, "backbone.bottom_up.stem.conv1.norm.weight": np.ones(2, np.float32)}
    path.write_bytes(pickle.dumps({"model": model, "__author__": "x"}, protocol=2))
    assert_one_line_error(run("convert", path, "-o", tmp_path / "out"), str(path), f"{D2_CONV1} {says}")
    assert_one_line_error(run("info", path), str(path), f"{D2_CONV1} {says}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dtype", [torch.int32, torch.complex64, torch.bool])
def test_mmdet_weights_that_are_not_floating_point_are_refused(tmp_path, dtype):
    path = tmp_path / "odd.pth"
    torch.save({"meta": {}, "state_dict": {"backbone.conv1.weight": torch.zeros(2, 3, 1, 1, dtype=dtype),
                                           "backbone.layer1.0.num_batches_tracked": torch.tensor(1)}}, path)
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(GnhubError, match=f"{path}: backbone.conv1.weight holds {name} values, not floating-point"):
        convert(path, tmp_path / "out", verify=False)
