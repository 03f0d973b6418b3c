"""The zoo: 36 published checkpoints, each row held to its upstream table's own text (copies in
tests/upstream/), names that load, and the filters of `gnhub list`."""
import re
from pathlib import Path

import pytest
import yaml
from test_cli import run

from gnhub import zoo

UPSTREAM = Path(__file__).parent / "upstream"


def test_thirty_seven_models_in_six_families():
    m = zoo.MODELS
    assert len(m) == 37
    counts = {}
    for e in m.values():
        counts[(e.source_format, e.family)] = counts.get((e.source_format, e.family), 0) + 1
    assert counts == {("mmdet", "gn"): 6, ("mmdet", "gn+ws"): 12, ("mmdet", "scratch"): 2, ("detectron", "gn"): 4,
                      ("detectron", "scratch"): 2, ("detectron", "imagenet"): 2, ("detectron2", "gn"): 3,
                      ("detectron2", "scratch"): 2, ("paddle", "gn"): 4}


@pytest.mark.parametrize("metafile", ["gn_ws_metafile.yml", "scratch_metafile.yml"])
def test_mmdetection_metafile_rows(metafile):
    rows = yaml.safe_load((UPSTREAM / metafile).read_text())["Models"]
    for row in rows:
        e = zoo.MODELS[row["Name"]]
        metrics = {k: v for r in row["Results"] for k, v in r["Metrics"].items()}
        assert e.box_ap == metrics["box AP"] and e.mask_ap == metrics.get("mask AP"), e.name
        assert e.epochs == row["Metadata"]["Epochs"] and e.url == row["Weights"], e.name
        assert e.train_memory_gb == row["Metadata"].get("Training Memory (GB)"), e.name
        assert e.inference_ms == next((t["value"] for t in row["Metadata"].get("inference time (ms/im)", [])), None)
        assert e.file == row["Weights"].rsplit("/", 1)[1] and e.sha256_prefix == e.file[-12:-4], e.name
        assert e.detector == ("faster-rcnn" if e.mask_ap is None else "mask-rcnn") and e.task != "image-classification"
        assert "x101" not in e.name or e.backbone == "X-101-32x4d"
    assert {e.name for e in zoo.MODELS.values() if e.family in ("gn+ws", "scratch") and e.source_format == "mmdet"} \
        >= {r["Name"] for r in rows}


def test_detectron2_model_zoo_rows():
    text = (UPSTREAM / "detectron2_model_zoo_gn.html").read_text()
    rows = re.findall(r'configs/Misc/(\w+)\.yaml">[^<]*</a></td>\n((?:<td[^>]*>.*</td>\n){8})', text)
    assert len(rows) == 3
    for name, cells in rows:
        sched, train, infer, mem, box, mask, mid, download = re.findall(r"<td[^>]*>(.*)</td>", cells)
        e = zoo.MODELS[name]
        assert e.schedule == f"{sched} (model id {mid})" and e.box_ap == float(box) and e.mask_ap == float(mask)
        assert e.train_s_per_iter == (None if train == "N/A" else float(train)) and e.train_memory_gb == float(mem)
        assert e.inference_ms == pytest.approx(1000 * float(infer))
        assert e.url == re.search(r'href="([^"]*\.pkl)"', download).group(1) and e.license == "apache-2.0"
    assert zoo.MODELS["scratch_mask_rcnn_R_50_FPN_9x_gn"].settings["preprocess.std"] == (57.375, 57.12, 58.395)
    # commented out upstream: detectron2's default, std 1 in BGR
    assert zoo.MODELS["scratch_mask_rcnn_R_50_FPN_3x_gn"].settings["preprocess.std"] == (1.0, 1.0, 1.0)


def test_paddledetection_gn_readme_rows():
    """configs/gn/README.md: every figure and URL of its four rows; the cascade ones with
    CascadeHead's three class-agnostic stages."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in (UPSTREAM / "ppdet_configs_gn_README.md").read_text().splitlines()
            if line.startswith("| ResNet50-FPN")]
    assert len(rows) == 4
    names = set()
    for backbone, kind, per_gpu, sched, fps, box, mask, download, config in rows:
        assert backbone == "ResNet50-FPN"
        name = re.search(r"/configs/gn/(\w+)\.yml\)$", config).group(1)
        e = zoo.MODELS[name]
        names.add(name)
        assert (e.source_format, e.backbone, e.backbone_norm, e.schedule, e.epochs) == ("paddle", "R-50", "FrozenBN",
                                                                                         sched, 24)
        cascade = kind.startswith("Ca")  # "Cascade Faster", "Cacade Mask" (sic)
        assert e.detector == ("mask-rcnn" if kind.endswith("Mask") else "faster-rcnn") and (per_gpu, fps) == ("1", "-")
        assert name.startswith("cascade") == cascade and ("cascade" in e.citations) == cascade
        s = e.settings
        assert [round(1 / x, 6) for x in s.get("roi_heads.box_stds", ())] == (
            [10, 10, 5, 5, 20, 20, 10, 10, 30, 30, 15, 15] if cascade else [])
        assert s.get("roi_heads.class_agnostic", False) == cascade and e.architecture.startswith("Cascade ") == cascade
        assert e.box_ap == float(box) and e.mask_ap == (None if mask == "-" else float(mask))
        assert e.url == re.search(r"\((https://\S+\.pdparams)\)", download).group(1) and e.file == f"{name}.pdparams"
        assert e.results_source.endswith("/configs/gn/README.md")
    assert len(names) == 4 and names == {n for n, e in zoo.MODELS.items() if e.source_format == "paddle"}


def test_detectron2_x152_cascade_row():
    text = (UPSTREAM / "detectron2_model_zoo_gn.html").read_text()
    name, cells = re.search(r'configs/Misc/(cascade\w+)\.yaml">Mask R-CNN X152</a></td>\n((?:<td[^>]*>.*</td>\n){7})',
                            text).groups()
    infer, mem, box, mask, pq, mid, download = re.findall(r"<td[^>]*>(.*)</td>", cells)
    e = zoo.MODELS[name]
    assert (e.inference_ms, e.train_memory_gb, e.box_ap, e.mask_ap, pq) == (1000 * float(infer), float(mem), float(box),
                                                                          float(mask), "")
    assert e.schedule.endswith(f"(model id {mid})") and e.url == re.search(r'href="([^"]*\.pkl)"', download).group(1)
    assert e.backbone == "X-152-32x8d" and e.file == "model_0039999_e76410.pkl" and e.sha256 is None
    s = e.settings
    assert (s["backbone.norm"], s["fpn.norm"], s["roi_heads.class_agnostic"], s["roi_heads.mask_num_convs"]) == (
        "FrozenBN", "none", True, 8)
    assert [round(1 / x, 6) for x in s["roi_heads.box_stds"]] == [10, 10, 5, 5, 20, 20, 10, 10, 30, 30, 15, 15]
    assert "51.9" in text and "45.9" in text and "TTA" not in e.name  # test-time augmentation: not a file


def test_detectron2_panoptic_fpn_row():
    text = (UPSTREAM / "detectron2_model_zoo_gn.html").read_text()
    name, cells = re.search(
        r'configs/Misc/(panoptic\w+)\.yaml">Panoptic FPN R101</a></td>\n((?:<td[^>]*>.*</td>\n){7})', text).groups()
    infer, mem, box, mask, pq, mid, download = re.findall(r"<td[^>]*>(.*)</td>", cells)
    e = zoo.MODELS[name]
    assert (e.inference_ms, e.train_memory_gb, e.box_ap, e.mask_ap, e.pq) == (1000 * float(infer), float(mem),
                                                                            float(box), float(mask), float(pq))
    assert e.schedule == f"3x (model id {mid})" and e.url == re.search(r'href="([^"]*\.pkl)"', download).group(1)
    assert (e.backbone, e.file, e.sha256, e.detector, e.task) == (
        "R-101", "model_final_be35db.pkl", None, "panoptic-fpn", "instance-segmentation")
    s = e.settings
    assert (e.backbone_norm, s.get("fpn.norm", "GN"), s["roi_heads.class_agnostic"], s["roi_heads.num_convs"],
            s["roi_heads.num_fcs"], s["backbone.deform_stages"]) == ("GN", "GN", True, 0, 2, (False, True, True, True))
    assert [round(1 / x, 6) for x in s["roi_heads.box_stds"]] == [10, 10, 5, 5, 20, 20, 10, 10, 30, 30, 15, 15]
    assert e.results_text == "box AP 47.4  mask AP 41.3  PQ 46.1"


def test_mmdetection_gn_readme_rows():
    m = zoo.MODELS
    fps = {n: e.inference_fps for n, e in m.items() if e.source_format == "mmdet" and e.family == "gn"}
    assert fps == {"mask_rcnn_r50_fpn_gn-all_2x_coco": 11.0, "mask_rcnn_r101_fpn_gn-all_2x_coco": 9.0,
                   "mask_rcnn_r50_fpn_gn-all_contrib_2x_coco": 10.9, "mask_rcnn_r50_fpn_gn-all_3x_coco": None,
                   "mask_rcnn_r101_fpn_gn-all_3x_coco": None, "mask_rcnn_r50_fpn_gn-all_contrib_3x_coco": None}
    assert {m[n].train_memory_gb for n in fps if "r101" in n} == {9.9}
    assert {m[n].train_memory_gb for n in fps if "r50" in n} == {7.1}


def test_list_filters_by_family_detector_backbone_and_format():
    out = run("list", "--family", "gn+ws", "--detector", "faster", "--backbone", "X-101-32x4d").stdout.splitlines()
    assert out[0].startswith("name") and [line.split()[0] for line in out[1:]] == [
        "faster_rcnn_x101_32x4d_fpn_gn_ws-all_1x_coco"]
    out = run("list", "--format", "detectron2").stdout.splitlines()[1:]
    assert len(out) == 5 and all("box AP" in line for line in out)
    assert run("list", "--family", "scratch").stdout.count("\n") == 1 + 6  # mmdetection 2, Detectron 2, detectron2 2


def test_every_mmdetection_model_has_its_packaged_config_for_against_mmdet():
    from gnhub.reference.mmdet_framework import PACKAGED

    mmdet_models = {n for n, e in zoo.MODELS.items() if e.source_format == "mmdet"}
    assert set(PACKAGED) == mmdet_models
    for name, path in PACKAGED.items():  # mmdetection 3.x: dashes, its family's folder, the detector first
        family, file = path.split("/")
        assert family == zoo.MODELS[name].family and file.startswith(name[:9].replace("_", "-"))
