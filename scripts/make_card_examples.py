"""Regenerates model_cards/examples/: one card per source format and task, each rendered by
gnhub from a real conversion (with verification) of a checkpoint in that format that holds
deterministic weights, not the published model, saved under the zoo's file name so that the card
shows the zoo's published results. Each card opens with a note that says so.

Needs the test extras: python scripts/make_card_examples.py
(about 8 minutes on 2 cores).
"""
from __future__ import annotations

import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import detweights as w  # noqa: E402
from conftest import REAL_RUNS, Py2Pickler, detectron_blobs, detectron_pickle  # noqa: E402
from gnhub.converters import RenameTable, mmdet  # noqa: E402

from gnhub import GNMaskRCNN, ModelConfig  # noqa: E402
from gnhub.cards import write_card  # noqa: E402
from gnhub.convert import convert  # noqa: E402
from gnhub.demo import deterministic_weights  # noqa: E402

OUT = ROOT / "model_cards" / "examples"
NOTE = ("\n> **An example, not a published model.** gnhub wrote this card for a conversion of {what}: "
        "deterministic weights in the real format, converted under the zoo's name by "
        "`scripts/make_card_examples.py`. The file name and sha256 below are that file's, not the upstream "
        "file's; the published results are the zoo's.\n")


def _faster_ws(folder: Path) -> Path:
    """A GN+WS Faster R-CNN R-50 as mmdetection 2.x saves one (no config: the zoo's settings)."""
    import torch

    config = ModelConfig(task="object-detection")
    table = RenameTable(mmdet)
    state = OrderedDict((table.to_source(k), v) for k, v in deterministic_weights(GNMaskRCNN(config), 3).items())
    path = folder / "faster_rcnn_r50_fpn_gn_ws-all_1x_coco_20200130-613d9fe2.pth"
    torch.save({"meta": {"mmdet_version": "2.0.0"}, "state_dict": state}, path)
    return path


def sources(folder: Path) -> list[tuple[str, str, Path, str]]:
    """(example file, zoo name, checkpoint, what it is)."""
    e2e = w.make_arrays(detectron_blobs(50, True), seed=1)
    backbone = folder / "R-50-GN.pkl"
    with open(backbone, "wb") as f:
        Py2Pickler(f, protocol=2).dump(w.make_arrays(detectron_blobs(50, False), seed=2))
    return [
        ("mmdetection_mask_rcnn_r50_fpn_gn-all_2x_coco.md", "mask_rcnn_r50_fpn_gn-all_2x_coco",
         w.build_checkpoint(REAL_RUNS / "mmdet_r50_gn_2x_seed0", folder),
         "the team's mmdetection 3.3 reference checkpoint (../shared/fixtures/mmdet_r50_gn_2x_seed0)"),
        ("mmdetection_mask_rcnn_x50_32x4d_fpn_gn_ws-all_2x_coco.md", "mask_rcnn_x50_32x4d_fpn_gn_ws-all_2x_coco",
         w.build_checkpoint(REAL_RUNS / "mmdet_x50_gn_ws_2x_seed30", folder),
         "the team's mmdetection 3.3 GN+WS ResNeXt-50 checkpoint (../shared/fixtures/mmdet_x50_gn_ws_2x_seed30)"),
        ("mmdetection_faster_rcnn_r50_fpn_gn_ws-all_1x_coco.md", "faster_rcnn_r50_fpn_gn_ws-all_1x_coco",
         _faster_ws(folder), "an mmdetection 2.x GN+WS Faster R-CNN checkpoint built by this script"),
        ("detectron2_mask_rcnn_R_50_FPN_3x_gn.md", "mask_rcnn_R_50_FPN_3x_gn",
         w.build_checkpoint(REAL_RUNS / "d2_mask_rcnn_R_50_FPN_3x_gn_seed20", folder),
         "the team's detectron2 model-zoo pickle (../shared/fixtures/d2_mask_rcnn_R_50_FPN_3x_gn_seed20)"),
        ("detectron_e2e_mask_rcnn_R-50-FPN_2x_gn.md", "e2e_mask_rcnn_R-50-FPN_2x_gn",
         detectron_pickle(folder / "e2e_mask_rcnn_R-50-FPN_2x_gn.pkl", e2e, test=None),
         "a Detectron model_final.pkl with Detectron's blob names, built as tests/conftest.py builds them"),
        ("detectron_R-50-GN.md", "R-50-GN", backbone,
         "a Detectron ImageNet R-50-GN.pkl with Detectron's blob names, built as tests/conftest.py builds them"),
    ]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for example, name, src, what in sources(folder):
            out = folder / example.removesuffix(".md")
            summary = convert(src, out, name=name, check_hash=False, log=print)
            assert summary["verified"], example
            front, body = Path(write_card(out)).read_text().split("\n---\n", 1)  # after the metadata
            (OUT / example).write_text(f"{front}\n---\n{NOTE.format(what=what)}{body}")
            print(f"{OUT / example}: {summary['architecture']}")


if __name__ == "__main__":
    main()
