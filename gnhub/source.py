"""A source checkpoint, read safely: its format, tensors, settings and (hashed aside) sha256."""
from __future__ import annotations

import re
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field, fields
from pathlib import Path

from . import zoo
from .checkpoint import check_input_file, read_pickle, read_torch_checkpoint
from .config import PreprocessConfig, check_value
from .converters import FORMATS
from .errors import GnhubError
from .files import sha256_file

HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z]+$")


@dataclass
class Source:
    path: Path
    obj: object
    converter: object  # a module of gnhub.converters
    sha256: Future
    settings: dict  # preprocess fields and rpn.*/roi.* test settings, checked
    preprocess_from: str
    entry: zoo.ZooEntry | None
    notes: list[str] = field(default_factory=list)  # settings of the file that were not used, and why

    @property
    def tensors(self) -> dict:
        return self.converter.source_tensors(self.obj)


def open_source(src: str | Path, fmt: str, check_hash: bool, pool: Executor, sha256: str | None = None) -> Source:
    """Reads `src` (nothing in it can run code) while `pool` hashes it (unless its `sha256` is
    known: a download checked it); picks its converter."""
    path = check_input_file(src)
    if sha256 is None:
        sha = pool.submit(sha256_file, path)
    else:
        sha = Future()
        sha.set_result(sha256)
    try:
        obj = read_pickle(path) if path.suffix == ".pkl" else read_torch_checkpoint(path)
    except GnhubError:
        check_hash_in_name(path, sha.result(), check_hash)  # a corrupt download says so first
        raise
    converter = _pick(fmt, obj, str(path))
    entry = zoo.find_by_file(path.name)
    try:
        settings, notes = checked_settings(converter.meta_settings(obj), getattr(converter, "SETTINGS", {}))
        origin = getattr(converter, "settings_origin", None)
        preprocess_from = origin(obj) if origin is not None else None
    except GnhubError as e:  # a converter's refusal of what the file says about itself
        raise GnhubError(f"{path}: {e}") from None
    if preprocess_from is None and "mean" in settings:
        preprocess_from = "checkpoint config"
    elif preprocess_from is None and entry is not None:
        p = entry.preprocess
        settings.update(channel_order=p.channel_order, mean=p.mean, std=p.std)
        preprocess_from = f"gnhub zoo ({entry.name})"
    elif preprocess_from is None:
        preprocess_from = "gnhub default (Detectron BGR means, std 1)"
    return Source(path, obj, converter, sha, settings, preprocess_from, entry, notes)


_SECTIONS = {"rpn": "rpn", "roi": "roi_heads", "train": "train"}
_PREPROCESS_FIELDS = {f.name for f in fields(PreprocessConfig)}
_PREPROCESS = ("mean", "std", "channel_order")  # taken together, or not at all


def checked_settings(raw: dict, fallback: dict) -> tuple[dict, list[str]]:
    """A converter's reading of a file's settings with every value checked against the config's
    bounds: (valid settings, notes on what was left out). An invalid value is replaced by the
    format's own default (`fallback`) where it has one, else left out. The file is untrusted."""
    raw = dict(raw)
    notes = [f"checkpoint config: could not read {what}" for what in raw.pop("ignored", [])]
    out = {}
    for key, value in raw.items():
        section, _, name = key.rpartition(".")
        path = f"{_SECTIONS[section]}.{name}" if section else f"preprocess.{key}" if key in _PREPROCESS_FIELDS else key
        try:
            out[key] = check_value(path, value)
        except GnhubError as e:
            notes.append(f"checkpoint {str(e).removeprefix('config: ')}")
            if key in fallback:
                out[key] = fallback[key]
    if any(k not in out for k in _PREPROCESS if k in raw):
        for k in _PREPROCESS:
            out.pop(k, None)
    return out, notes


def check_hash_in_name(path: Path, sha: str, check: bool) -> None:
    m = HASH_IN_NAME.search(path.name)
    if check and m and not sha.startswith(m.group(1)):
        raise GnhubError(
            f"{path}: sha256 {sha[:8]}... does not match the {m.group(1)} in its name; the download "
            "is corrupt or renamed: download it again, or pass --no-check-hash"
        )


def _pick(fmt: str, obj, where: str):
    if fmt != "auto":
        if fmt not in FORMATS:
            raise GnhubError(f"unknown format {fmt!r}; choose auto or one of {sorted(FORMATS)}")
        if not FORMATS[fmt].detect(obj):
            raise GnhubError(f"{where}: does not look like a {FORMATS[fmt].DESCRIPTION}")
        return FORMATS[fmt]
    for converter in FORMATS.values():
        if converter.detect(obj):
            return converter
    raise GnhubError(
        f"{where}: not a checkpoint format gnhub knows ({', '.join(c.DESCRIPTION for c in FORMATS.values())})"
    )
