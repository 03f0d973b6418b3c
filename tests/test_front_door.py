"""What a newcomer meets first: list and info, what predict draws and writes, refusals that say
why before any work, eval of an export or a lower precision, and no debris after a kill."""
import json
import signal
import subprocess
import time

from test_cli import GNHUB, assert_one_line_error, run

from gnhub.samples import sample_images


def test_list_has_a_header_and_matches_case_insensitively():
    lines = run("list", "*r101*").stdout.splitlines()
    assert lines[0].split()[:4] == ["name", "backbone", "detector", "format"]
    names = [line.split()[0] for line in lines[1:]]
    assert "e2e_mask_rcnn_R-101-FPN_2x_gn" in names and "mask_rcnn_r101_fpn_gn-all_2x_coco" in names
    assert "R-101-GN" in names and all("101" in n for n in names)


def test_info_suggests_names_and_shows_no_empty_fields(tmp_path):
    assert_one_line_error(run("info", "mask_rcnn_r5_fpn_gn-all_2x_coco"), "no such zoo model",
                          "did you mean mask_rcnn_r50_fpn_gn-all_2x_coco")
    assert_one_line_error(run("info", tmp_path / "mask_rcnn_r50"), "no such file or directory")
    info = json.loads(run("info", "faster_rcnn_r50_fpn_gn_ws-all_1x_coco").stdout)
    assert "" not in info.values() and info["task"] == "object-detection"


def test_score_threshold_decides_what_is_drawn_and_written(small_dir, tmp_path):
    def detections(*threshold):
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        proc = run("predict", sample_images()[0], "-m", small_dir, "-o", out, *threshold)
        assert proc.returncode == 0, proc.stderr
        rows = json.loads((out / "results.json").read_text())
        assert len(json.loads((out / "street.json").read_text())["detections"]) == len(rows)
        assert f" {len(rows)} detections" in proc.stdout
        return sorted((r["score"] for r in rows), reverse=True)

    everything = detections("--score-threshold", "0")
    assert len(detections()) == sum(s >= 0.3 for s in everything)  # the default, as mmdetection's demo draws
    t = (everything[9] + everything[10]) / 2
    assert detections("--score-threshold", str(t)) == everything[:10]


def test_float16_on_the_cpu_is_refused_before_any_work(small_dir, tmp_path):
    assert_one_line_error(run("predict", sample_images()[3], "-m", small_dir, "--dtype", "float16", "-o",
                              tmp_path / "p"), "float16 on the CPU runs about 12x slower", "bfloat16")
    assert not (tmp_path / "p").exists()


def test_export_without_onnx_says_how_to_install_it_at_once(small_dir, tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else find_spec(name, *a))
    start = time.perf_counter()
    assert_one_line_error(run("export", small_dir, "-o", tmp_path / "x"), "ONNX export needs onnx",
                          "pip install 'gnhub[onnx]'")
    assert time.perf_counter() - start < 2 and not (tmp_path / "x").exists()


def test_a_killed_export_leaves_nothing_after_the_next_write_there(small_dir, small_source, tmp_path):
    from gnhub.convert import convert
    from gnhub.files import TMP_PREFIX

    proc = subprocess.Popen(GNHUB + ["export", str(small_dir), "-o", str(tmp_path / "onnx")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(TMP_PREFIX) for p in tmp_path.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1)  # tracing
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    debris = [p.name for p in tmp_path.iterdir()]
    assert debris and all(name.startswith(TMP_PREFIX) for name in debris), debris
    convert(small_source, tmp_path / "other", verify=False)  # any gnhub write in that folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]


def test_eval_scores_a_lower_precision(reference_state_dict, tmp_path):
    from conftest import SMALL_MMDET_CONFIG, mmdet_checkpoint
    from test_eval import _tiny_coco

    from gnhub.convert import convert

    # 20 proposals and 8 detections: where oneDNN has no bfloat16 kernels, torch's own spend most
    # of a forward on the RoI heads
    config = SMALL_MMDET_CONFIG.replace("nms_pre=200, max_per_img=50", "nms_pre=100, max_per_img=20")
    config = config.replace("max_per_img=20, mask", "max_per_img=8, mask")
    model = tmp_path / "few_rois"
    convert(mmdet_checkpoint(tmp_path / "few_rois.pth", reference_state_dict, config), model, verify=False)
    coco = _tiny_coco(tmp_path / "coco")
    results = {}
    for dtype in ("float32", "bfloat16"):
        proc = run("eval", model, "--images", coco / "images", "--annotations", coco / "instances.json",
                   "--results", tmp_path / f"{dtype}.json", "--dtype", dtype)
        assert proc.returncode == 0, proc.stderr
        assert "box " in proc.stdout and "mask " in proc.stdout
        results[dtype] = json.loads((tmp_path / f"{dtype}.json").read_text())
    assert results["float32"] != results["bfloat16"]  # its own detections, scored


def test_a_killed_runs_moved_aside_output_is_removed_never_put_back(tmp_path):
    from gnhub.files import TMP_PREFIX, new_dir

    aside = tmp_path / f"{TMP_PREFIX}abc"  # a killed run's temporary holding the previous output: its lock is free
    (aside / "old" / "x").mkdir(parents=True)
    (aside / "old" / "x" / "config.json").write_text("{}")
    (tmp_path / f"{TMP_PREFIX}half").write_text("half")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("mine")
    (tmp_path / f"{TMP_PREFIX}trap").symlink_to(outside)  # a link is removed, never followed
    with new_dir(tmp_path / "new", force=False, what="output") as tmp:
        (tmp / "f").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "outside"]
    assert (outside / "keep").read_text() == "mine"
