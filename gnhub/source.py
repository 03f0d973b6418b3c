"""A source checkpoint, read safely: its format, tensors, settings and (hashed aside) sha256."""
from __future__ import annotations

import re
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import zoo
from .checkpoint import check_input_file, read_pickle, read_torch_checkpoint
from .config import ConfigPatch, check_value
from .converters import FORMATS, Converter, RenameTable
from .errors import GnhubError
from .files import sha256_file

__all__ = ["HASH_IN_NAME", "PICKLE_SUFFIXES", "Source", "check_hash_in_name", "checked_settings", "open_source"]

PICKLE_SUFFIXES = (".pkl", ".pdparams")  # plain pickles of numpy arrays: Detectron's, detectron2's, paddle.save's
HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z]+$")


@dataclass
class Source:
    path: Path
    obj: object
    converter: Converter
    sha256: Future
    layout: str  # the converter's layout_version of the tensor names
    settings: ConfigPatch  # the format's defaults < the zoo entry's < the file's
    preprocess_from: str
    entry: zoo.ZooEntry | None
    check_hash: bool = True
    notes: list[str] = field(default_factory=list)  # warnings on the settings: what was not used, and why
    _name_checked: bool = False

    @property
    def tensors(self) -> dict:
        return self.converter.source_tensors(self.obj)

    def checked_sha256(self) -> str:
        """The file's sha256, checked (once) against the prefix its name carries, if any."""
        sha = self.sha256.result()
        if not self._name_checked:
            check_hash_in_name(self.path, sha, self.check_hash)
            self._name_checked = True
        return sha


def open_source(src: str | Path, fmt: str, check_hash: bool, pool: Executor, sha256: str | None = None,
                name: str | None = None) -> Source:
    """Reads `src` (nothing in it can run code) while `pool` hashes it (unless its `sha256` is
    known: a download checked it); picks its converter and its zoo entry (by `name` where that
    is a zoo name, else by the file's published name) and settles its settings."""
    path = check_input_file(src)
    if sha256 is None:
        sha = pool.submit(sha256_file, path)
    else:
        sha = Future()
        sha.set_result(sha256)
    try:
        obj = read_pickle(path) if path.suffix in PICKLE_SUFFIXES else read_torch_checkpoint(path)
    except GnhubError:
        check_hash_in_name(path, sha.result(), check_hash)  # a corrupt download says so first
        raise
    converter = _pick(fmt, obj, str(path))
    entry = (zoo.get(name) if name else None) or zoo.find_by_file(path.name)
    if entry is not None and entry.source_format != converter.NAME:
        entry = None  # a zoo name given to another format's file: its settings do not apply
    tensors = converter.source_tensors(obj)
    layout = converter.layout_version(tensors.keys())
    check_weights(tensors, converter, layout, str(path))
    defaults = converter.SETTINGS.get(layout, ConfigPatch())
    try:
        file = converter.read_settings(obj)
    except GnhubError as e:  # a converter's refusal of what the file says about itself
        raise GnhubError(f"{path}: {e}") from None
    values, notes = checked_settings(file.values, defaults)
    unused = [f"checkpoint config: could not read {what}" for what in file.ignored] + notes
    notes = [f"{note}; not used (the zoo's or the default value is)" for note in unused]
    given = entry.settings if entry else ConfigPatch()
    settings = defaults | given | values
    if file.origin:
        preprocess_from = file.origin
    elif any(k in values for k in _PREPROCESS):
        preprocess_from = "checkpoint config"
    elif any(k in given for k in _PREPROCESS):
        preprocess_from = f"gnhub zoo ({entry.name})"
    else:
        preprocess_from = converter.DEFAULTS
        if not values and entry is None:
            notes.append(f"neither the file nor a zoo entry (by its name or `name`) states its settings: "
                         f"converted with the {converter.DEFAULTS}")
    return Source(path, obj, converter, sha, layout, settings, preprocess_from, entry, check_hash, notes)


def check_weights(tensors: dict, converter: Converter, layout: str, where: str) -> None:
    """Every tensor a conversion takes (all but the empty and the dropped) holds floating-point
    numbers: integers or complex numbers would be cast silently, anything else fail in a forward."""
    table = RenameTable(converter, layout)
    for key, value in tensors.items():
        if value is None or table.is_dropped(key):
            continue
        if isinstance(value, np.ndarray):  # one torch has no dtype for
            raise GnhubError(f"{where}: {key} is a numpy array of dtype {value.dtype}, not weights torch can read "
                             "(floating point, in this machine's byte order)")
        if not isinstance(value, torch.Tensor):
            raise GnhubError(f"{where}: {key} is a {type(value).__name__}, not a tensor")
        if not value.is_floating_point():
            raise GnhubError(f"{where}: {key} holds {str(value.dtype).removeprefix('torch.')} values, not "
                             "floating-point weights")


_PREPROCESS = ("preprocess.mean", "preprocess.std", "preprocess.channel_order")  # taken together, or not at all


def checked_settings(raw: dict, fallback: ConfigPatch) -> tuple[ConfigPatch, list[str]]:
    """What a file says of its settings (by config path), every value checked against the
    config's bounds: (valid settings, notes on what was left out). An invalid value is replaced
    by the format's own default (`fallback`) where it has one, else left out. The file is untrusted."""
    out, notes = {}, []
    for key, value in raw.items():
        try:
            out[key] = check_value(key, value)
        except GnhubError as e:
            notes.append(f"checkpoint {str(e).removeprefix('config: ')}")
            if key in fallback:
                out[key] = fallback[key]
    if any(k not in out for k in _PREPROCESS if k in raw):
        for k in _PREPROCESS:
            out.pop(k, None)
    return ConfigPatch(out), notes


def check_hash_in_name(path: Path, sha: str, check: bool) -> None:
    m = HASH_IN_NAME.search(path.name)
    if check and m and not sha.startswith(m.group(1)):
        raise GnhubError(
            f"{path}: sha256 {sha[:8]}... does not match the {m.group(1)} in its name; the download "
            "is corrupt or renamed: download it again, or pass `check_hash=False`"
        )


def _pick(fmt: str, obj, where: str) -> Converter:
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
