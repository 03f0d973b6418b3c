"""The local cache of converted zoo models, filled from the zoo's own upstream files.

Layout of GNHUB_CACHE (default ~/.cache/gnhub, or $XDG_CACHE_HOME/gnhub):

    models/NAME/SOURCE_SHA256/   a converted, verified model directory (config.json, weights, ...)
    downloads/NAME/FILE          the upstream file while it downloads (FILE.part) and converts;
                                 kept only with keep_source
    locks/NAME.lock              held while NAME is downloaded and converted
    hashes.json                  sha256 of weights already checked, by path, size, inode and mtime

A model directory counts only if this gnhub reads its config's format_version and its source
sha256 is what the registry expects; anything else is converted again.
"""
from __future__ import annotations

import contextlib
import sys
import urllib.parse
from pathlib import Path

from . import zoo
from .download import download
from .errors import GnhubError
from .files import remove_if_empty, remove_inside, sha256_file
from .layout import is_current
from .settings import cache_dir

__all__ = ["cached", "entries", "fetch", "remove", "source_url"]


def source_url(entry: zoo.ZooEntry, mirror: str | None = None) -> str:
    """The entry's upstream URL, its scheme and host replaced by `mirror`."""
    url = entry.url
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
    return next((d for d in sorted(folder.iterdir()) if not d.name.startswith(".")  # temporaries are no entries
                 and (not expected or d.name.startswith(expected)) and is_current(d)), None)


def _lock(name: str):
    """The file lock held while NAME is fetched, converted or removed."""
    # filelock only where the cache changes; `gnhub list` reads it without
    from filelock import FileLock

    root = cache_dir()
    try:
        (root / "locks").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GnhubError(f"{root}: cannot write the cache there ({e.strerror}); set GNHUB_CACHE") from None
    return FileLock(str(_inside(root, "locks", f"{name}.lock")))


def _inside(root: Path, *parts: str) -> Path:
    """root/parts..., which must stay inside root (names from a registry are data)."""
    path = root.joinpath(*parts)
    if not all(zoo.is_file_name(p) for p in parts) or root.resolve() not in path.resolve().parents:
        raise GnhubError(f"{path}: not a path inside gnhub's cache {root}; refused")
    return path


def fetch(entry: zoo.ZooEntry, quiet: bool = True, keep_source: bool = False, mirror: str | None = None,
          log=None) -> Path:
    """The cached model of `entry`: downloaded from upstream, hash-checked, converted with
    verification and written into the cache first where needed. One process at a time per name
    (a file lock); the others wait, then load the result."""
    # filelock only where the cache changes; `gnhub list` reads it without
    from filelock import Timeout

    log = log or (lambda msg: None if quiet else print(msg, file=sys.stderr))
    url = source_url(entry, mirror)
    if not url:
        raise GnhubError(f"{entry.name}: has no published download; convert a copy of it with `gnhub convert FILE`")
    root = cache_dir()
    lock = _lock(entry.name)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"{entry.name}: another process is downloading or converting it; waiting ({lock.lock_file})",
              file=sys.stderr)
        lock.acquire()
    src = _inside(root, "downloads", entry.name, entry.file)
    try:
        done = cached(entry)
        if done is not None:
            return done
        sha = sha256_file(src) if src.is_file() else None
        if sha and entry.expected_sha256 and not sha.startswith(entry.expected_sha256):
            remove_inside(src, root)  # a kept source that is not the registered file
            sha = None
        if sha is None:
            log(f"{entry.name}: downloading {url}")
            sha = download(url, src, entry.sha256, entry.sha256_prefix, quiet,
                           hint=f"; no network? set GNHUB_SOURCE_MIRROR to a mirror of "
                                f"{urllib.parse.urlsplit(entry.url).netloc}, or download the file yourself, run "
                                "`gnhub convert FILE -o DIR` and pass DIR as the model")
        return _convert(entry, src, sha, keep_source, log)
    finally:
        remove_if_empty(src.parent)  # a download folder left empty (a failed or finished fetch) is no entry
        lock.release()


def _convert(entry: zoo.ZooEntry, src: Path, sha: str, keep_source: bool, log) -> Path:
    # torch: listing and removing cached models loads none
    from .convert import convert

    dest = _inside(cache_dir(), "models", entry.name, sha)
    log(f"{entry.name}: converting and verifying (about a minute for R-50 on 2 CPU cores)")
    try:
        convert(src, dest, name=entry.name, force=True, log=log, source_sha256=sha, owned=_entry_dir(entry))
    except BaseException:  # a failed or interrupted conversion leaves nothing in the cache
        if not keep_source:
            _discard(src.parent)
        raise
    for old in dest.parent.iterdir():  # entries of other sources or older gnhub layouts
        if old != dest and not old.name.startswith(".") and _entry_dir(entry)(old):
            _discard(old)
    if not keep_source:
        _discard(src.parent)
    return dest


def _discard(path: Path) -> None:
    with contextlib.suppress(OSError):
        remove_inside(path, cache_dir())


def _entry_dir(entry: zoo.ZooEntry):
    """Whether a path is a cache entry folder of `entry` (models/NAME/SHA): gnhub's to replace,
    whatever it holds (a damaged entry is converted again)."""
    parent = (cache_dir() / "models" / entry.name).resolve()
    return lambda path: path.is_dir() and not path.is_symlink() and path.resolve().parent == parent


def entries() -> list[dict]:
    """What the cache holds: per model, its path and size; per kept download, likewise."""
    root = cache_dir()
    rows = []
    for kind in ("models", "downloads"):
        for d in sorted((root / kind).iterdir()) if (root / kind).is_dir() else []:
            if d.name.startswith("."):
                continue
            files = [f for f in d.rglob("*") if f.is_file()  # hidden names (temporaries) are no entries
                     and not any(part.startswith(".") for part in f.relative_to(d).parts)]
            if files:
                rows.append({"name": d.name, "kind": kind[:-1], "path": str(d), "bytes": sum(f.stat().st_size
                                                                                              for f in files)})
    return rows


def remove(name: str) -> list[str]:
    """Removes NAME's converted models and downloads from the cache (a zoo name, or an entry
    `entries()` lists; nothing else); returns what was removed. Waits for no fetch: one that is
    running is an error."""
    # filelock only where the cache changes; `gnhub list` reads it without
    from filelock import Timeout

    if not zoo.is_name(name) or (zoo.get(name) is None and name not in {r["name"] for r in entries()}):
        close = zoo.suggest(name) if isinstance(name, str) else []
        hint = f"; did you mean {', '.join(close)}?" if close else "; `gnhub cache` lists the entries"
        raise GnhubError(f"{name!r}: not a zoo model or an entry of gnhub's cache{hint}")
    root = cache_dir()
    lock = _lock(name)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise GnhubError(f"{name}: another process is downloading or converting it ({lock.lock_file}); remove it "
                         "when that is done") from None
    try:
        gone = []
        for kind in ("models", "downloads"):
            d = _inside(root, kind, name)
            if remove_inside(d, root):
                gone.append(str(d))
        return gone
    finally:
        lock.release()
