"""`gnhub verify --against mmdet`: mmdetection itself as the reference (runs only where mmdetection
and mmcv's compiled ops are installed; see the README)."""
import json

import pytest
from test_cli import run

try:
    import mmdet
    from mmdet.apis import init_detector  # noqa: F401
except Exception:  # not installed, or mmcv without its ops
    pytest.skip("mmdetection with mmcv's compiled ops is not installed", allow_module_level=True)

from conftest import mmdet_checkpoint  # noqa: E402

from gnhub.convert import convert  # noqa: E402

# The packaged config with the fast test settings of conftest.SMALL_MMDET_CONFIG.
FAST = """_base_ = '{base}'
model = dict(test_cfg=dict(
    rpn=dict(nms_pre=300, max_per_img=200, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
    rcnn=dict(score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5), max_per_img=50, mask_thr_binary=0.5)))
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(320, 192), keep_ratio=True),
                 dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
"""


@pytest.fixture(scope="module")
def fast_config(session_dir):
    from gnhub.reference.mmdet_framework import packaged_config

    path = session_dir("mmdet_cfg") / "fast_gn_r50.py"
    path.write_text(FAST.format(base=packaged_config("mask_rcnn_r50_fpn_gn-all_2x_coco")))
    return path


def test_mmdetection_itself_agrees_stage_by_stage(small_source, fast_config, tmp_path):
    convert(small_source, tmp_path / "m")
    proc = run("verify", tmp_path / "m", "--source", small_source, "--against", "mmdet",
               "--framework-config", fast_config, "--json", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["against"].startswith(f"mmdetection {mmdet.__version__}")
    stages = {c["stage"]: c for c in report["checks"]}
    assert {"input", "backbone.c5", "fpn.p2", "rpn.deltas.p6", "proposals", "roi.cls_logits", "detections",
            "mask_logits", "masks"} <= set(stages)


def test_a_broken_conversion_fails_against_mmdetection(small_source, fast_config, tmp_path, reference_state_dict):
    state = dict(reference_state_dict)
    key = "neck.fpn_convs.1.gn.weight"
    state[key], state["neck.fpn_convs.1.gn.bias"] = state["neck.fpn_convs.1.gn.bias"], state[key]
    broken_src = mmdet_checkpoint(tmp_path / "broken.pth", state)
    convert(broken_src, tmp_path / "m", verify=False)
    proc = run("verify", tmp_path / "m", "--source", small_source, "--against", "mmdet",
               "--framework-config", fast_config)
    assert proc.returncode == 1 and "fpn.p3 differs" in proc.stderr, proc.stderr
