"""detectron2's panoptic_fpn_R_101_dconv_cascade_gn_3x: a zoo-layout pickle of a smaller twin (GN
ResNet-50 with deformable stages, GN FPN, three class-agnostic cascade stages of 2fc heads, a 4-conv
GN mask head, the semantic FPN head) converts and verifies against the independent detectron2
reference, semantic labels and panoptic segments included; the real R-101 config is held to a real
detectron2 run (tests/data/real_runs/d2_panoptic_fpn_R_101_dconv_cascade_gn_seed60)."""
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from conftest import REAL_RUNS
from gnhub.converters import RenameTable, detectron2
from test_d2_cascade import FAST, write_pickle

from gnhub import GNMaskRCNN, load, zoo
from gnhub import stages as S
from gnhub.compare import images_for
from gnhub.config import COCO_PANOPTIC_STUFF, ConfigPatch, ModelConfig
from gnhub.convert import convert
from gnhub.errors import GnhubError
from gnhub.source import open_source
from gnhub.verify import verify_against

NAME = "panoptic_fpn_R_101_dconv_cascade_gn_3x"
# small merge limits so that the twin's random weights give thing and stuff segments
MERGE = ConfigPatch({"semantic.stuff_area": 64, "semantic.instance_score_thresh": 0.0})


def panoptic_config(depth: int = 50) -> ModelConfig:
    """gnhub's config of the panoptic model (its zoo conventions), or of a smaller twin."""
    config = ModelConfig()
    config.backbone.depth = depth
    config.semantic.classes = COCO_PANOPTIC_STUFF
    detectron2.SETTINGS["d2-cascade"].apply(config)
    zoo.MODELS[NAME].settings.apply(config)
    return config


def d2_names(model) -> dict:
    """gnhub name -> detectron2's (CascadeROIHeads' stage 0: box_head.0, box_predictor.0)."""
    table = RenameTable(detectron2)
    names = {k: table.to_source(k) for k in model.state_dict()}
    for k, name in names.items():
        if k.startswith("roi_heads.box_head."):
            for head in ("box_head", "box_predictor"):
                name = name.replace(f"roi_heads.{head}.", f"roi_heads.{head}.0.", 1)
            names[k] = name
    return names


@pytest.fixture(scope="module")
def twin(session_dir):
    import detweights

    folder = session_dir("d2panoptic")
    config = panoptic_config()
    config.roi_heads.fc_channels, config.semantic.channels = 256, 64  # narrower heads than the zoo's 1024 and 128
    with torch.device("meta"):
        model = GNMaskRCNN(config)
    names = d2_names(model)
    arrays = detweights.frozen_bn_arrays([(names[k], tuple(v.shape)) for k, v in model.state_dict().items()], 70)
    src = write_pickle(folder / "my_panoptic.pkl", arrays)
    convert(src, folder / "m", verify=False)
    return src, load(folder / "m")


def test_the_panoptic_pickle_converts_to_what_its_tensors_say(twin):
    _, model = twin
    c = model.config
    assert (c.backbone.name, c.backbone.norm, c.backbone.deform_stages, c.fpn.norm) == (
        "R-50", "GN", (False, True, True, True), "GN")
    r = c.roi_heads
    assert (r.stages, r.class_agnostic, r.num_convs, r.num_fcs, r.mask_num_convs) == (3, True, 0, 2, 4)
    assert c.semantic.classes == COCO_PANOPTIC_STUFF and len(c.semantic.classes) == 54
    assert (c.semantic.channels, c.semantic.norm, c.semantic.common_stride, r.fc_channels) == (64, "GN", 4, 256)
    assert c.architecture == "Panoptic FPN (Mask R-CNN + semantic FPN head), ResNet-50-FPN, GN"
    from gnhub.cards import summary

    assert summary(c) == ("Panoptic FPN: a Cascade Mask R-CNN (3 stages) and a semantic FPN head on a ResNet-50-FPN "
                          "backbone with deformable convolutions; Group Normalization in the backbone, FPN, mask and "
                          "semantic heads, 2fc box heads; 80 thing classes, 53 stuff classes.")


def test_the_detectron2_reference_verifies_semantic_labels_and_segments(twin):
    src, model = twin
    (FAST | MERGE).apply(model.config)
    with ThreadPoolExecutor(1) as pool:
        source = open_source(src, "auto", True, pool)
    source.settings |= FAST | MERGE
    report, _ = verify_against(source, model, images_for(None)[:1])
    stages = {c.stage for c in report.checks}
    assert report.passed and stages >= {"sem_seg.logits", "sem_seg", "panoptic_seg", "detections", "masks"}
    assert max(c.max_abs or 0 for c in report.checks) == 0 and max(c.max_rel or 0 for c in report.checks) == 0
    # things and stuff merged (the predict test below sees both in the same image's segments)


def test_r101_panoptic_is_bit_identical_to_a_real_detectron2_run(reference_threads):
    """The real config (scripts/record_d2_cascade_run.py --case panoptic: DefaultPredictor at 2
    threads, small test settings, lowered merge limits) on the run's own weights: every recorded
    stage, the semantic logits and labels, the panoptic segment map and its segments."""
    import detweights
    import references
    from test_real_runs import check_stages

    case = REAL_RUNS / "d2_panoptic_fpn_R_101_dconv_cascade_gn_seed60"
    meta = json.loads((case / "meta.json").read_text())
    ref = references.load(case.name)
    arrays = detweights.frozen_bn_arrays(detweights.read_key_list(case / "keys.txt"), meta["seed"])
    assert detweights.weights_digest(arrays) == str(ref["weights_sha256"])
    config = panoptic_config(101)
    config.preprocess.max_size = (meta["MAX_SIZE_TEST"], meta["MIN_SIZE_TEST"])
    config.rpn.post_nms_top_n = meta["POST_NMS_TOPK_TEST"]
    config.roi_heads.detections_per_image = meta["DETECTIONS_PER_IMAGE"]
    s = config.semantic
    s.overlap_thresh, s.stuff_area, s.instance_score_thresh = (
        meta["OVERLAP_THRESH"], meta["STUFF_AREA_LIMIT"], meta["INSTANCES_CONFIDENCE_THRESH"])
    model = GNMaskRCNN(config)
    names = d2_names(model)
    model.load_state_dict({k: torch.from_numpy(arrays.pop(names[k])) for k in model.state_dict()})
    assert not arrays  # every tensor of detectron2's model, none left over
    rec = model.inspect(references.image(ref))
    g, w = check_stages(rec, ref)
    assert g == w == list(range(meta["DETECTIONS_PER_IMAGE"]))
    for ours, theirs in (("fpn.p6", "fpn_p6"), ("roi.cls_logits", "roi_cls_score"), ("boxes", "boxes"),
                         ("scores", "scores"), ("mask_logits", "mask_logits_of_label"),
                         ("sem_seg.logits", "sem_seg_logits")):
        got = rec[ours].numpy()
        if theirs not in ref:  # stored compact: its samples
            got, theirs = got.reshape(-1)[ref[f"{theirs}:index"]], f"{theirs}:sample"
        assert np.array_equal(got, ref[theirs]), ours
    assert np.array_equal(rec[S.SEM_SEG].numpy(), ref["sem_seg_labels"])
    assert np.array_equal(rec[S.PANOPTIC].numpy(), ref["panoptic_seg"])
    assert np.array_equal(rec[S.SEGMENTS].numpy(), ref["segments"]) and len(ref["segments"]) == meta["segments"]
    assert set(ref["segments"][:, 1].tolist()) == {0, 1}  # the run merged things and stuff


@pytest.fixture(scope="module")
def predicted(twin, session_dir):
    """The twin with the small merge limits, a sample image and the folder its predict wrote."""
    from gnhub.predict import predict_files
    from gnhub.samples import sample_images

    _, model = twin
    (FAST | MERGE).apply(model.config)
    path = sample_images()[0]
    out = session_dir("d2panoptic_predict") / "out"
    predict_files(model, [path], out)
    return model, path, out


def test_predict_writes_the_panoptic_result(predicted, tmp_path):
    from PIL import Image

    from gnhub.coco import read_instances
    from gnhub.panoptic_format import COCO_STUFF_IDS, COCO_THING_IDS

    model, path, out = predicted
    stem = path.stem
    record = json.loads((out / f"{stem}.json").read_text())["panoptic"]
    assert json.loads((out / "panoptic.json").read_text()) == {"annotations": [record]}
    rgb = np.asarray(Image.open(out / f"{stem}_panoptic.png")).astype(np.int64)
    seg = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    assert record["file_name"] == f"{stem}_panoptic.png"
    info = record["segments_info"]  # the segments of the map, things and stuff (as model.predict's: verified above)
    assert sorted(set(np.unique(seg).tolist()) - {0}) == [s["id"] for s in info] and {s["isthing"] for s in info} == {
        0, 1}
    for s in info:
        assert s["area"] == int((seg == s["id"]).sum()) and s["category_id"] in (
            COCO_THING_IDS if s["isthing"] else COCO_STUFF_IDS)
    assert Image.open(out / f"{stem}.png").size == seg.shape[::-1]
    panoptic = tmp_path / "panoptic_val.json"
    panoptic.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 4, "height": 4}],
                                    "annotations": [{"image_id": 1, "file_name": "a.png", "segments_info": []}],
                                    "categories": [{"id": 1, "name": "person"}]}))
    with pytest.raises(GnhubError, match="COCO panoptic annotation file .* --panoptic-annotations"):
        read_instances(panoptic)


def test_eval_scores_pq_beside_ap_and_resumes_it(predicted, tmp_path):
    """gnhub eval of the twin (saved with the merge settings) on the image whose COCO panoptic
    annotations are what its gnhub predict wrote (PNG and panoptic.json): every segment matches
    itself (PQ, SQ, RQ 1 over the categories it predicts); a resume rescores the same counts
    without the model; other panoptic annotations are another run."""
    from types import SimpleNamespace

    from PIL import Image
    from test_cli import assert_one_line_error, run

    from gnhub.config import COCO_CLASSES
    from gnhub.evaluate import evaluate
    from gnhub.panoptic_format import categories

    model, path, out = predicted
    model.save_pretrained(tmp_path / "m")
    record = {**json.loads((out / "panoptic.json").read_text())["annotations"][0], "image_id": 7}
    w, h = Image.open(path).size
    images = [{"id": 7, "file_name": path.name, "width": w, "height": h}]
    cats = categories(COCO_CLASSES, COCO_PANOPTIC_STUFF)
    (tmp_path / "instances.json").write_text(json.dumps({"images": images, "annotations": [],
                                                         "categories": [c for c in cats if c["isthing"]]}))
    (tmp_path / "panoptic.json").write_text(json.dumps({"images": images, "categories": cats, "annotations": [
        record]}))
    args = ["eval", tmp_path / "m", "--images", path.parent, "--annotations", tmp_path / "instances.json",
            "--panoptic-annotations", tmp_path / "panoptic.json", "--panoptic-images", out, "--results",
            tmp_path / "r.json"]
    proc = run(*args)
    assert proc.returncode == 0, proc.stderr
    printed = proc.stdout
    kinds = {kind: len({s["category_id"] for s in record["segments_info"] if s["isthing"] == isthing})
             for kind, isthing in (("Things", 1), ("Stuff", 0))}
    assert kinds["Things"] and kinds["Stuff"]
    table = printed.splitlines()[-3:]
    assert table == [f"{kind:6s}  1.000  1.000  1.000  {n:10d}  -" for kind, n in
                     (("All", kinds["Things"] + kinds["Stuff"]), *kinds.items())], printed
    assert "box" in printed and "mask" in printed  # AP beside it
    assert run(*args).stdout.splitlines()[-3:] == table  # resumed: the counts kept in r.json.parts/
    record["segments_info"][0]["iscrowd"] = 1  # other annotations
    (tmp_path / "panoptic.json").write_text(json.dumps({"images": images, "categories": cats, "annotations": [
        record]}))
    assert_one_line_error(run(*args), "another evaluation (other panoptic_annotations)")
    assert_one_line_error(run(*args[:6], *args[8:]), "--panoptic-images is the PNG folder of --panoptic-annotations")
    stub = SimpleNamespace(task="instance-segmentation", config=SimpleNamespace(name="plain", classes=COCO_CLASSES))
    with pytest.raises(GnhubError, match="plain: is not a panoptic model"):
        evaluate(stub, images=path.parent, annotations=tmp_path / "instances.json",
                 panoptic_annotations=tmp_path / "panoptic.json", panoptic_images=out)


def test_the_semantic_section_is_checked():
    data = ModelConfig().to_dict()
    assert ModelConfig.from_dict(data).semantic.classes == () and not ModelConfig.from_dict(data).panoptic
    data["semantic"]["classes"] = ["things", "sky"]
    assert ModelConfig.from_dict(data).panoptic
    data["task"] = "object-detection"
    with pytest.raises(GnhubError, match="needs instance masks"):
        ModelConfig.from_dict(data)
    data["task"], data["roi_heads"]["num_fcs"] = "instance-segmentation", 3
    with pytest.raises(GnhubError, match="roi_heads.num_fcs"):
        ModelConfig.from_dict(data)
