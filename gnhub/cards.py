"""Model cards: README.md rendered from model_cards/ templates, config.json, the zoo and verification.json."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import jinja2

from . import published, zoo
from .config import ModelConfig
from .files import write_file
from .frameworks import NAMES as FRAMEWORK_NAMES
from .frameworks import info
from .layout import CARD_FILE, read_config, read_report
from .report import Report

__all__ = ["PIPELINES", "PROVENANCE_FIELDS", "render_card", "summary", "TAGS", "write_card"]

PROVENANCE_FIELDS = ("source_file", "source_sha256", "source_format", "source_version", "source_layout",
                     "converter", "torch", "date", "preprocess_from")
TAGS = {"instance-segmentation": ["instance-segmentation", "object-detection", "mask-rcnn"],
        "object-detection": ["object-detection", "faster-rcnn"], "image-classification": ["image-classification",
                                                                                         "resnet"]}
PIPELINES = {"instance-segmentation": "image-segmentation", "object-detection": "object-detection",
             "image-classification": "image-classification"}


def render_card(model_dir: str | Path, load_name: str | None = None, export: Report | None = None) -> str:
    """The model card of a model directory, with Hugging Face metadata front matter; `export`
    (the report of its ONNX export, published beside it) adds how to run it with ONNX Runtime."""
    # huggingface_hub (slow to import) only when a card is written
    from huggingface_hub import ModelCardData

    model_dir = Path(model_dir)
    config = read_config(model_dir)
    p = {**dict.fromkeys(PROVENANCE_FIELDS, "unknown"), **config.provenance}  # a model built in Python has none
    ft = p.get("finetune")
    entry = zoo.get(config.name) or (zoo.get(ft["base_model"]) if ft else None)
    published_here = entry is not None and not ft  # a fine-tuned model's figures are its own
    verification = read_report(model_dir, config.task)
    framework = info(p["source_format"]).TITLE if p["source_format"] in FRAMEWORK_NAMES else p["source_format"]
    untrained = "untrained" in config.name
    results = _results(entry, config, framework) if published_here else []
    data = ModelCardData(
        license=entry.license if entry else "apache-2.0",
        library_name="gnhub",
        tags=TAGS[config.task] + ["group-normalization", framework] + (["untrained"] if untrained else []),
        datasets=["imagenet-1k"] if config.task == "image-classification" else ["coco"],
        pipeline_tag=PIPELINES[config.task],
        model_name=config.name if results else None,
        eval_results=results or None,
    )
    keys = ["gn", *(k for k in (entry.citations if entry else ()) if k != "gn")]
    if p["source_format"] in published.CITATIONS:
        keys.append(p["source_format"])
    template = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True).from_string(
        resources.files("gnhub.model_cards").joinpath("model_card.md.j2").read_text(encoding="utf-8"))
    return template.render(
        metadata=data.to_yaml(),
        c=config,
        p=p,
        entry=entry if published_here else None,
        untrained=untrained,
        classifier=config.task == "image-classification",
        masks=config.task == "instance-segmentation",
        summary=summary(config),
        source_family=framework,
        resizer=info(config.convention).RESIZE,
        conventions=info(config.convention).CARD.format(c=config),
        load_name=load_name or (config.name if published_here else str(model_dir)),
        verification=verification.to_dict() if verification else None,
        ft=ft,
        export=export.to_dict() if export else None,
        export_stages=export.summary() if export else [],
        stages=verification.summary() if verification else [],
        citations=[published.CITATIONS[k] for k in keys],
        license=_license(entry, untrained),
    )


def summary(config: ModelConfig) -> str:
    """What the model is, in one sentence."""
    b = config.backbone
    net = b.words
    ws = " and Weight Standardization" if b.weight_std else ""
    if config.task == "image-classification":
        return f"{net} with Group Normalization{ws} in every layer and its ImageNet classifier, " \
               f"{config.num_classes} classes."
    detector = "Mask R-CNN" if config.task == "instance-segmentation" else "Faster R-CNN (boxes, no masks)"
    if config.roi_heads.stages > 1:
        detector = f"Cascade {detector} ({config.roi_heads.stages} stages)"
    if config.panoptic and b.norm == config.fpn.norm == "GN":  # detectron2's Panoptic FPN: 2fc box heads, no norm
        deform = " with deformable convolutions" if any(b.deform_stages) else ""
        return f"Panoptic FPN: a {detector} and a semantic FPN head on a {net}-FPN backbone{deform}; Group " \
               f"Normalization in the backbone, FPN, mask and semantic heads, {config.roi_heads.num_fcs}fc box " \
               f"heads; {config.num_classes} thing classes, {len(config.semantic.classes) - 1} stuff classes."
    if b.norm == config.fpn.norm == "GN":
        return f"{detector} with a {net}-FPN backbone and Group Normalization{ws} in every layer (backbone, FPN " \
               f"and heads), {config.num_classes} classes."
    words = {"GN": f"Group Normalization{ws}", "FrozenBN": "frozen batch normalization", "none": "no normalization"}
    deform = " and deformable convolutions" if any(b.deform_stages) else ""
    return f"{detector} with a {net}-FPN backbone: {words[b.norm]}{deform} in the backbone, " \
           f"{words[config.fpn.norm]} in the FPN, Group Normalization in the heads; {config.num_classes} classes."


def _results(entry: zoo.ZooEntry, config: ModelConfig, framework: str) -> list:
    """The published figures as Hugging Face eval results."""
    # huggingface_hub (slow to import) only when a card is written
    from huggingface_hub import EvalResult

    if config.task == "image-classification":
        if entry.top1_error is None:
            return []
        return [EvalResult(task_type="image-classification", metric_type="accuracy", metric_name="top-1 accuracy",
                           metric_value=round(100 - entry.top1_error, 1), dataset_type="imagenet-1k",
                           dataset_name="ImageNet-1k", dataset_split="validation", source_name=framework,
                           source_url=entry.results_source)]
    common = {"dataset_type": "coco", "dataset_name": "COCO 2017", "dataset_split": "validation",
              "source_name": framework, "source_url": entry.results_source}
    out = []
    if entry.box_ap is not None:
        out.append(EvalResult(task_type="object-detection", metric_type="mAP", metric_name="box AP",
                              metric_value=entry.box_ap, **common))
    if entry.mask_ap is not None and config.task == "instance-segmentation":
        out.append(EvalResult(task_type="image-segmentation", metric_type="mAP", metric_name="mask AP",
                              metric_value=entry.mask_ap, **common))
    return out


def _license(entry: zoo.ZooEntry | None, untrained: bool) -> str:
    if untrained:
        return "apache-2.0 (gnhub's own deterministic random weights)"
    if entry is None:
        return "not registered with gnhub: see where the checkpoint came from"
    return f"{entry.license} (as the source publishes its weights)"


def write_card(model_dir: str | Path, load_name: str | None = None) -> Path:
    path = Path(model_dir) / CARD_FILE
    text = render_card(model_dir, load_name)
    write_file(path, text.encode("utf-8"))
    return path
