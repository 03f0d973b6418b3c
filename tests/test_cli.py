"""The `gnhub` command as a user runs it: real processes, exit codes, files written."""
import json
import os
import pickle
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from gnhub.samples import sample_images

GNHUB = [sys.executable, "-m", "gnhub"]


def run(*args, cwd=None):
    """`gnhub ARGS` through the same entry point, in this process (no start-up cost per call):
    exit status, stdout and stderr as a process would give them, a traceback included."""
    import contextlib
    import io
    import traceback

    from gnhub.cli import main

    out, err, code = io.StringIO(), io.StringIO(), 0
    here = os.getcwd()
    argv = sys.argv
    try:
        sys.argv = ["gnhub", *map(str, args)]
        if cwd:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:  # what a process would print before dying
                traceback.print_exc(file=err)
                code = 1
    finally:
        sys.argv = argv
        os.chdir(here)
    return subprocess.CompletedProcess(sys.argv, code, out.getvalue(), err.getvalue())


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: "), proc.stderr
    for f in fragments:
        assert f in lines[-1], lines[-1]


def test_help_lists_commands():
    proc = run("--help")
    assert proc.returncode == 0
    for cmd in ("convert", "predict", "demo"):
        assert cmd in proc.stdout


def test_every_format_is_offered_where_a_format_is_chosen():
    from gnhub.converters import FORMATS

    from gnhub.cli import cli
    from gnhub.zoo import FORMAT_NAMES

    choices = {c.name: next(p.type.choices for p in c.params if p.name in ("fmt", "format"))
               for c in (cli.commands["convert"], cli.commands["list"])}
    assert set(FORMATS) == set(FORMAT_NAMES) == set(choices["list"]) == set(choices["convert"]) - {"auto"}


@pytest.mark.parametrize("content,fragment", [
    (None, "no such file"),
    ("dir", "is a directory"),
    (b"", "empty"),
    (random.Random(0).randbytes(4096), "not a readable PyTorch checkpoint"),
])
def test_convert_bad_files(tmp_path, content, fragment):
    path = tmp_path if content == "dir" else tmp_path / "x.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    assert_one_line_error(run("convert", path, "-o", tmp_path / "out"), str(path), fragment)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("legacy", [False, True])
def test_hostile_checkpoint_is_refused_and_never_runs(tmp_path, legacy):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "meta": _Payload(marker)}, path, _use_new_zipfile_serialization=not legacy)
    proc = run("convert", path, "-o", tmp_path / "out")
    assert_one_line_error(proc, "refused to unpickle", "system")
    assert not marker.exists()


def test_hostile_bare_pickle_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"state_dict": {}, "meta": _Payload(marker)}))
    assert_one_line_error(run("convert", path, "-o", tmp_path / "out"), str(path))
    assert not marker.exists()


def test_convert_then_predict(small_source, tmp_path):
    proc = run("convert", small_source, "-o", tmp_path / "m", "--json", "--no-verify")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["tensors"] == 223 and summary["depth"] == 50
    assert_one_line_error(run("convert", small_source, "-o", tmp_path / "m", "--no-verify"), "--force")

    images = tmp_path / "imgs"
    images.mkdir()
    for p in sample_images()[2:]:
        (images / p.name).write_bytes(p.read_bytes())
    (images / "broken.png").write_bytes(b"nope")
    proc = run("predict", images, "--model", tmp_path / "m", "--out", tmp_path / "pred")
    assert proc.returncode == 0, proc.stderr
    assert "skipped" in proc.stderr and "broken.png" in proc.stderr
    assert re.search(r"2 images .* 1 skipped", proc.stdout)
    out = tmp_path / "pred"
    assert sorted(p.name for p in out.iterdir()) == [
        ".gnhub-files.jsonl", "results.json", "square.json", "square.png", "tiny.json", "tiny.png"
    ]
    results = json.loads((out / "results.json").read_text())
    per_image = json.loads((out / "square.json").read_text())["detections"]
    assert results and all(set(r) >= {"image_id", "category_id", "bbox", "score", "segmentation"} for r in results)
    assert len(per_image) == sum(r["image_id"] == "square.png" for r in results)


def test_predict_errors(tmp_path):
    assert_one_line_error(run("predict", tmp_path / "nope.jpg", "--model", tmp_path), "no such image")
    assert_one_line_error(run("predict", sample_images()[0], "--model", tmp_path / "m"), "no such model")


def test_readme_main_job_runs(tmp_path):
    """The README's main job: `gnhub demo` end to end, nothing downloaded."""
    proc = run("demo", "--out", tmp_path / "demo")
    assert proc.returncode == 0, proc.stderr
    assert "UNTRAINED" in proc.stdout
    pngs = sorted(p.name for p in (tmp_path / "demo" / "predictions").glob("*.png"))
    assert pngs == sorted(p.name for p in sample_images())


def test_readme_commands_match_ci():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = re.search(r"\*\*Run the tests\*\*.*?```bash\n(.+?)\n```", readme, re.S).group(1)
    main_cmd = re.search(r"\*\*Run the main job\*\*.*?```bash\n(.+?)\n```", readme, re.S).group(1)
    assert test_cmd in ci.splitlines()
    assert main_cmd.endswith("gnhub demo")
    assert Path(ROOT / ".ci" / "run").stat().st_mode & 0o111


def test_wheel_ships_templates_images_and_converters(tmp_path):
    """Cards must render from an installed wheel, not only from a checkout."""
    import zipfile

    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = zipfile.ZipFile(next(tmp_path.glob("gnhub-*.whl"))).namelist()
    for member in ("gnhub/model_cards/model_card.md.j2", "gnhub/data/images/tiny.png",
                   "gnhub/converters/mmdet.py", "gnhub/reference/mmdet.py", "gnhub/cli.py",
                   "gnhub/frameworks/detectron2/convention.py", "gnhub/frameworks/detectron2/arrays.py"):
        assert member in names, member


# -- one clear line, and what users expect -----------------------------------------------------

@pytest.mark.parametrize("args,fragment", [
    (["verify", "hf-hub:"], "not a hub repository id"),
    (["verify", "hf-hub:../../etc"], "not a hub repository id"),
    (["verify", ""], "no model given"),
    (["predict", "IMAGE", "--model", "MODEL", "--device", "tpu"], "unknown device 'tpu'"),
    (["predict", "IMAGE", "--model", "MODEL", "--device", "cuda:7"], "device 'cuda:7'"),
])
def test_bad_names_and_devices_are_one_line(small_dir, args, fragment):
    args = [str(sample_images()[3]) if a == "IMAGE" else str(small_dir) if a == "MODEL" else a for a in args]
    assert_one_line_error(run(*args), fragment)


def test_library_errors_name_parameters_and_the_command_says_its_flags(small_dir, tmp_path):
    from gnhub.checks import verify_model
    from gnhub.cli import flags
    from gnhub.errors import GnhubError
    from gnhub.predict import predict

    with pytest.raises(GnhubError, match=r"^`score_threshold=5`: expected a score from 0 to 1"):
        predict(small_dir, [str(sample_images()[3])], out=tmp_path / "p", score_threshold=5)
    with pytest.raises(GnhubError, match=r"^`images` and `against` need `source`"):
        verify_model(small_dir, images=[sample_images()[3]])
    assert_one_line_error(run("verify", small_dir, "--image", sample_images()[3]),
                          "--image and --against need --source: golden outputs exist only")
    assert flags("pass `check_hash=False`, `amp=bf16`, `allow_unverified=True` or `warmup_iters`; `gnhub list`") == \
        "pass --no-check-hash, --amp bf16, --allow-unverified or --warmup; `gnhub list`"
    assert flags("`train_images` of `out`", "finetune") == "--images of --out"


def test_load_of_an_empty_name_is_not_the_current_directory():
    import gnhub
    from gnhub.errors import GnhubError

    with pytest.raises(GnhubError, match="no model given"):
        gnhub.load("")


def test_an_unreachable_hub_is_said_once_and_at_once(tmp_path):
    env = {**os.environ, "GNHUB_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path)}
    proc = subprocess.run(GNHUB + ["verify", "mask_rcnn_r50_fpn_gn-all_2x_coco"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert_one_line_error(proc, "the hub cannot be reached", "HF_HUB_OFFLINE=1")
    assert "Retry" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("delay", [0.3, 1.5])
def test_ctrl_c_while_the_command_loads_is_a_clean_exit(small_dir, delay, tmp_path):
    import signal
    import time

    from conftest import sigint_default

    proc = subprocess.Popen(GNHUB + ["predict", str(sample_images()[3]), "--model", str(small_dir), "--out",
                                     str(tmp_path / "x")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_default)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    assert proc.returncode in (130, 1, -signal.SIGINT), err  # -SIGINT: Python's own exit for Ctrl-C


def test_nothing_predicted_is_a_failure_and_ids_are_unique(small_dir, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"nope")
    assert_one_line_error(run("predict", tmp_path / "bad.png", "--model", small_dir, "--out", tmp_path / "p"),
                          "nothing was predicted", "bad.png")
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "x.png").write_bytes(sample_images()[3].read_bytes())
    proc = run("predict", tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", "--model", small_dir,
               "--out", tmp_path / "p")
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "p" / "results.json").read_text())
    assert {r["image_id"] for r in results} == {"x.png", "x_2.png"}
    assert json.loads((tmp_path / "p" / "x_2.json").read_text())["image"] == str(tmp_path / "b" / "x.png")


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["convert", "--help"], ["predict", "--help"], ["list"],
                                  ["info", "mask_rcnn_r50_fpn_gn-all_2x_coco"], ["cache"], ["fetch", "--help"]])
def test_commands_that_run_no_model_import_no_torch(args, tmp_path):
    code = ("import sys\nfrom gnhub.__main__ import run\ntry:\n    run()\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "print('HEAVY', sorted(m for m in ('torch', 'torchvision', 'cv2') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "GNHUB_CACHE": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY []", proc.stdout
