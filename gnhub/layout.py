"""The model directory and the export directory on disk, and nothing else: their file names,
which folders are gnhub's own, and the only readers and writers of config.json and
verification.json (both untrusted input when read); its tensor files (model.safetensors,
golden.safetensors) are gnhub/weights.py's, the torch half of this module. See docs/layout.md. No torch here."""
from __future__ import annotations

import json
import re
from pathlib import Path

from .config import READABLE_VERSIONS, ModelConfig
from .errors import GnhubError
from .files import LEDGER, TMP_PREFIX, check_replaceable, checked_sha256, new_dir
from .report import Report

__all__ = ["CARD_FILE", "check_model_dir", "check_model_output", "CONFIG_FILE", "EXPORT_DIR_FILES", "EXPORT_SUBDIR",
    "GOLDEN_FILE", "is_current", "is_export_dir", "is_model_dir", "MODEL_DIR", "MODEL_DIR_FILES",
    "new_export_dir", "new_model_dir", "ONNX_FILE", "read_config", "read_export", "read_report", "tensor_shapes",
    "VERIFICATION_FILE", "WEIGHTS_FILE", "write_config", "write_report"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VERIFICATION_FILE = "verification.json"
GOLDEN_FILE = "golden.safetensors"
CARD_FILE = "README.md"
ONNX_FILE = "model.onnx"
EXPORT_SUBDIR = "onnx"  # where a published repository keeps the model's ONNX export

# What gnhub writes into a model directory and an export directory; `--force` replaces nothing else.
MODEL_DIR_FILES = {CONFIG_FILE, WEIGHTS_FILE, VERIFICATION_FILE, GOLDEN_FILE, CARD_FILE}
EXPORT_DIR_FILES = {CONFIG_FILE, ONNX_FILE, VERIFICATION_FILE, GOLDEN_FILE}


# -- config.json ----------------------------------------------------------------------------------

def read_config(path: str | Path) -> ModelConfig:
    """config.json (a directory's, or the file itself), every field checked; format_version 1
    (six convention fields) is read as this version (one `convention`)."""
    path = Path(path)
    path = path / CONFIG_FILE if path.is_dir() else path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise GnhubError(f"{path}: not a readable config.json ({e})") from None
    version = data.get("format_version") if isinstance(data, dict) else None
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise GnhubError(f"{path}: format_version {version!r} is not one of {list(READABLE_VERSIONS)}; convert the "
                         "model again with this gnhub version")
    try:
        return ModelConfig.from_dict(data)
    except GnhubError as e:
        raise GnhubError(f"{path}: {e}") from None


def write_config(directory: Path, config: ModelConfig) -> None:
    (Path(directory) / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")


def is_current(directory: Path) -> bool:
    """Whether a directory holds a config.json of a format this gnhub reads (read, not checked)."""
    try:
        data = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    version = data.get("format_version") if isinstance(data, dict) else None
    return version in READABLE_VERSIONS and not isinstance(version, bool)


# -- verification.json ---------------------------------------------------------------------------

def read_report(directory: str | Path, task: str) -> Report | None:
    """A model's or an export's verification.json, checked: None where there is none; one
    clear error where it is not a report, or says it passed without every required check of
    `task` (the model's, or "onnx-export")."""
    path = Path(directory) / VERIFICATION_FILE
    if not path.is_file():
        return None
    try:
        return Report.from_dict(json.loads(path.read_text(encoding="utf-8")), task)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, GnhubError) as e:
        raise GnhubError(f"{path}: {str(e) if isinstance(e, GnhubError) else 'not readable'}; verify the model again "
                         "(gnhub verify MODEL --source SRC)") from None


def write_report(directory: Path, report: Report) -> None:
    (Path(directory) / VERIFICATION_FILE).write_text(json.dumps(report.to_dict(), indent=1) + "\n", encoding="utf-8")


# -- the model directory -------------------------------------------------------------------------

def check_model_dir(path: str | Path, check_hash: bool = True, full_hash: bool = False) -> ModelConfig:
    """The config of a gnhub model directory, with model.safetensors checked against its sha256
    (`full_hash`: read in full, whatever the hash store remembers)."""
    path = Path(path)
    if not path.is_dir():
        raise GnhubError(f"{path}: not a gnhub model directory (expected {CONFIG_FILE} and {WEIGHTS_FILE})")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise GnhubError(f"{path}: {name} is missing; convert the model again")
    config = read_config(path)
    weights = path / WEIGHTS_FILE
    if check_hash and not re.fullmatch(r"[0-9a-f]{64}", config.weights_sha256):
        raise GnhubError(f"{path / CONFIG_FILE}: weights_sha256 is {config.weights_sha256!r}, not a sha256; "
                         "the weights cannot be checked: convert or download the model again")
    if check_hash and checked_sha256(weights, trust_store=not full_hash) != config.weights_sha256:
        raise GnhubError(
            f"{weights}: sha256 does not match config.json's weights_sha256; the file is corrupt "
            "or was changed: download or convert it again"
        )
    return config


def tensor_shapes(model_dir: Path) -> dict[str, list[int]]:
    """Name -> shape of every tensor in a model directory's weights, read off the safetensors
    header alone."""
    # safetensors only where shapes are asked for (`gnhub info`)
    from safetensors import SafetensorError, safe_open

    path = model_dir / WEIGHTS_FILE
    try:
        with safe_open(path, framework="numpy") as f:
            return {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError) as e:
        raise GnhubError(f"{path}: not a readable safetensors file ({str(e).strip()[:100]})") from None


def is_model_dir(path: Path) -> bool:
    """A directory gnhub wrote: a gnhub config.json and only the files gnhub writes."""
    return _written_by_gnhub(path, MODEL_DIR_FILES)


MODEL_DIR = "a gnhub model directory"


def new_model_dir(dest: str | Path, force: bool = False, owned=None):
    """A temporary directory that becomes the model directory `dest` when its block ends well;
    with `force`, an existing `dest` is replaced only where gnhub wrote every file in it (or
    `owned(dest)`, for folders gnhub owns by place: see files.new_dir)."""
    return new_dir(dest, force, MODEL_DIR, owned)


def check_model_output(dest: Path, force: bool) -> None:
    """Before any work: `dest` may become a model directory (see files.check_replaceable)."""
    check_replaceable(Path(dest), force, MODEL_DIR)


# -- the export directory ------------------------------------------------------------------------

def is_export_dir(path: Path) -> bool:
    """A directory `gnhub export` wrote: a gnhub config.json, model.onnx and only export files."""
    return _written_by_gnhub(path, EXPORT_DIR_FILES) and (path / ONNX_FILE).is_file()


def new_export_dir(dest: str | Path, force: bool = False):
    """A temporary directory that becomes the export directory `dest` (see new_model_dir)."""
    return new_dir(dest, force, "a gnhub ONNX export")


def read_export(path: Path) -> tuple[ModelConfig, Report]:
    """An export directory's config and report, with model.onnx checked against the report's sha256."""
    onnx = path / ONNX_FILE
    if not onnx.is_file():
        raise GnhubError(f"{path}: no {ONNX_FILE}; export the model first: gnhub export MODEL --format onnx -o {path}")
    config = read_config(path)
    report = read_report(path, "onnx-export")
    expected = report.extra.get("onnx_sha256") if report else None
    if not isinstance(expected, str):
        raise GnhubError(f"{path / VERIFICATION_FILE}: missing or without onnx_sha256, so {onnx} cannot be checked; "
                         "export the model again")
    if checked_sha256(onnx) != expected:
        raise GnhubError(f"{onnx}: sha256 differs from the export report's (corrupt or modified); export again")
    return config, report


def _written_by_gnhub(path: Path, files: set[str]) -> bool:
    try:
        names = {p.name for p in path.iterdir() if p.name != LEDGER and not p.name.startswith(TMP_PREFIX)}
        data = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    ours = {n for n in files if (path / n).is_file()}
    return isinstance(data, dict) and "format_version" in data and "weights_sha256" in data and names <= ours
