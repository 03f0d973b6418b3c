"""Model cards: README.md rendered from model_cards/ templates, config.json, the zoo and verification.json."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import jinja2

from . import zoo
from .files import write_atomic
from .layout import CARD_FILE, read_config, read_report
from .report import Report

PROVENANCE_FIELDS = ("source_file", "source_sha256", "source_format", "source_version", "source_layout",
                     "converter", "torch", "date", "preprocess_from")
SOURCE_FAMILIES = {"mmdet": ("mmdetection", zoo.MMDET_CITATION), "detectron": ("Detectron", zoo.DETECTRON_CITATION)}


def render_card(model_dir: str | Path, load_name: str | None = None, export: Report | None = None) -> str:
    """The model card of a model directory, with Hugging Face metadata front matter; `export`
    (the report of its ONNX export, published beside it) adds how to run it with ONNX Runtime."""
    from huggingface_hub import EvalResult, ModelCardData

    model_dir = Path(model_dir)
    config = read_config(model_dir)
    p = {**dict.fromkeys(PROVENANCE_FIELDS, "unknown"), **config.provenance}  # a model built in Python has none
    entry = zoo.get(config.name)
    verification = read_report(model_dir, config.task)
    family, citation = SOURCE_FAMILIES.get(p.get("source_format"), (p.get("source_format", "source"), None))
    classifier = config.task == "image-classification"
    results = []
    if entry and classifier and entry.top1_error is not None:
        results = [EvalResult(task_type="image-classification", metric_type="accuracy", metric_name="top-1 accuracy",
                              metric_value=round(100 - entry.top1_error, 1), dataset_type="imagenet-1k",
                              dataset_name="ImageNet-1k", dataset_split="validation", source_name=family,
                              source_url=entry.results_source)]
    elif entry and not classifier and entry.box_ap is not None and entry.mask_ap is not None:
        common = {"dataset_type": "coco", "dataset_name": "COCO 2017", "dataset_split": "validation",
                  "source_name": family, "source_url": entry.results_source}
        results = [
            EvalResult(task_type="object-detection", metric_type="mAP", metric_name="box AP",
                       metric_value=entry.box_ap, **common),
            EvalResult(task_type="image-segmentation", metric_type="mAP", metric_name="mask AP",
                       metric_value=entry.mask_ap, **common),
        ]
    untrained = "untrained" in config.name
    data = ModelCardData(
        license=entry.license if entry else "apache-2.0",
        library_name="gnhub",
        tags=(["image-classification", "resnet"] if classifier else ["instance-segmentation", "object-detection",
              "mask-rcnn"]) + ["group-normalization", family] + (["untrained"] if untrained else []),
        datasets=["imagenet-1k"] if classifier else ["coco"],
        pipeline_tag="image-classification" if classifier else "image-segmentation",
        model_name=config.name if results else None,
        eval_results=results or None,
    )
    template = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True).from_string(
        resources.files("gnhub.model_cards").joinpath("model_card.md.j2").read_text(encoding="utf-8"))
    depth = config.backbone.depth
    return template.render(
        metadata=data.to_yaml(),
        c=config,
        p=p,
        entry=entry,
        untrained=untrained,
        classifier=classifier,
        summary=f"ResNet-{depth} with Group Normalization in every layer and its ImageNet classifier, "
        f"{config.num_classes} classes." if classifier else
        f"Mask R-CNN with a ResNet-{depth}-FPN backbone and Group Normalization in every layer "
        f"(backbone, FPN and heads), {config.num_classes} classes.",
        source_family=family,
        load_name=load_name or (config.name if entry else str(model_dir)),
        verification=verification.to_dict() if verification else None,
        ft=p.get("finetune"),
        export=export.to_dict() if export else None,
        export_stages=export.summary() if export else [],
        stages=verification.summary() if verification else [],
        gn_citation=zoo.GN_CITATION,
        source_citation=citation,
        license=(entry.license if entry else "see the source") + " (the source's license)",
    )


def write_card(model_dir: str | Path, load_name: str | None = None) -> Path:
    path = Path(model_dir) / CARD_FILE
    text = render_card(model_dir, load_name)
    write_atomic(path, lambda t: t.write_text(text, encoding="utf-8"))
    return path
