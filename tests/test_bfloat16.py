"""bfloat16 on the CPU (gnhub/modeling/bfloat16.py): channels_last on prepacked filters, float32
left exactly as it was, and `--dtype auto` (gnhub/precision.py)."""
import copy
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import small_config
from test_cli import run

from gnhub import GNMaskRCNN, load
from gnhub.bfloat16_check import verify_bfloat16
from gnhub.compare import compare, failure_message
from gnhub.demo import deterministic_weights
from gnhub.modeling import bfloat16, with_weights
from gnhub.modeling.transform import load_image
from gnhub.precision import auto_dtype, cpu_bfloat16_units, cpu_flags
from gnhub.samples import sample_images

CL = torch.channels_last
IMAGE = sample_images()[3]  # tiny.png: fast


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_int16_relu_gives_torchs_values():
    x = torch.tensor([-3.5, -0.0, 0.0, 1e-38, -1e-38, 2.0, float("inf"), -float("inf"), 3e38]).bfloat16()
    with torch.no_grad():
        got = bfloat16.relu_(x.clone())
    assert torch.equal(got, torch.relu(x)) and got.dtype == torch.bfloat16
    y = torch.randn(2, 8, 5, 7).bfloat16().contiguous(memory_format=CL)
    with torch.no_grad():
        assert torch.equal(bfloat16.relu_(y.clone()), torch.relu(y))


def test_channels_last_maps_reach_roialign_as_plain_float32_copies():
    x = torch.randn(2, 24, 5, 7).bfloat16().contiguous(memory_format=CL)
    out = bfloat16.nchw_float(x)
    assert out.dtype == torch.float32 and out.is_contiguous() and torch.equal(out, x.float())


packed = pytest.mark.skipif(not bfloat16._onednn_bfloat16(), reason="no oneDNN bfloat16 kernels on this CPU: no "
                            "packed filters")


def few_rois_config():
    """small_config with 20 proposals and 8 detections: torch's own bfloat16 kernels (a CPU without
    oneDNN's) spend 6x longer on 200 RoIs' heads and 100 masks than on the rest."""
    config = small_config()
    config.rpn.pre_nms_top_n, config.rpn.post_nms_top_n = 100, 20
    config.roi_heads.detections_per_image = 8
    return config


@pytest.fixture(scope="module")
def pair():
    """A float32 model and the same weights in bfloat16 (`.to`, as gnhub.load casts them)."""
    model = GNMaskRCNN(few_rois_config())
    model.load_state_dict(deterministic_weights(model))
    return model, copy.deepcopy(model).to(torch.bfloat16)


@packed
def test_bfloat16_runs_channels_last_on_packed_filters_close_to_float32(pair):
    f32, bf = pair
    want, got = f32.inspect(IMAGE), bf.inspect(IMAGE)
    conv = bf.backbone.layer1[0].conv1
    assert conv.weight.is_contiguous(memory_format=CL) and conv in bfloat16._PACKED
    assert got["fpn.p2"].dtype == torch.bfloat16 and got["boxes"].dtype == torch.float32
    # bfloat16 keeps 8 bits: every pyramid level within 10% of float32's largest value (3-5% measured)
    checks = {c.stage: c for c in compare("tiny.png", got, want, "bfloat16")}
    assert all(checks[f"fpn.p{i}"].max_rel < 0.1 for i in range(2, 7)), checks


def test_a_float32_model_keeps_its_nchw_kernels_bit_for_bit(pair):
    f32, _ = pair
    want = f32.predict(IMAGE)
    moved = copy.deepcopy(f32).to(memory_format=CL)  # e.g. a bfloat16 model cast back
    assert _same(moved.predict(IMAGE), want)
    assert moved.backbone.layer1[0].conv1.weight.is_contiguous()
    assert _same(f32.predict(IMAGE), want)  # unchanged by bfloat16 runs in the same process


def test_packed_filters_follow_new_weights(pair):
    f32, bf = pair
    other = {k: v * 1.5 if k.endswith("conv2.weight") else v for k, v in f32.state_dict().items()}
    fresh = copy.deepcopy(f32)
    fresh.load_state_dict(other)
    fresh = fresh.to(torch.bfloat16)
    changed = copy.deepcopy(bf)
    changed.predict(IMAGE)  # filters packed
    changed.load_state_dict(other)  # copied in place: the same tensors, a new version
    assert _same(changed.predict(IMAGE), fresh.predict(IMAGE))


def test_roialign_reads_one_float32_copy_per_level_for_both_heads(pair, monkeypatch):
    f32, bf = pair
    calls = []
    monkeypatch.setattr(bfloat16, "nchw_float", lambda x: calls.append(x.shape) or x.float().contiguous())
    bf.predict(IMAGE)
    assert len(calls) == 4  # P2-P5, once: the box and the mask head share them
    maps = [torch.randn(1, 16, 40 // 2**i, 48 // 2**i).bfloat16().contiguous(memory_format=CL) for i in range(4)]
    rois = torch.tensor([[0, 1.0, 2.0, 30.0, 20.0], [0, 0.0, 0.0, 300.0, 200.0]])
    pool = bf.roi_heads.box_pool
    got = pool(maps, rois)
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=CL)  # as the first conv reads it
    assert torch.equal(got, pool(bfloat16.roi_align_features(maps), rois, torch.bfloat16))
    plain = f32.roi_heads.box_pool([m.float().contiguous() for m in maps], rois)
    assert plain.dtype == torch.float32 and plain.is_contiguous() and torch.equal(plain.bfloat16(), got)


def test_weight_standardised_filters_stay_float32_when_cast():
    config = few_rois_config()
    config.backbone.weight_std = config.fpn.weight_std = True
    model = GNMaskRCNN(config)
    model.load_state_dict(deterministic_weights(model))
    want = model.inspect(IMAGE)
    cast = copy.deepcopy(model).to(torch.bfloat16)
    assert cast.backbone.conv1.weight.dtype == torch.float32 and cast.dtype == torch.bfloat16
    rounded = with_weights(config, {k: v.bfloat16() for k, v in model.state_dict().items()}, "rounded")
    assert rounded.backbone.conv1.weight.dtype == torch.bfloat16
    err = {}
    for name, m in (("cast", cast), ("rounded", rounded)):
        got = m.inspect(IMAGE)
        err[name] = float((got["backbone.c2"].float() - want["backbone.c2"]).abs().max())
    assert err["cast"] < 0.75 * err["rounded"], err


def test_auto_dtype_follows_the_cpus_bfloat16_units(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile amx_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile amx_bf16\n")
    flags = cpu_flags(info)
    assert cpu_bfloat16_units(flags) == ["amx_bf16", "avx512_bf16"]
    assert auto_dtype("cpu", flags) == "bfloat16"
    assert auto_dtype("cpu", {"avx512f", "avx512_bf16"}) == "float32"  # bfloat16 ran 1.37x float32's time there
    assert auto_dtype("cpu", cpu_flags(tmp_path / "absent")) == "float32"
    assert auto_dtype("mps", flags) == "float32"


def test_predict_says_which_dtype_auto_ran(small_dir, tmp_path):
    proc = run("predict", IMAGE, "-m", small_dir, "-o", tmp_path / "p", "--dtype", "auto")
    assert proc.returncode == 0, proc.stderr
    assert f"images/s, {auto_dtype('cpu')})" in proc.stdout
    assert load(small_dir, dtype="auto").dtype == getattr(torch, auto_dtype("cpu"))


def test_info_resolves_a_directory_hub_and_imports_no_torch(small_dir, tmp_path):
    hub = tmp_path / "hub"
    shutil.copytree(small_dir, hub / "lab" / "m")
    code = ("import sys\nfrom gnhub.__main__ import run\ntry:\n    run()\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code\nprint('HEAVY', 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, "info", "lab/m", "--hub-dir", str(hub)], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "GNHUB_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY False"
    info = json.loads(proc.stdout[: proc.stdout.rindex("HEAVY")])
    assert info["path"] == str(hub / "lab" / "m") and info["dtype_auto"].startswith(auto_dtype("cpu"))
    zoo = json.loads(run("info", "mask_rcnn_r50_fpn_gn-all_2x_coco", "--hub-dir", hub).stdout)
    assert zoo["hub"] == str(hub / "gnhub" / "mask_rcnn_r50_fpn_gn-all_2x_coco")
    assert run("info", "lab/m").returncode == 1  # no directory hub: not a name gnhub knows


@pytest.fixture(scope="module")
def honest(pair):
    """verify_bfloat16 of the small model on tiny.png: (report, its checks by stage)."""
    f32, bf = pair
    report = verify_bfloat16(f32, [("tiny.png", load_image(IMAGE))], bf, end_to_end=False)
    return report, {c.stage: c for c in report.checks}


def test_bfloat16_arithmetic_passes_every_teacher_forced_stage(honest):
    report, checks = honest
    assert {f"precision.{s}" for s in ("backbone.c4", "fpn.p2", "rpn.objectness.p6", "roi.cls_logits",
                                        "roi.labels", "roi.boxes", "mask_logits", "masks")} <= checks.keys()
    arithmetic = [c for c in report.checks if c.stage != "precision.bfloat16.kernels"]
    assert all(c.passed for c in arithmetic), [c for c in arithmetic if not c.passed]
    # bfloat16 rounds: every dense stage is off, by less than its tolerance 2 * 2^-8 * sqrt(depth)
    assert all(0 < c.max_rel <= 2 * 2**-8 * 20 ** 0.5 for c in arithmetic if "rel rms" in c.tolerance)
    # the fast path's absence is said, never passed over
    kernels = checks.get("precision.bfloat16.kernels")
    assert (kernels is None) == bfloat16._onednn_bfloat16()
    assert report.passed == bfloat16._onednn_bfloat16()


def test_planted_errors_in_the_bfloat16_path_fail_their_own_stages(pair, honest):
    """One output channel of a C3 convolution dropped, the RPN's 3x3 convolution 2% off: the
    stages holding them fail, and only those (each stage runs on float32's own input)."""
    f32, bf = pair
    planted = copy.deepcopy(bf)
    with torch.no_grad():
        planted.backbone.layer2[1].conv3.weight[7] = 0
        planted.rpn.conv.weight.mul_(1.02)
    report = verify_bfloat16(f32, [("tiny.png", load_image(IMAGE))], planted, end_to_end=False)
    failed = {c.stage for c in report.checks if not c.passed} - {"precision.bfloat16.kernels"}
    assert failed == {"precision.backbone.c3"} | {f"precision.rpn.{k}.p{i}" for k in ("objectness", "deltas")
                                                  for i in range(2, 7)}, failed
    checks = {c.stage: c for c in report.checks}
    assert checks["precision.rpn.objectness.p2"].max_rel > 2 * honest[1]["precision.rpn.objectness.p2"].max_rel


def test_without_bfloat16_kernels_the_report_says_not_run(pair, monkeypatch):
    monkeypatch.setattr(bfloat16, "_onednn_bfloat16", lambda: False)
    report = verify_bfloat16(pair[0], [], pair[1])
    (check,) = report.checks
    assert not report.passed and check.detail.startswith("not run")
    assert failure_message(report).startswith("precision.bfloat16.kernels on *: not run")
