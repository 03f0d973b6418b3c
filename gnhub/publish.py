"""Publishing models: what a model directory (and its ONNX export) must hold to be published,
which files go, the card beside them, and the whole zoo from a folder of upstream files.
hub.py moves the files."""
from __future__ import annotations

from pathlib import Path

from .cards import render_card
from .errors import GnhubError
from .hub import check_repo_id, upload
from .layout import (
    CARD_FILE,
    EXPORT_SUBDIR,
    MODEL_DIR_FILES,
    VERIFICATION_FILE,
    check_model_dir,
    is_export_dir,
    read_config,
    read_report,
)
from .report import Report
from .settings import HubSettings

__all__ = ["publish_files", "publish_model", "publish_zoo", "publishable", "publishable_export"]


def publishable(model_dir: Path, allow_unverified: bool) -> Report | None:
    """Checks a model directory before publishing (config valid, weights matching their sha256,
    verification passed unless allowed); returns its verification report, if any."""
    config = check_model_dir(model_dir)
    report = read_report(model_dir, config.task)
    if not allow_unverified and "finetune" not in config.provenance:  # a fine-tuned model has no source
        if report is None:
            raise GnhubError(f"{model_dir}: no {VERIFICATION_FILE}; run `gnhub convert` with verification, "
                             "or pass `allow_unverified=True`")
        if not report.passed:
            raise GnhubError(f"{model_dir}: verification failed; fix the conversion or pass `allow_unverified=True`")
    return report


def publishable_export(export_dir: Path, model_dir: Path, allow_unverified: bool) -> Report:
    """Checks an ONNX export before it is published beside `model_dir`; returns its report."""
    if not is_export_dir(export_dir):
        raise GnhubError(f"{export_dir}: not a `gnhub export` directory (config.json, model.onnx, verification.json)")
    config = read_config(export_dir)
    report = read_report(export_dir, "onnx-export")
    if config.weights_sha256 != check_model_dir(model_dir, check_hash=False).weights_sha256:
        raise GnhubError(f"{export_dir}: was exported from other weights than {model_dir}'s; export {model_dir}")
    if report is None or not (report.passed or allow_unverified):
        raise GnhubError(f"{export_dir}: the export was not verified; export it again verified (`verify=True`), "
                         "or pass `allow_unverified=True`")
    return report


def publish_files(model_dir: Path, export_dir: Path | None = None) -> dict[str, Path]:
    """Repository name -> local file of everything a publication uploads beside the card."""
    files = {f: model_dir / f for f in sorted(MODEL_DIR_FILES - {CARD_FILE}) if (model_dir / f).is_file()}
    if export_dir is not None:
        files.update({f"{EXPORT_SUBDIR}/{p.name}": p for p in sorted(export_dir.iterdir())
                      if p.is_file() and not p.name.startswith(".")})
    return files


def publish_model(model_dir: str | Path, repo_id: str, *, settings: HubSettings | None = None, private: bool = False,
                  revision: str | None = None, create_pr: bool = False, allow_unverified: bool = False,
                  export_dir: str | Path | None = None, name: str | None = None, dry_run: bool = False) -> dict:
    """Checks, cards and uploads a model directory (with its ONNX export in onnx/) in one commit.
    `dry_run` uploads nothing and returns what would go. `name`: the name users load it by."""
    check_repo_id(repo_id)
    model_dir = Path(model_dir)
    report = publishable(model_dir, allow_unverified)
    export_dir = Path(export_dir) if export_dir else None
    export = publishable_export(export_dir, model_dir, allow_unverified) if export_dir else None
    card = render_card(model_dir, name, export=export)
    files = publish_files(model_dir, export_dir)
    if dry_run:
        return {"repo_id": repo_id, "files": [*files, CARD_FILE], "card_characters": len(card),
                "verified": bool(report and report.passed), "changed": None}
    return upload(files, card, repo_id, settings, private, revision, create_pr,
                  f"gnhub: publish {model_dir.name}")


def publish_zoo(folder: str | Path, *, settings: HubSettings | None = None, work_dir: str | Path = "gnhub-zoo",
                check_hash: bool = True, log=lambda msg: None) -> list[tuple[str, str, str]]:
    """Converts, verifies, cards and publishes every zoo model whose upstream file is in `folder`,
    each as ORG/NAME; (name, "published" | "unchanged" | "FAILED", seconds or the error) per model.
    A failing model does not stop the others."""
    # torch (convert) only for the zoo; publishing one model directory loads none
    from .convert import convert
    from .zoo import models

    folder, work_dir = Path(folder), Path(work_dir)
    org = (settings or HubSettings()).resolved().org
    rows = []
    for name, entry in models().items():
        src = folder / entry.file
        if not src.is_file():
            continue
        try:
            out = work_dir / name
            s = convert(src, out, force=True, check_hash=check_hash, log=lambda m, n=name: log(f"{n}: {m}"))
            r = upload(publish_files(out), render_card(out, name), entry.hub_repo(org), settings)
            rows.append((name, "published" if r["changed"] else "unchanged", f"{s['seconds']:.0f} s"))
        except GnhubError as e:
            rows.append((name, "FAILED", str(e)))
    if not rows:
        raise GnhubError(f"{folder}: none of the zoo's source files is there (`gnhub info NAME` shows file names)")
    return rows

