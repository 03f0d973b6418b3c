"""detectron2's cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv as a family, on a smaller twin
(ResNeXt-50 32x4d, the same parts): a zoo-layout pickle (FrozenBN backbone with deformable stages,
FPN without norm, three class-agnostic cascade stages of 4conv1fc GN heads, an 8-conv GN mask
head) is recognised, converted and verified against the independent detectron2 reference."""
import json
import pickle
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import REAL_RUNS
from gnhub.converters import RenameTable, detectron2

from gnhub import GNMaskRCNN, load, zoo
from gnhub.compare import images_for
from gnhub.config import ConfigPatch, ModelConfig
from gnhub.convert import convert
from gnhub.source import open_source
from gnhub.verify import verify_against

# small: three stages of 4conv1fc heads cost 0.35 GFLOP per proposal, the 8-conv mask head 0.9 per detection
FAST = ConfigPatch({"preprocess.max_size": (128, 96), "rpn.pre_nms_top_n": 100, "rpn.post_nms_top_n": 20,
                   "roi_heads.detections_per_image": 5})


def cascade_config(depth: int = 50, groups: int = 32, base_width: int = 4) -> ModelConfig:
    """gnhub's config of the X152 cascade model (depth 152, 32x8d), or of a smaller twin."""
    config = ModelConfig()
    b = config.backbone
    b.depth, b.groups, b.base_width, b.norm, b.deform_stages = depth, groups, base_width, "FrozenBN", \
        (False, True, True, True)
    config.fpn.norm = "none"
    detectron2.SETTINGS["d2-cascade"].apply(config)
    config.roi_heads.mask_num_convs = 8
    return config


def d2_names(model) -> dict:
    """gnhub name -> detectron2's, CascadeROIHeads' stage 0 named box_head.0 / box_predictor.0."""
    table = RenameTable(detectron2)
    out = {}
    for k in model.state_dict():
        name = table.to_source(k)
        for head in ("box_head", "box_predictor"):
            if k.startswith("roi_heads.box_head."):
                name = name.replace(f"roi_heads.{head}.", f"roi_heads.{head}.0.", 1)
        out[k] = name
    return out


def d2_arrays(config: ModelConfig, seed: int) -> dict:
    """Deterministic weights by detectron2's names (tests/detweights.py's frozen_bn_arrays)."""
    import detweights

    with torch.device("meta"):
        model = GNMaskRCNN(config)
    names = d2_names(model)
    return detweights.frozen_bn_arrays([(names[k], tuple(v.shape)) for k, v in model.state_dict().items()], seed)


def write_pickle(path, arrays):
    with open(path, "wb") as f:
        pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo"}, f, protocol=4)
    return path


@pytest.fixture(scope="module")
def twin(session_dir):
    folder = session_dir("d2cascade")
    src = write_pickle(folder / "my_cascade.pkl", d2_arrays(cascade_config(), 40))
    convert(src, folder / "m", verify=False)
    return src, load(folder / "m")


def test_the_cascade_pickle_converts_to_what_its_tensors_and_detectron2s_config_say(twin):
    _, model = twin
    c = model.config
    assert (c.backbone.name, c.backbone.norm, c.backbone.deform_stages, c.fpn.norm) == (
        "X-50-32x4d", "FrozenBN", (False, True, True, True), "none")
    r = c.roi_heads
    assert (r.stages, r.class_agnostic, r.num_convs, r.mask_num_convs) == (3, True, 4, 8)
    assert [round(1 / s, 6) for s in r.box_stds] == [10, 10, 5, 5, 20, 20, 10, 10, 30, 30, 15, 15]
    assert c.architecture == "Mask R-CNN, ResNeXt-50 32x4d-FPN, FrozenBN backbone, GN heads"
    from gnhub.cards import summary

    assert summary(c) == ("Cascade Mask R-CNN (3 stages) with a ResNeXt-50 32x4d-FPN backbone: frozen batch "
                          "normalization and deformable convolutions in the backbone, no normalization in the FPN, "
                          "Group Normalization in the heads; 80 classes.")


def test_the_detectron2_reference_verifies_the_cascade_to_the_last_bit(twin):
    src, model = twin
    FAST.apply(model.config)
    with ThreadPoolExecutor(1) as pool:
        source = open_source(src, "auto", True, pool)
    source.settings |= FAST
    report, _ = verify_against(source, model, images_for(None)[:1])
    assert report.passed and {c.stage for c in report.checks} >= {"proposals", "detections", "masks", "fpn.p6"}
    assert max(c.max_abs or 0 for c in report.checks) == 0


def test_x152_matches_a_real_detectron2_run(reference_threads):
    """The real X152 config (scripts/record_d2_cascade_run.py: detectron2's DefaultPredictor at 2
    threads, small test settings) on the run's own weights, under its zoo entry's settings: every
    stage the run recorded, within test_real_runs' tolerances, which cover float32 kernels of another
    CPU (on the recording Xeon every stage was bit-identical; on an AMD EPYC proposals moved 0.003 px)."""
    import detweights
    import references
    from test_real_runs import check_stages

    case = REAL_RUNS / "d2_cascade_mask_rcnn_X_152_gn_dconv_seed50"
    meta = json.loads((case / "meta.json").read_text())
    ref = references.load(case.name)
    arrays = detweights.frozen_bn_arrays(detweights.read_key_list(case / "keys.txt"), meta["seed"])
    assert detweights.weights_digest(arrays) == str(ref["weights_sha256"])
    config = cascade_config(152, 32, 8)
    zoo.MODELS["cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv"].settings.apply(config)
    config.preprocess.max_size = (meta["MAX_SIZE_TEST"], meta["MIN_SIZE_TEST"])
    config.rpn.post_nms_top_n = meta["POST_NMS_TOPK_TEST"]
    config.roi_heads.detections_per_image = meta["DETECTIONS_PER_IMAGE"]
    model = GNMaskRCNN(config)
    names = d2_names(model)
    model.load_state_dict({k: torch.from_numpy(arrays.pop(names[k])) for k in model.state_dict()})
    assert not arrays  # every tensor of detectron2's model, none left over
    rgb = references.image(ref)
    rec = model.inspect(rgb)
    assert references.sha256(model.preprocessor.resize(rgb)[0]) == str(ref["resized_sha256"])
    g, w = check_stages(rec, ref)
    assert len(g) >= meta["DETECTIONS_PER_IMAGE"] - 2
