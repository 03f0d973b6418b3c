import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from conftest import small_config
from PIL import Image

from gnhub import GNMaskRCNN, load
from gnhub.demo import deterministic_weights
from gnhub.errors import GnhubError
from gnhub.samples import sample_images


@pytest.mark.parametrize("depth,blocks", [(50, (3, 4, 6, 3)), (101, (3, 4, 23, 3))])
def test_stage_shapes_and_dtypes(depth, blocks):
    model = GNMaskRCNN(small_config(depth, num_classes=7))
    model.load_state_dict(deterministic_weights(model))
    assert tuple(len(getattr(model.backbone, f"layer{i}")) for i in range(1, 5)) == blocks
    image = np.asarray(Image.open(sample_images()[0]).convert("RGB"))  # 320x480 -> 192x288
    rec = model.inspect(image)
    assert rec["input"].shape == (1, 3, 192, 288)
    for i, (ch, stride) in enumerate(zip((256, 512, 1024, 2048), (4, 8, 16, 32))):
        assert rec[f"backbone.c{i + 2}"].shape == (1, ch, 192 // stride, 288 // stride)
    for lvl, stride in zip(range(2, 7), (4, 8, 16, 32, 64)):
        h, w = -(-192 // stride), -(-288 // stride)
        assert rec[f"fpn.p{lvl}"].shape == (1, 256, h, w)
        assert rec[f"rpn.objectness.p{lvl}"].shape == (1, 3, h, w)
        assert rec[f"rpn.deltas.p{lvl}"].shape == (1, 12, h, w)
    n = len(rec["proposals"])
    assert 0 < n <= 1000 and rec["proposals"].shape == (n, 4)
    assert torch.all(rec["proposal_scores"][:-1] >= rec["proposal_scores"][1:])
    assert rec["roi.cls_logits"].shape == (n, 8) and rec["roi.box_deltas"].shape == (n, 28)
    d = len(rec["boxes"])
    assert 0 < d <= 100
    assert rec["mask_logits"].shape == (d, 28, 28)
    assert rec["masks"].shape == (d, 320, 480) and rec["masks"].dtype == torch.bool
    assert rec["labels"].dtype == torch.int64 and int(rec["labels"].max()) < 7
    assert all(t.dtype == torch.float32 for k, t in rec.items() if k not in ("labels", "masks"))
    assert float(rec["boxes"][:, 2].max()) <= 480 and float(rec["boxes"][:, 3].max()) <= 320


def test_save_load_round_trip_is_bit_identical(small_model, tmp_path):
    small_model.save_pretrained(tmp_path / "m")
    loaded = load(tmp_path / "m")
    for k, v in small_model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    a, b = small_model.predict(sample_images()[2]), loaded.predict(sample_images()[2])
    assert len(a["boxes"]) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_save_refuses_to_overwrite_without_force(small_model, tmp_path):
    small_model.save_pretrained(tmp_path / "m")
    with pytest.raises(GnhubError, match="--force"):
        small_model.save_pretrained(tmp_path / "m")
    small_model.save_pretrained(tmp_path / "m", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary leftovers


def test_corrupt_weights_are_refused(small_model, tmp_path):
    small_model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(GnhubError, match="sha256"):
        load(tmp_path / "m")


def test_weights_are_hashed_once_per_version_of_the_file(small_model, tmp_path, monkeypatch):
    import os

    import gnhub.files
    from gnhub.layout import check_model_dir

    monkeypatch.setenv("GNHUB_CACHE", str(tmp_path / "cache"))
    small_model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    os.utime(weights, ns=(10**18, 10**18))  # written a while ago
    load(tmp_path / "m")
    real, calls = gnhub.files.sha256_file, []
    monkeypatch.setattr(gnhub.files, "sha256_file", lambda p: calls.append(p) or real(p))
    load(tmp_path / "m")  # unchanged: not read for hashing again
    assert calls == []
    check_model_dir(tmp_path / "m", full_hash=True)  # what `gnhub verify` does: always hashed in full
    assert calls == [weights]
    monkeypatch.undo()
    monkeypatch.setenv("GNHUB_CACHE", str(tmp_path / "cache"))
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(10**18 + 1, 10**18 + 1))
    with pytest.raises(GnhubError, match="sha256"):
        load(tmp_path / "m")


def test_predictions_do_not_depend_on_input_type(small_model):
    path = sample_images()[1]
    pil = Image.open(path)
    arr = np.asarray(pil.convert("RGB"))
    results = [small_model.predict(x) for x in (path, str(path), pil, arr)]
    for other in results[1:]:
        for k in results[0]:
            assert torch.equal(results[0][k], other[k]), k


def test_batch_equals_single_images(small_model):
    paths = [sample_images()[0], sample_images()[3]]  # street.png twice in one batch, tiny.png alone
    singles = [small_model.predict(p) for p in paths]
    batched = small_model.predict(paths + [paths[0]], batch_size=4)
    assert len(batched) == 3
    for s, b in zip(singles + [singles[0]], batched):
        assert torch.equal(s["labels"], b["labels"])
        torch.testing.assert_close(s["boxes"], b["boxes"], rtol=0, atol=1e-3)
        torch.testing.assert_close(s["scores"], b["scores"], rtol=0, atol=1e-5)


def test_image_conversions(small_model):
    rgb = np.asarray(Image.open(sample_images()[3]).convert("RGB"))
    gray = rgb.mean(axis=2).astype(np.uint8)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    assert small_model.predict(gray)["masks"].shape[1:] == gray.shape
    torch.testing.assert_close(small_model.predict(rgba)["boxes"], small_model.predict(rgb)["boxes"])


@pytest.mark.parametrize(
    "bad,match",
    [
        ("/no/such/image.jpg", "no such image file"),
        (np.zeros((10, 10, 3), np.float32), "dtype float32"),
        (np.zeros((10, 10, 2), np.uint8), "shape"),
        ([], "empty list"),
        (42, "got int"),
    ],
)
def test_bad_inputs_give_clear_errors(small_model, bad, match):
    with pytest.raises(GnhubError, match=match):
        small_model.predict(bad)


def test_not_an_image_file(small_model, tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"not an image")
    with pytest.raises(GnhubError, match="not a readable image"):
        small_model.predict(tmp_path / "x.jpg")
    with pytest.raises(GnhubError, match="directory"):
        small_model.predict(tmp_path)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_predict_on_cpu_and_pool_in_float32(dtype, monkeypatch):
    """Box math stays float32, and RoIAlign runs in float32: torchvision has no bfloat16 CPU
    kernel and its float16 one is about 25x slower than float32 (a 1x1 image took over 300 s)."""
    import gnhub.modeling.roi_heads as roi_heads

    seen = []
    real = roi_heads.roi_align
    monkeypatch.setattr(roi_heads, "roi_align", lambda f, *a: seen.append(f.dtype) or real(f, *a))
    config = small_config()
    config.preprocess.max_size = (64, 32)  # CPUs have no fast float16 convolutions: keep it tiny
    config.rpn.pre_nms_top_n, config.rpn.post_nms_top_n = 50, 16
    config.roi_heads.detections_per_image = 3
    model = GNMaskRCNN(config)
    model.load_state_dict(deterministic_weights(model))
    model.to(dtype)
    result = model.predict(sample_images()[3])
    assert len(result["boxes"]) == 3 and result["boxes"].dtype == torch.float32
    assert result["masks"].shape[1:] == (24, 40)
    assert seen and set(seen) == {torch.float32}


def test_16_bit_images_are_read_as_opencv_reads_them(tmp_path):
    import cv2

    from gnhub.modeling.transform import load_image

    gray = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)
    color = np.stack([gray, gray // 2, 65535 - gray], axis=-1)
    for name, data in (("gray16.png", gray), ("color16.png", color)):
        cv2.imwrite(str(tmp_path / name), data)
        ours = load_image(tmp_path / name)
        theirs = cv2.imread(str(tmp_path / name), cv2.IMREAD_COLOR)[:, :, ::-1]
        assert np.array_equal(ours, theirs), name
    assert abs(load_image(tmp_path / "gray16.png").mean() - 127.5) < 1


def test_images_above_the_pixel_limit_are_refused_before_decoding(tmp_path, monkeypatch):
    from gnhub.modeling.transform import load_image

    big = tmp_path / "big.png"
    Image.new("1", (10000, 10000)).save(big)  # 100 megapixels, a tiny file
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Pillow decompression-bomb warning either
        with pytest.raises(GnhubError, match="10000x10000 is 100 megapixels, above gnhub's limit of 50"):
            load_image(big)
    monkeypatch.setenv("GNHUB_MAX_IMAGE_PIXELS", "100")
    with pytest.raises(GnhubError, match="GNHUB_MAX_IMAGE_PIXELS"):
        load_image(np.zeros((20, 20, 3), np.uint8))


def test_inference_needs_torchvisions_kernels_not_its_package(small_model, tmp_path):
    """Predicting loads only torchvision's compiled kernels (the package costs 1.5 s to import);
    the package imported afterwards gives the same bits, and gradients flow through RoIAlign."""
    small_model.save_pretrained(tmp_path / "m")
    code = f"""
import sys, torch
import gnhub
from gnhub.samples import sample_images
torch.set_num_threads(1)
model = gnhub.load({str(tmp_path / "m")!r})
light = model.predict(sample_images()[2])
assert "torchvision" not in sys.modules and "torch._dynamo" not in sys.modules, "package imported"
from gnhub.modeling.ops import roi_align
x = torch.rand(1, 2, 8, 8, requires_grad=True)
roi_align(x, torch.tensor([[0.0, 1, 1, 6, 6]]), 2, 1.0, 0, True).sum().backward()
assert "torchvision" in sys.modules and x.grad.abs().sum() > 0  # the package registers the backward
full = model.predict(sample_images()[2])
assert len(full["boxes"]) > 0 and all(torch.equal(light[k], full[k]) for k in full)
print("OK")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "OK", proc.stderr[-2000:]


def test_roi_align_split_among_threads_is_bit_identical(reference_threads):
    """Inference splits the RoIs among torch's threads: each RoI as torchvision computes it in one call."""
    import torchvision

    from gnhub.modeling.ops import roi_align

    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 8, 40, 60, generator=g)
    xy = torch.rand(101, 2, generator=g) * torch.tensor([220.0, 140.0])
    rois = torch.cat([torch.randint(0, 2, (101, 1), generator=g).float(), xy,
                      xy + torch.rand(101, 2, generator=g) * 60 + 0.5], 1)
    with torch.no_grad():
        split = roi_align(features, rois, 7, 0.25, 0, True)  # two threads, 50 and 51 RoIs
        whole = torchvision.ops.roi_align(features, rois, 7, 0.25, 0, True)
    assert torch.get_num_threads() == 2 and torch.equal(split, whole)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc is tuned on Linux only")
def test_tune_cpu_keeps_freed_memory_for_the_next_forward(small_model, tmp_path):
    """After gnhub.tune_cpu() (the gnhub command calls it), glibc serves a 64 MB block from its heap
    instead of mapping fresh pages; GNHUB_MALLOC=system leaves malloc as it is.
    The outputs are the same bits either way."""
    small_model.save_pretrained(tmp_path / "m")
    code = f"""
import ctypes, hashlib, torch
import gnhub
from gnhub.samples import sample_images

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
torch.set_num_threads(1)
gnhub.tune_cpu()  # the gnhub command's opt-in
out = gnhub.load({str(tmp_path / "m")!r}).predict(sample_images()[1])
mapped = libc.mallinfo2().hblkhd
block = torch.empty(64 << 20, dtype=torch.uint8)
digest = hashlib.sha256(b"".join(out[k].numpy().tobytes() for k in sorted(out))).hexdigest()
print(libc.mallinfo2().hblkhd - mapped, digest)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    results = {}
    for setting in ("gnhub", "system"):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              env={**env, "GNHUB_MALLOC": setting})
        assert proc.returncode == 0, proc.stderr[-2000:]
        mapped, digest = proc.stdout.split()
        results[setting] = int(mapped), digest
    assert results["gnhub"][0] == 0 and results["system"][0] >= 64 << 20
    assert results["gnhub"][1] == results["system"][1]
