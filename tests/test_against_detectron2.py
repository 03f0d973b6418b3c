"""`gnhub verify --against detectron2`: detectron2 itself as the reference (runs only where
detectron2 is importable; docs/detectron2_oracle.md builds it), and its one-line refusal elsewhere."""
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_cli import run
from test_d2_cascade import twin  # noqa: F401 - fixture
from test_families import _d2_pickle, d2_weights, small_d2  # noqa: F401 - fixtures

from gnhub.compare import images_for
from gnhub.convert import convert
from gnhub.source import open_source
from gnhub.verify import verify_against

try:
    import detectron2
    from detectron2.modeling import build_model  # noqa: F401
except Exception:  # not installed, or without its dependencies
    detectron2 = None

needs_detectron2 = pytest.mark.skipif(detectron2 is None, reason="detectron2 is not importable")


@pytest.mark.skipif(detectron2 is not None, reason="detectron2 is installed here")
def test_without_detectron2_one_line_says_how_to_get_it(small_dir, small_source):
    proc = run("verify", small_dir, "--source", small_source, "--against", "detectron2")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "--against detectron2 needs detectron2 importable" in proc.stderr and "detectron2_oracle.md" in proc.stderr


# The zoo config with small test settings, as test_families.small_d2 gives gnhub's model.
FAST = """_BASE_: "{base}"
INPUT:
  MIN_SIZE_TEST: 192
  MAX_SIZE_TEST: 320
MODEL:
  RPN:
    PRE_NMS_TOPK_TEST: 300
    POST_NMS_TOPK_TEST: 200
"""


@pytest.fixture(scope="module")
def fast_config(session_dir):
    from gnhub.reference.detectron2_framework import zoo_config

    path = session_dir("d2_cfg") / "fast_gn_r50.yaml"
    path.write_text(FAST.format(base=zoo_config("mask_rcnn_R_50_FPN_3x_gn")))
    return path


def _report(src, model, config, images):
    from gnhub.config import ConfigPatch
    from gnhub.reference.detectron2_framework import Detectron2Framework

    with ThreadPoolExecutor(1) as pool:
        source = open_source(src, "auto", True, pool)
    source.settings |= ConfigPatch({"preprocess.max_size": (320, 192), "rpn.pre_nms_top_n": 300,
                                    "rpn.post_nms_top_n": 200})
    return verify_against(source, model, images, first_failure=True,
                          framework=lambda tensors, settings: Detectron2Framework(tensors, settings, config))[0]


@needs_detectron2
def test_detectron2_itself_agrees_to_the_last_bit(small_d2, d2_weights, fast_config, tmp_path):  # noqa: F811
    src = _d2_pickle(tmp_path / "model_final_dc5d9e.pkl", d2_weights)
    report = _report(src, small_d2, fast_config, images_for(None))
    assert report.passed, report.summary()
    assert {c.stage for c in report.checks} >= {"input", "backbone.c5", "fpn.p6", "rpn.deltas.p6", "proposals",
                                               "roi.cls_logits", "detections", "mask_logits", "masks"}
    assert max(c.max_abs or 0 for c in report.checks) == 0


@needs_detectron2
def test_a_broken_conversion_fails_against_detectron2(small_d2, d2_weights, fast_config, tmp_path):  # noqa: F811
    broken = dict(d2_weights)
    key = "backbone.fpn_output3.norm"
    broken[f"{key}.weight"], broken[f"{key}.bias"] = d2_weights[f"{key}.bias"], d2_weights[f"{key}.weight"]
    src = _d2_pickle(tmp_path / "model_final_dc5d9e.pkl", broken)
    report = _report(src, small_d2, fast_config, images_for(None)[:1])
    assert not report.passed and report.first_failure().stage == "fpn.p3"


@needs_detectron2
def test_the_command_runs_detectron2_from_its_own_zoo_config(d2_weights, tmp_path):  # noqa: F811
    src = _d2_pickle(tmp_path / "model_final_dc5d9e.pkl", d2_weights)
    convert(src, tmp_path / "m", verify=False)
    proc = run("verify", tmp_path / "m", "--source", src, "--against", "detectron2", "--json", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["against"] == (f"detectron2 {detectron2.__version__} (mask_rcnn_R_50_FPN_3x_gn.yaml) on "
                                 "model_final_dc5d9e.pkl")


# The X152 zoo config on test_d2_cascade's ResNeXt-50 32x4d twin, with its FAST settings.
CASCADE = """_BASE_: "{base}"
MODEL:
  RESNETS: {{DEPTH: 50, WIDTH_PER_GROUP: 4}}
  RPN: {{PRE_NMS_TOPK_TEST: 100, POST_NMS_TOPK_TEST: 20}}
INPUT: {{MIN_SIZE_TEST: 96, MAX_SIZE_TEST: 128}}
TEST: {{DETECTIONS_PER_IMAGE: 5}}
"""


@needs_detectron2
def test_detectron2_itself_agrees_on_the_deformable_cascade(twin, session_dir):  # noqa: F811
    from test_d2_cascade import FAST

    from gnhub.reference.detectron2_framework import Detectron2Framework, zoo_config

    config = session_dir("d2_cfg") / "fast_x50_cascade.yaml"
    config.write_text(CASCADE.format(base=zoo_config("cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv")))
    src, model = twin
    FAST.apply(model.config)
    with ThreadPoolExecutor(1) as pool:
        source = open_source(src, "auto", True, pool)
    source.settings |= FAST
    report, _ = verify_against(source, model, images_for(None)[:2], first_failure=True,
                               framework=lambda tensors, settings: Detectron2Framework(tensors, settings, config))
    assert report.passed, report.summary()
    assert {c.stage for c in report.checks} >= {"proposals", "roi.cls_logits", "detections", "masks", "fpn.p6"}
    assert max(c.max_abs or 0 for c in report.checks) == 0
