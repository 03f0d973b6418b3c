"""The local cache of converted zoo models, filled from the zoo's own upstream files.

Layout of GNHUB_CACHE (default ~/.cache/gnhub, or $XDG_CACHE_HOME/gnhub):

    models/NAME/SOURCE_SHA256/   a converted, verified model directory (config.json, weights, ...)
    downloads/NAME/FILE          the upstream file while it downloads (FILE.part) and converts;
                                 kept only with keep_source
    locks/NAME.lock              held while NAME is downloaded and converted
    hashes.json                  sha256 of weights already checked, by path, size, inode and mtime

A model directory counts only if its config's format_version is this gnhub's and its source
sha256 is what the registry expects; anything else is converted again.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.parse
from pathlib import Path

from . import zoo
from .config import FORMAT_VERSION
from .errors import GnhubError
from .layout import CONFIG_FILE, cache_dir, is_model_dir, sha256_file


def source_url(entry: zoo.ZooEntry, mirror: str | None = None) -> str:
    """The entry's upstream URL, its scheme and host replaced by `mirror` / GNHUB_SOURCE_MIRROR."""
    url = entry.url
    mirror = mirror or os.environ.get("GNHUB_SOURCE_MIRROR")
    if not url or not mirror:
        return url
    path = urllib.parse.urlsplit(url)
    return mirror.rstrip("/") + path.path + (f"?{path.query}" if path.query else "")


def cached(entry: zoo.ZooEntry) -> Path | None:
    """The cached model of `entry`, if there is a current one; touches no network."""
    folder = cache_dir() / "models" / entry.name
    if not folder.is_dir():
        return None
    expected = entry.expected_sha256
    for d in sorted(folder.iterdir()):
        if expected and not d.name.startswith(expected):
            continue
        try:
            config = json.loads((d / CONFIG_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(config, dict) and config.get("format_version") == FORMAT_VERSION:
            return d
    return None


def fetch(entry: zoo.ZooEntry, quiet: bool | None = None, keep_source: bool = False, mirror: str | None = None,
          log=None) -> Path:
    """The cached model of `entry`: downloaded from upstream, hash-checked, converted with
    verification and written into the cache first where needed. One process at a time per name
    (a file lock); the others wait, then load the result."""
    from filelock import FileLock, Timeout

    from .download import download, quiet_default

    quiet = quiet_default() if quiet is None else quiet
    log = log or (lambda msg: None if quiet else print(msg, file=sys.stderr))
    url = source_url(entry, mirror)
    if not url:
        raise GnhubError(f"{entry.name}: has no published download; convert a copy of it with `gnhub convert FILE`")
    root = cache_dir()
    try:
        (root / "locks").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GnhubError(f"{root}: cannot write the cache there ({e.strerror}); set GNHUB_CACHE") from None
    lock = FileLock(str(root / "locks" / f"{entry.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"{entry.name}: another process is downloading or converting it; waiting ({lock.lock_file})",
              file=sys.stderr)
        lock.acquire()
    try:
        done = cached(entry)
        if done is not None:
            return done
        src = root / "downloads" / entry.name / entry.file
        sha = sha256_file(src) if src.is_file() else None
        if sha and entry.expected_sha256 and not sha.startswith(entry.expected_sha256):
            src.unlink()  # a kept source that is not the registered file
            sha = None
        if sha is None:
            log(f"{entry.name}: downloading {url}")
            download(url, src, entry.sha256, entry.sha256_prefix, quiet,
                     hint=f"; no network? set GNHUB_SOURCE_MIRROR to a mirror of {urllib.parse.urlsplit(url).netloc}, "
                          "or download the file yourself and run `gnhub convert FILE`")
            sha = sha256_file(src)
        return _convert(entry, src, sha, keep_source, log)
    finally:
        lock.release()


def _convert(entry: zoo.ZooEntry, src: Path, sha: str, keep_source: bool, log) -> Path:
    from .convert import convert

    dest = cache_dir() / "models" / entry.name / sha
    log(f"{entry.name}: converting and verifying (about a minute for R-50 on 2 CPU cores)")
    try:
        convert(src, dest, name=entry.name, force=True, log=log)
    except BaseException:  # a failed or interrupted conversion leaves nothing in the cache
        if not keep_source:
            shutil.rmtree(src.parent, ignore_errors=True)
        raise
    for old in dest.parent.iterdir():  # entries of other sources or older gnhub layouts
        if old != dest and is_model_dir(old):
            shutil.rmtree(old, ignore_errors=True)
    if not keep_source:
        shutil.rmtree(src.parent, ignore_errors=True)
    return dest


def entries() -> list[dict]:
    """What the cache holds: per model, its path and size; per kept download, likewise."""
    root = cache_dir()
    rows = []
    for kind in ("models", "downloads"):
        for d in sorted((root / kind).glob("*")) if (root / kind).is_dir() else []:
            size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
            rows.append({"name": d.name, "kind": kind[:-1], "path": str(d), "bytes": size})
    return rows


def remove(name: str) -> list[str]:
    """Removes NAME's converted models and downloads from the cache; returns what was removed."""
    root = cache_dir()
    gone = []
    for kind in ("models", "downloads"):
        d = root / kind / name
        if d.is_dir() and not d.is_symlink():
            shutil.rmtree(d)
            gone.append(str(d))
    return gone
